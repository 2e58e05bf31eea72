"""Locality-aware balancing: same zone first, spill in proportion as the local zone degrades."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from typing import cast

import pytest
from test_outlier import HEAD, FakeLoop

from gossamer import snapshot as snap
from gossamer.http.message import RequestHead
from gossamer.proxy.cluster import ClusterRuntime
from gossamer.proxy.dataplane import DataPlane, ProxySettings
from gossamer.proxy.loadbalance.base import EJECT_OUTLIER, EndpointState
from gossamer.proxy.loadbalance.locality import SHARE_TTL, LocalityBalancer, splits
from gossamer.proxy.stats import DataPlaneMetrics
from gossamer.telemetry.metrics import Registry

POLICIES = ["ROUND_ROBIN", "LEAST_REQUEST", "PEAK_EWMA", "RING_HASH"]


def spec(
    zones: Sequence[str | None], policy: str = "ROUND_ROBIN", locality: bool = True
) -> snap.Cluster:
    return snap.Cluster(
        name="inventory.default",
        service="inventory",
        load_balancer=snap.LoadBalancer(
            policy=policy,  # type: ignore[arg-type]
            locality=locality,
            ring_hash=snap.RingHash(header="x-user") if policy == "RING_HASH" else None,
        ),
        endpoints=[snap.Endpoint(address=f"10.0.{i}.1:80", zone=z) for i, z in enumerate(zones)],
    )


def runtime(cluster: snap.Cluster, zone: str | None, seed: int = 7) -> ClusterRuntime:
    loop = FakeLoop()
    return ClusterRuntime(
        loop.as_loop(),
        cluster,
        DataPlaneMetrics(Registry()),
        "outbound",
        rand=random.Random(seed),
        zone=zone,
    )


def settle(rt: ClusterRuntime) -> None:
    """Let the cached local share expire (the runtimes here run on a FakeLoop)."""
    cast(FakeLoop, rt.loop).advance(SHARE_TTL * 1.01)


def zone_counts(rt: ClusterRuntime, n: int) -> Counter[str | None]:
    out: Counter[str | None] = Counter()
    for i in range(n):
        head = HEAD
        if rt.hash_key is not None:
            head = RequestHead(b"GET", b"/", headers=[(b"x-user", b"u%d" % i)])
        pool = rt.pick(head, None)
        assert pool is not None
        out[pool.endpoint.zone] += 1
    return out


def test_splits_only_with_a_zone_and_endpoints_on_both_sides() -> None:
    clock = FakeLoop().time
    a = EndpointState("a:1", clock=clock, zone="a")
    b = EndpointState("b:1", clock=clock, zone="b")
    none = EndpointState("c:1", clock=clock)
    assert splits([a, b], "a")
    assert splits([a, none], "a")
    assert not splits([a, b], None)
    assert not splits([a], "a")
    assert not splits([b, none], "a")  # nothing local: no preference


@pytest.mark.parametrize("policy", POLICIES)
def test_all_traffic_stays_in_a_healthy_local_zone(policy: str) -> None:
    rt = runtime(spec(["a", "a", "a", "b", "b", "b"], policy), "a")
    assert isinstance(rt.balancer, LocalityBalancer)
    assert zone_counts(rt, 300) == Counter({"a": 300})


@pytest.mark.parametrize("policy", POLICIES)
def test_spill_grows_in_proportion_as_the_local_zone_loses_endpoints(policy: str) -> None:
    """1 of 3 local out: 1.4 x 2/3 = 93% stays; 2 of 3 out: 47%; all out: everything leaves."""
    rt = runtime(spec(["a", "a", "a", "b", "b", "b"], policy), "a")
    local = [e for e in rt.endpoints if e.zone == "a"]
    local[0].ejected |= EJECT_OUTLIER
    settle(rt)
    counts = zone_counts(rt, 2000)
    assert counts["a"] / 2000 == pytest.approx(1.4 * 2 / 3, abs=0.03)
    local[1].ejected |= EJECT_OUTLIER
    settle(rt)
    counts = zone_counts(rt, 2000)
    assert counts["a"] / 2000 == pytest.approx(1.4 / 3, abs=0.05)
    local[2].ejected |= EJECT_OUTLIER
    # Even before the share is counted again, nothing goes to an ejected endpoint: the local
    # balancer finds none available and the pick falls over to the other zone.
    assert zone_counts(rt, 200) == Counter({"b": 200})


def test_the_local_share_is_cached_for_a_short_while_and_recounted_after_an_update() -> None:
    """Counted at most once per SHARE_TTL of the loop clock: an ejection moves the spill from
    the next count on (where picks go is never stale: the ejected endpoint is skipped at once);
    a membership update counts again at once."""
    rt = runtime(spec(["a", "a", "b", "b"]), "a")
    lb = rt.balancer
    assert isinstance(lb, LocalityBalancer)
    local = [e for e in rt.endpoints if e.zone == "a"]
    assert zone_counts(rt, 50) == Counter({"a": 50})
    local[0].ejected |= EJECT_OUTLIER  # 1.4 x 1/2 = 70% should stay local
    assert lb.local_share() == pytest.approx(0.7)
    picks = [p.endpoint for p in (rt.pick(HEAD, None) for _ in range(50)) if p is not None]
    assert picks == [local[1]] * 50  # the cached share (1.0): all local, the ejected skipped
    cast(FakeLoop, rt.loop).advance(SHARE_TTL / 2)
    assert zone_counts(rt, 50) == Counter({"a": 50})
    settle(rt)
    counts = zone_counts(rt, 2000)
    assert counts["a"] / 2000 == pytest.approx(0.7, abs=0.04)
    # Back in: still 70% until the next count, or at once after an update.
    local[0].ejected = 0
    rt.update(spec(["a", "a", "b", "b"]))
    assert zone_counts(rt, 100) == Counter({"a": 100})


def test_local_share_formula() -> None:
    rt = runtime(spec(["a"] * 10 + ["b"] * 10), "a")
    lb = rt.balancer
    assert isinstance(lb, LocalityBalancer)
    local = [e for e in rt.endpoints if e.zone == "a"]
    assert lb.local_share() == 1.0
    for e in local[:3]:
        e.ejected |= EJECT_OUTLIER
    assert lb.local_share() == pytest.approx(0.98)  # 1.4 x 7/10
    for e in local[3:5]:
        e.ejected |= EJECT_OUTLIER
    assert lb.local_share() == pytest.approx(0.7)
    local[5].healthy = False
    assert lb.local_share() == pytest.approx(0.56)
    settle(rt)
    counts = zone_counts(rt, 4000)
    assert counts["a"] / 4000 == pytest.approx(0.56, abs=0.03)


@pytest.mark.parametrize(
    ("zones", "caller", "locality"),
    [
        (["a", "a", "b"], None, True),  # caller without a zone
        ([None, None, None], "a", True),  # endpoints without zones
        (["a", "a", "b"], "a", False),  # turned off
        (["b", "b", "c"], "a", True),  # nothing in the caller's zone
    ],
)
def test_no_preference_uses_the_plain_balancer(
    zones: list[str | None], caller: str | None, locality: bool
) -> None:
    rt = runtime(spec(zones, locality=locality), caller)
    assert not isinstance(rt.balancer, LocalityBalancer)
    assert len(zone_counts(rt, 60)) == len(set(zones))


def test_membership_change_switches_between_plain_and_locality() -> None:
    rt = runtime(spec(["a", "a"]), "a")
    assert not isinstance(rt.balancer, LocalityBalancer)
    rt.update(spec(["a", "a", "b"]))
    assert isinstance(rt.balancer, LocalityBalancer)
    assert zone_counts(rt, 50) == Counter({"a": 50})
    rt.update(spec(["b", "a", "b"]))  # same addresses, new zones
    assert zone_counts(rt, 50) == Counter({"a": 50})
    rt.update(spec(["b", "b", "b"]))
    assert not isinstance(rt.balancer, LocalityBalancer)
    assert zone_counts(rt, 30) == Counter({"b": 30})


def test_ring_hash_keeps_a_key_on_one_local_endpoint() -> None:
    rt = runtime(spec(["a", "a", "a", "b", "b"], "RING_HASH"), "a")
    head = RequestHead(b"GET", b"/", headers=[(b"x-user", b"alice")])
    first = rt.pick(head, None)
    assert first is not None
    assert first.endpoint.zone == "a"
    for _ in range(20):
        again = rt.pick(head, None)
        assert again is first


async def test_dataplane_passes_the_proxy_zone_to_its_clusters() -> None:
    dp = DataPlane(asyncio.get_running_loop(), ProxySettings(), Registry())
    cluster = spec(["a", "a", "b"])
    dp.apply(
        snap.Snapshot(
            proxy=snap.ProxyIdentity(proxy_id="web-0", service="web", zone="b"),
            clusters=[cluster],
        )
    )
    rt = dp.tables.clusters[cluster.name]
    assert rt.zone == "b"
    assert isinstance(rt.balancer, LocalityBalancer)
    assert zone_counts(rt, 20) == Counter({"b": 20})
    dp.apply(
        snap.Snapshot(
            proxy=snap.ProxyIdentity(proxy_id="web-0", service="web", zone="a"),
            clusters=[cluster],
        )
    )
    assert dp.tables.clusters[cluster.name] is rt
    assert zone_counts(rt, 20) == Counter({"a": 20})
