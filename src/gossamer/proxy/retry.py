"""Retry decisions: which outcomes to retry, how long to back off, and Linkerd's retry budget.

Pure and clock-injected. The data plane asks, after a failed try: `RetryOn.should_retry(outcome)`
(compiled once per rule from its `RetryPolicy`), then `budget.try_acquire_retry()`, then waits
`backoff(attempt, ...)` bounded by `try_deadline(...)`. Every first try calls
`budget.record_request()`.

Outcomes are a response status (int) or one of "connect-failure", "reset", "timeout" (the try
produced no response). The `retry_on` conditions (Envoy's and Istio's meanings):
- "5xx": any status 500-599, and connect-failure, reset, timeout (no response at all);
- "gateway-error": 502, 503, 504, and connect-failure, reset, timeout;
- "reset": the upstream reset the connection before a response;
- "connect-failure": the connection could not be made;
- "retriable-status-codes": the statuses in `retriable_status_codes`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from gossamer import snapshot as snap

CONNECT_FAILURE = "connect-failure"
RESET = "reset"
TIMEOUT = "timeout"
Outcome = int | str

Clock = Callable[[], float]

RETRY_ON_CONDITIONS = frozenset(
    {"5xx", "gateway-error", "reset", "connect-failure", "retriable-status-codes"}
)
_NO_RESPONSE = frozenset({CONNECT_FAILURE, RESET, TIMEOUT})


class RetryOn:
    """A RetryPolicy's `retry_on` compiled into sets, for a per-try check without loops."""

    __slots__ = ("events", "statuses")

    def __init__(self, policy: snap.RetryPolicy) -> None:
        """Raises ValueError for an unknown condition or a status outside 100-599."""
        statuses: set[int] = set()
        events: set[str] = set()
        for cond in policy.retry_on:
            if cond == "5xx":
                statuses.update(range(500, 600))
                events |= _NO_RESPONSE
            elif cond == "gateway-error":
                statuses.update((502, 503, 504))
                events |= _NO_RESPONSE
            elif cond == "reset":
                events.add(RESET)
            elif cond == "connect-failure":
                events.add(CONNECT_FAILURE)
            elif cond == "retriable-status-codes":
                for code in policy.retriable_status_codes:
                    if not 100 <= code <= 599:
                        raise ValueError(f"retriable status code {code} is not in 100-599")
                statuses.update(policy.retriable_status_codes)
            else:
                raise ValueError(
                    f"unknown retry condition {cond!r}; expected one of "
                    + ", ".join(sorted(RETRY_ON_CONDITIONS))
                )
        self.statuses = frozenset(statuses)
        self.events = frozenset(events)

    def should_retry(self, outcome: Outcome) -> bool:
        if isinstance(outcome, int):
            return outcome in self.statuses
        return outcome in self.events

    def __repr__(self) -> str:
        return f"RetryOn(statuses={sorted(self.statuses)}, events={sorted(self.events)})"


def should_retry(policy: snap.RetryPolicy, outcome: Outcome) -> bool:
    """Whether `outcome` of a try is one `policy` retries (attempts and budget not considered).

    Compiles the policy on every call; on the request path keep a `RetryOn(policy)` instead.
    """
    return RetryOn(policy).should_retry(outcome)


def backoff(attempt: int, base: float, max: float, rand: random.Random) -> float:
    """Seconds to wait before retry number `attempt` (1 for the first retry).

    Exponential with full jitter (AWS's "Exponential Backoff and Jitter"): uniform in
    [0, min(max, base * 2 ** (attempt - 1))].
    """
    exponent = min(attempt - 1, 62) if attempt > 1 else 0
    ceiling = min(max, base * (1 << exponent))
    return rand.random() * ceiling if ceiling > 0 else 0.0


def try_deadline(now: float, deadline: float | None, per_try_timeout: float | None) -> float | None:
    """When the try starting at `now` must end: the sooner of the request's deadline and
    `now + per_try_timeout`; None when neither is set."""
    if per_try_timeout is None:
        return deadline
    end = now + per_try_timeout
    return end if deadline is None or end < deadline else deadline


def request_deadline(now: float, timeout: float | None) -> float | None:
    """The whole request's deadline (all tries and backoffs) from its `Timeouts.request`."""
    return None if timeout is None else now + timeout


def per_try_timeout(policy: snap.RetryPolicy | None, timeouts: snap.Timeouts) -> float | None:
    """A try's own timeout: the retry policy's, else the rule's `backend_request` timeout."""
    if policy is not None and policy.per_try_timeout is not None:
        return policy.per_try_timeout
    return timeouts.backend_request


class RetryBudget:
    """Linkerd's retry budget: retries may add `ratio` of the requests seen in the last `ttl`
    seconds, plus `min_per_second` retries per second.

    Each request deposits `ratio` of a token into the current slot of a sliding window of `ttl`
    seconds (ten slots); each retry withdraws one. A retry is allowed while the window's balance
    plus the reserve (`min_per_second * ttl`) holds a whole token. So over any `ttl` window, the
    retries allowed are at most `ratio * requests + min_per_second * ttl` (plus one slot's worth
    of slack at the window edge). Integer arithmetic in thousandths keeps the balance exact.
    """

    SLOTS = 10
    _UNIT = 1000

    __slots__ = ("_clock", "_deposit", "_epoch", "_reserve", "_slot_width", "_slots", "_sum")

    def __init__(self, ratio: float, min_per_second: float, ttl: float, clock: Clock) -> None:
        """Raises ValueError when ratio or min_per_second is negative or ttl is not positive."""
        if not ratio >= 0 or not min_per_second >= 0:
            raise ValueError(
                f"retry budget: ratio {ratio} and minPerSecond {min_per_second} must be >= 0"
            )
        if not ttl > 0 or math.isinf(ttl):
            raise ValueError(f"retry budget: ttl {ttl} must be a positive number of seconds")
        self._clock = clock
        self._deposit = round(ratio * self._UNIT)
        self._reserve = round(min_per_second * ttl * self._UNIT)
        self._slot_width = ttl / self.SLOTS
        self._slots = [0] * self.SLOTS
        self._sum = 0
        self._epoch = math.floor(clock() / self._slot_width)

    @classmethod
    def from_config(cls, config: snap.RetryBudget, clock: Clock) -> RetryBudget:
        return cls(config.ratio, config.min_per_second, config.ttl, clock)

    def _advance(self) -> int:
        """Expire slots older than the window; return the current slot's index."""
        epoch = math.floor(self._clock() / self._slot_width)
        gap = epoch - self._epoch
        if gap > 0:
            slots = self._slots
            if gap >= self.SLOTS:
                for i in range(self.SLOTS):
                    slots[i] = 0
                self._sum = 0
            else:
                for e in range(self._epoch + 1, epoch + 1):
                    i = e % self.SLOTS
                    self._sum -= slots[i]
                    slots[i] = 0
            self._epoch = epoch
        return epoch % self.SLOTS

    def record_request(self) -> None:
        """Count one request (a first try, not a retry)."""
        if self._deposit:
            i = self._advance()
            self._slots[i] += self._deposit
            self._sum += self._deposit

    def try_acquire_retry(self) -> bool:
        """Take one retry from the budget; False when it is exhausted."""
        i = self._advance()
        if self._sum + self._reserve < self._UNIT:
            return False
        self._slots[i] -= self._UNIT
        self._sum -= self._UNIT
        return True

    @property
    def balance(self) -> float:
        """Retries available right now (for metrics and tests)."""
        self._advance()
        return (self._sum + self._reserve) / self._UNIT

    def __repr__(self) -> str:
        return f"RetryBudget(balance={self.balance:.3f})"
