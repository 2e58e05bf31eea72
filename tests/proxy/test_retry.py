"""Retry decisions: retry_on conditions, backoff with full jitter, the retry budget, deadlines."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer import snapshot as snap
from gossamer.proxy.retry import (
    RetryBudget,
    RetryOn,
    backoff,
    per_try_timeout,
    request_deadline,
    should_retry,
    try_deadline,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def policy(*retry_on: str, codes: tuple[int, ...] = ()) -> snap.RetryPolicy:
    return snap.RetryPolicy(retry_on=list(retry_on), retriable_status_codes=list(codes))


@pytest.mark.parametrize(
    ("conditions", "retried", "not_retried"),
    [
        (("5xx",), [500, 502, 599, "connect-failure", "reset", "timeout"], [499, 404, 200]),
        (
            ("gateway-error",),
            [502, 503, 504, "connect-failure", "reset", "timeout"],
            [500, 501, 505, 429],
        ),
        (("reset",), ["reset"], ["connect-failure", "timeout", 503]),
        (("connect-failure",), ["connect-failure"], ["reset", "timeout", 503]),
        (("reset", "connect-failure"), ["reset", "connect-failure"], ["timeout", 502]),
        ((), [], [503, "reset", "connect-failure", "timeout"]),
    ],
)
def test_retry_on_conditions(
    conditions: tuple[str, ...], retried: list[int | str], not_retried: list[int | str]
) -> None:
    p = policy(*conditions)
    for outcome in retried:
        assert should_retry(p, outcome), outcome
    for outcome in not_retried:
        assert not should_retry(p, outcome), outcome


def test_retriable_status_codes() -> None:
    p = policy("retriable-status-codes", codes=(409, 429))
    on = RetryOn(p)
    assert on.should_retry(429)
    assert on.should_retry(409)
    assert not on.should_retry(503)
    assert not on.should_retry("reset")
    # the codes only count with the condition
    assert not should_retry(policy("reset", codes=(429,)), 429)


def test_unknown_condition_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown retry condition 'sometimes'"):
        RetryOn(policy("sometimes"))
    with pytest.raises(ValueError, match="retriable status code 42"):
        RetryOn(policy("retriable-status-codes", codes=(42,)))


# --- backoff --------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    attempt=st.integers(1, 200),
    base=st.floats(0.001, 1.0),
    cap=st.floats(0.001, 10.0),
    seed=st.integers(0, 2**16),
)
def test_backoff_bounds(attempt: int, base: float, cap: float, seed: int) -> None:
    """Full jitter: 0 <= wait <= min(cap, base * 2**(attempt-1))."""
    wait = backoff(attempt, base, cap, random.Random(seed))
    assert 0.0 <= wait <= min(cap, base * 2.0 ** min(attempt - 1, 62))


def test_backoff_grows_exponentially_until_the_cap() -> None:
    def mean(attempt: int) -> float:
        rng = random.Random(attempt)
        return sum(backoff(attempt, 0.025, 0.25, rng) for _ in range(4000)) / 4000

    means = [mean(a) for a in range(1, 7)]
    # expected means: 0.0125, 0.025, 0.05, 0.1, 0.125 (capped), 0.125
    for m, expected in zip(means, [0.0125, 0.025, 0.05, 0.1, 0.125, 0.125], strict=True):
        assert m == pytest.approx(expected, rel=0.06)
    assert backoff(1, 0.0, 1.0, random.Random(0)) == 0.0
    assert backoff(0, 0.1, 1.0, random.Random(0)) <= 0.1


# --- retry budget ---------------------------------------------------------------------------------


def test_budget_min_per_second_reserve() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=1.0, ttl=10.0, clock=clock)
    assert sum(budget.try_acquire_retry() for _ in range(20)) == 10  # 1/s over a 10 s window
    assert budget.balance == 0.0
    clock.now += 5.0
    assert not budget.try_acquire_retry()  # withdrawals still inside the window
    clock.now += 5.0 + 1.0  # the first retries' slot has expired
    assert sum(budget.try_acquire_retry() for _ in range(20)) == 10


def test_budget_ratio_of_requests() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, ttl=10.0, clock=clock)
    assert not budget.try_acquire_retry()
    for _ in range(100):
        budget.record_request()
    assert budget.balance == pytest.approx(20.0)
    assert sum(budget.try_acquire_retry() for _ in range(50)) == 20
    clock.now += 11.0  # deposits and withdrawals expire together
    assert budget.balance == 0.0
    for _ in range(4):
        budget.record_request()
    assert not budget.try_acquire_retry()  # 0.8 of a retry is not a retry
    budget.record_request()
    assert budget.try_acquire_retry()


def test_budget_sliding_window_expires_slot_by_slot() -> None:
    clock = FakeClock()
    clock.now = 0.0
    budget = RetryBudget(ratio=1.0, min_per_second=0.0, ttl=10.0, clock=clock)
    for t in range(10):  # one request per second
        clock.now = t + 0.5
        budget.record_request()
    assert budget.balance == pytest.approx(10.0)
    clock.now = 10.5  # the deposit made at 0.5 has left the window
    assert budget.balance == pytest.approx(9.0)
    clock.now = 15.5
    assert budget.balance == pytest.approx(4.0)
    clock.now = 1000.0
    assert budget.balance == 0.0


@settings(max_examples=40, deadline=None)
@given(
    ratio=st.floats(0.0, 1.0),
    min_per_second=st.floats(0.0, 5.0),
    events=st.lists(
        st.tuples(st.floats(0.0, 3.0), st.integers(0, 20), st.integers(0, 20)), max_size=30
    ),
)
def test_budget_never_exceeds_its_allowance(
    ratio: float, min_per_second: float, events: list[tuple[float, int, int]]
) -> None:
    """Whenever a retry is granted, the retries inside the sliding window (ten slots of ttl/10)
    are at most ratio * requests in that window + min_per_second * ttl."""
    clock = FakeClock()
    ttl = 10.0
    slot = ttl / RetryBudget.SLOTS
    budget = RetryBudget(ratio, min_per_second, ttl, clock)
    log: list[tuple[int, int, int]] = []  # (slot epoch, requests, retries granted)
    deposit = round(ratio * 1000) / 1000  # the budget counts in thousandths
    reserve = round(min_per_second * ttl * 1000) / 1000
    for dt, requests, retries in events:
        clock.now += dt
        for _ in range(requests):
            budget.record_request()
        granted = sum(budget.try_acquire_retry() for _ in range(retries))
        epoch = int(clock.now // slot)
        log.append((epoch, requests, granted))
        if granted:
            window = [(r, g) for e, r, g in log if e > epoch - RetryBudget.SLOTS]
            allowed = deposit * sum(r for r, _ in window) + reserve
            assert sum(g for _, g in window) <= allowed + 1e-9


def test_budget_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ratio -1"):
        RetryBudget(-1, 1, 10, FakeClock())
    with pytest.raises(ValueError, match="ttl 0"):
        RetryBudget(0.2, 1, 0, FakeClock())
    b = RetryBudget.from_config(snap.RetryBudget(), FakeClock())
    assert b.balance == pytest.approx(100.0)  # 10/s over 10 s


# --- deadlines ------------------------------------------------------------------------------------


def test_try_deadlines() -> None:
    assert try_deadline(100.0, None, None) is None
    assert try_deadline(100.0, 105.0, None) == 105.0
    assert try_deadline(100.0, None, 2.0) == 102.0
    assert try_deadline(100.0, 101.0, 2.0) == 101.0
    assert try_deadline(100.0, 110.0, 2.0) == 102.0
    assert request_deadline(100.0, None) is None
    assert request_deadline(100.0, 3.0) == 103.0
    timeouts = snap.Timeouts(request=5.0, backend_request=1.0)
    assert per_try_timeout(None, timeouts) == 1.0
    assert per_try_timeout(snap.RetryPolicy(per_try_timeout=0.5), timeouts) == 0.5
    assert per_try_timeout(snap.RetryPolicy(), snap.Timeouts()) is None
