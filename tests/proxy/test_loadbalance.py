"""Load balancers: weights, health, P2C, peak EWMA decay, ring hash stability, hash keys."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer import snapshot as snap
from gossamer.http.message import RequestHead
from gossamer.proxy.loadbalance import EndpointState, HashKeyExtractor, make_balancer, reconcile
from gossamer.proxy.loadbalance.least_request import LeastRequest
from gossamer.proxy.loadbalance.peak_ewma import PeakEwma
from gossamer.proxy.loadbalance.ring_hash import RingHash, cookie_value
from gossamer.proxy.loadbalance.round_robin import RoundRobin, smooth_schedule


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def endpoints(
    weights: list[int], clock: FakeClock | None = None, healthy: list[bool] | None = None
) -> list[EndpointState]:
    c = clock or FakeClock()
    return [
        EndpointState(
            f"10.0.0.{i}:80",
            clock=c,
            weight=w,
            healthy=True if healthy is None else healthy[i],
        )
        for i, w in enumerate(weights)
    ]


# --- EndpointState --------------------------------------------------------------------------------


def test_endpoint_state_address_and_counters() -> None:
    e = EndpointState("[::1]:8080", clock=FakeClock())
    assert (e.host, e.port, e.active_requests) == ("::1", 8080, 0)
    e.on_start()
    e.on_start()
    e.on_complete(0.01, ok=True)
    assert e.active_requests == 1
    e.on_complete(0.01, ok=False)
    e.on_complete(0.01, ok=True)  # an extra completion never goes negative
    assert e.active_requests == 0


@pytest.mark.parametrize("address", ["nohost", "h:", ":80", "h:0", "h:99999", "h:x"])
def test_endpoint_state_bad_address(address: str) -> None:
    with pytest.raises(ValueError, match="is not host:port"):
        EndpointState(address, clock=FakeClock())


def test_peak_ewma_estimate_jumps_up_and_decays_down() -> None:
    clock = FakeClock()
    e = EndpointState("a:1", clock=clock, initial_latency=0.010)
    e.on_complete(0.500, ok=True)
    assert e.ewma_latency == 0.500  # a peak is taken at once
    clock.now += 10.0  # one decay period
    e.on_complete(0.100, ok=True)
    w = 0.36787944117144233  # e**-1
    assert e.ewma_latency == pytest.approx(0.500 * w + 0.100 * (1 - w))
    before = e.ewma_latency
    clock.now += 10.0
    assert e.decayed_latency(clock.now) == pytest.approx(before * w)
    assert e.decayed_latency(clock.now - 10.0) == before


def test_reconcile_keeps_state_by_address() -> None:
    clock = FakeClock()
    old = reconcile([], [snap.Endpoint(address="a:1"), snap.Endpoint(address="b:1")], clock)
    old[0].on_start()
    old[0].ejected = True
    new = reconcile(
        old,
        [
            snap.Endpoint(address="a:1", weight=5, healthy=False, zone="z"),
            snap.Endpoint(address="c:1"),
            snap.Endpoint(address="a:1"),  # duplicate: ignored
        ],
        clock,
    )
    assert [e.address for e in new] == ["a:1", "c:1"]
    assert new[0] is old[0]
    assert (new[0].weight, new[0].healthy, new[0].zone, new[0].active_requests) == (
        5,
        False,
        "z",
        1,
    )
    assert new[0].ejected  # ejection is the outlier detector's, not the snapshot's


# --- round robin ----------------------------------------------------------------------------------


def test_smooth_schedule_is_nginx_order() -> None:
    assert smooth_schedule([5, 1, 1]) == [0, 0, 1, 0, 2, 0, 0]


@settings(max_examples=40, deadline=None)
@given(
    weights=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    seed=st.integers(0, 1000),
    live=st.booleans(),
)
def test_round_robin_exact_over_a_full_cycle(weights: list[int], seed: int, live: bool) -> None:
    """Over sum(weights) picks (one cycle, gcd 1 or not) each endpoint gets exactly its weight."""
    eps = endpoints(weights)
    rr = RoundRobin(random.Random(seed), max_schedule=0 if live else 4096)
    rr.update(eps)
    g = math.gcd(*weights)
    cycle = sum(weights) // g
    counts = Counter(rr.pick() for _ in range(cycle * 2))
    for e, w in zip(eps, weights, strict=True):
        assert counts[e] == 2 * w // g


def test_round_robin_skips_unavailable_and_returns_none_when_all_are() -> None:
    eps = endpoints([1, 1, 1])
    rr = RoundRobin(random.Random(1))
    rr.update(eps)
    eps[1].healthy = False
    eps[2].ejected = True
    assert {rr.pick() for _ in range(10)} == {eps[0]}
    eps[0].healthy = False
    assert rr.pick() is None
    eps[2].ejected = False  # un-ejected without update(): picked again
    assert rr.pick() is eps[2]
    rr.update([])
    assert rr.pick() is None


def test_round_robin_ignores_zero_weight() -> None:
    eps = endpoints([0, 2])
    rr = RoundRobin(random.Random(1))
    rr.update(eps)
    assert {rr.pick() for _ in range(10)} == {eps[1]}


# --- P2C: least request and peak EWMA -------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    health=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=8),
    weights=st.data(),
    seed=st.integers(0, 1000),
    policy=st.sampled_from(["LEAST_REQUEST", "PEAK_EWMA"]),
)
def test_p2c_never_picks_unavailable(
    health: list[tuple[bool, bool]], weights: st.DataObject, seed: int, policy: str
) -> None:
    """Unhealthy or ejected endpoints are never returned; None exactly when all are out."""
    clock = FakeClock()
    ws = weights.draw(st.lists(st.integers(1, 5), min_size=len(health), max_size=len(health)))
    eps = endpoints(ws, clock)
    for e, (healthy, ejected) in zip(eps, health, strict=True):
        e.healthy, e.ejected = healthy, ejected
    rng = random.Random(seed)
    lb = LeastRequest(rng) if policy == "LEAST_REQUEST" else PeakEwma(rng, clock)
    lb.update(eps)
    available = {e for e in eps if e.healthy and not e.ejected}
    for _ in range(50):
        picked = lb.pick()
        if not available:
            assert picked is None
        else:
            assert picked in available
            picked.on_start()  # load shifts the choices around


def test_least_request_prefers_fewer_in_flight() -> None:
    eps = endpoints([1, 1])
    lb = LeastRequest(random.Random(3))
    lb.update(eps)
    eps[0].on_start()
    assert all(lb.pick() is eps[1] for _ in range(20))  # two endpoints: both are always drawn


@settings(max_examples=15, deadline=None)
@given(weights=st.lists(st.integers(1, 6), min_size=2, max_size=4), seed=st.integers(0, 1000))
def test_p2c_honours_weights_without_load(weights: list[int], seed: int) -> None:
    eps = endpoints(weights)
    lb = LeastRequest(random.Random(seed))
    lb.update(eps)
    n = 6000
    counts = Counter(lb.pick() for _ in range(n))
    for e, w in zip(eps, weights, strict=True):
        assert abs(counts[e] / n - w / sum(weights)) < 0.04


def test_peak_ewma_prefers_fast_and_retries_slow_after_decay() -> None:
    clock = FakeClock()
    eps = endpoints([1, 1], clock)
    fast, slow = eps
    lb = PeakEwma(random.Random(5), clock)
    lb.update(eps)
    fast.on_start()
    fast.on_complete(0.010, ok=True)
    slow.on_start()
    slow.on_complete(1.000, ok=True)
    assert all(lb.pick() is fast for _ in range(20))
    # fast gets busy: 0.01 * 200 > 1.0 * 1
    for _ in range(199):
        fast.on_start()
    assert lb.pick() is slow
    for _ in range(199):
        fast.on_complete(0.010, ok=True)
    # the slow endpoint's estimate decays with time, so it is tried again eventually
    clock.now += 100.0
    fast.on_start()
    fast.on_complete(0.010, ok=True)  # fast's estimate is fresh
    assert lb.pick() is slow


# --- ring hash ------------------------------------------------------------------------------------


def keys(n: int) -> list[bytes]:
    return [f"user-{i}".encode() for i in range(n)]


def ring(eps: list[EndpointState], size: int = 1024) -> RingHash:
    r = RingHash(random.Random(0), minimum_ring_size=size)
    r.update(eps)
    return r


def test_ring_hash_same_key_same_endpoint_across_instances() -> None:
    a, b = ring(endpoints([1, 1, 1])), ring(endpoints([1, 1, 1]))
    for k in keys(200):
        pa, pb = a.pick(k), b.pick(k)
        assert pa is not None
        assert pb is not None
        assert pa.address == pb.address
    assert a.ring_size >= 1024


@settings(max_examples=10, deadline=None)
@given(n=st.integers(2, 8))
def test_ring_hash_stable_under_membership_change(n: int) -> None:
    """Adding one endpoint to n moves about 1/(n+1) of the keys, all to the new one; removing it
    moves them all back and nothing else."""
    clock = FakeClock()
    eps = endpoints([1] * n, clock)
    added = EndpointState("10.9.9.9:80", clock=clock)
    r = ring(eps)
    ks = keys(3000)
    before = [r.pick(k) for k in ks]
    r.update([*eps, added])
    after = [r.pick(k) for k in ks]
    moved = [a for b, a in zip(before, after, strict=True) if a is not b]
    assert all(a is added for a in moved)
    assert abs(len(moved) / len(ks) - 1 / (n + 1)) < 0.06
    r.update(eps)
    assert [r.pick(k) for k in ks] == before


@settings(max_examples=10, deadline=None)
@given(weights=st.lists(st.integers(1, 5), min_size=2, max_size=4))
def test_ring_hash_weight_proportions(weights: list[int]) -> None:
    eps = endpoints(weights)
    r = ring(eps)
    ks = keys(6000)
    counts = Counter(r.pick(k) for k in ks)
    for e, w in zip(eps, weights, strict=True):
        assert abs(counts[e] / len(ks) - w / sum(weights)) < 0.06


def test_ring_hash_unavailable_owner_passes_keys_clockwise_only() -> None:
    eps = endpoints([1, 1, 1, 1])
    r = ring(eps)
    ks = keys(1000)
    owners = {k: r.pick(k) for k in ks}
    eps[2].ejected = True
    for k in ks:
        now = r.pick(k)
        assert now is not eps[2]
        if owners[k] is not eps[2]:
            assert now is owners[k]
    for e in eps:
        e.healthy = False
    assert r.pick(b"x") is None
    assert r.pick(None) is None


def test_ring_hash_without_key_is_random_available() -> None:
    eps = endpoints([1, 1, 1], healthy=[True, False, True])
    r = ring(eps)
    picks = {r.pick(None) for _ in range(100)}
    assert picks == {eps[0], eps[2]}


def test_ring_hash_bad_minimum_size() -> None:
    with pytest.raises(ValueError, match="minimum_ring_size 0"):
        RingHash(random.Random(0), minimum_ring_size=0)


# --- hash keys ------------------------------------------------------------------------------------


def test_hash_key_from_header() -> None:
    extract = HashKeyExtractor(snap.RingHash(header="X-User"))
    head = RequestHead(b"GET", b"/", headers=[(b"x-user", b"alice"), (b"x-user", b"bob")])
    assert extract(head) == b"alice"
    assert extract(RequestHead(b"GET", b"/")) is None


def test_hash_key_from_cookie() -> None:
    extract = HashKeyExtractor(snap.RingHash(cookie="session"))
    head = RequestHead(
        b"GET",
        b"/",
        headers=[(b"cookie", b"theme=dark; sessionx=no"), (b"cookie", b'a=1;  session="s-42" ')],
    )
    assert extract(head) == b"s-42"
    assert extract(RequestHead(b"GET", b"/", headers=[(b"cookie", b"other=1")])) is None
    assert HashKeyExtractor(None)(head) is None
    assert cookie_value(b"a=1;b=2", b"b") == b"2"
    assert cookie_value(b"flag; b=", b"b") == b""


# --- factory --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "kind"),
    [
        ("ROUND_ROBIN", RoundRobin),
        ("LEAST_REQUEST", LeastRequest),
        ("PEAK_EWMA", PeakEwma),
        ("RING_HASH", RingHash),
    ],
)
def test_make_balancer(policy: str, kind: type) -> None:
    cluster = snap.Cluster(
        name="c.default",
        service="c",
        load_balancer=snap.LoadBalancer(policy=policy),  # type: ignore[arg-type]
    )
    lb = make_balancer(cluster, random.Random(0), FakeClock())
    assert isinstance(lb, kind)
    assert lb.pick() is None  # empty until update()
    eps = endpoints([1, 2])
    lb.update(eps)
    assert lb.pick(b"k") in eps


def test_make_balancer_bad_ring_size_names_cluster() -> None:
    cluster = snap.Cluster(
        name="c.default",
        service="c",
        load_balancer=snap.LoadBalancer(
            policy="RING_HASH", ring_hash=snap.RingHash(header="x", minimum_ring_size=0)
        ),
    )
    with pytest.raises(ValueError, match=r"cluster 'c\.default'"):
        make_balancer(cluster, random.Random(0), FakeClock())
