"""Outlier detection (proxy/outlier.py), driven by a fake loop whose clock and timers we move.

Also the panic threshold over ejected endpoints, and outlier state across Snapshot updates, on a
real `ClusterRuntime` built on the same fake loop.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections.abc import Callable
from typing import Any, cast

import msgspec
import pytest

from gossamer import snapshot as snap
from gossamer.http.message import RequestHead
from gossamer.proxy.breaker import resilience_metrics
from gossamer.proxy.cluster import ClusterRuntime
from gossamer.proxy.loadbalance.base import (
    EJECT_OUTLIER,
    EJECT_UNREACHABLE,
    EndpointState,
)
from gossamer.proxy.outlier import OutlierDetector
from gossamer.proxy.stats import DataPlaneMetrics
from gossamer.telemetry.metrics import CounterChild, GaugeChild, Registry


class FakeHandle:
    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """The parts of the loop the cluster side uses: a clock we move and timers we fire."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.handles: list[FakeHandle] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> FakeHandle:
        handle = FakeHandle(self.now + delay, callback, args)
        self.handles.append(handle)
        return handle

    def advance(self, seconds: float) -> None:
        """Move the clock, firing due timers in order (a fired timer may arm new ones)."""
        end = self.now + seconds
        while True:
            due = [h for h in self.handles if not h.cancelled and h.when <= end]
            if not due:
                break
            handle = min(due, key=lambda h: h.when)
            self.handles.remove(handle)
            self.now = max(self.now, handle.when)
            handle.callback(*handle.args)
        self.now = end

    @property
    def armed(self) -> list[FakeHandle]:
        return [h for h in self.handles if not h.cancelled]

    def as_loop(self) -> asyncio.AbstractEventLoop:
        return cast(asyncio.AbstractEventLoop, self)


def states(n: int, loop: FakeLoop) -> list[EndpointState]:
    return [EndpointState(f"10.0.0.{i + 1}:80", clock=loop.time) for i in range(n)]


def detector(
    loop: FakeLoop, config: snap.OutlierDetection, eps: list[EndpointState]
) -> tuple[OutlierDetector, dict[str, CounterChild], GaugeChild]:
    counters = {
        r: CounterChild() for r in ("consecutive_5xx", "consecutive_gateway", "success_rate")
    }
    gauge = GaugeChild()
    od = OutlierDetector(loop, config, counters, gauge)
    od.set_endpoints(eps)
    return od, counters, gauge


def feed(od: OutlierDetector, e: EndpointState, status: int, times: int) -> None:
    for _ in range(times):
        od.on_result(e, status)


GATEWAY = snap.OutlierDetection(
    consecutive_gateway_errors=3,
    interval=10.0,
    base_ejection_time=30.0,
    max_ejection_time=300.0,
    max_ejection_percent=50.0,
)


def test_consecutive_gateway_errors_eject_and_a_success_resets_the_run() -> None:
    """Connect failures (503), resets (502) and timeouts (504) count as gateway errors in a
    row; any non-5xx in between starts the run over."""
    loop = FakeLoop()
    eps = states(4, loop)
    od, counters, gauge = detector(loop, GATEWAY, eps)
    a = eps[0]
    od.on_result(a, 503)
    od.on_result(a, 502)
    od.on_result(a, 200)
    od.on_result(a, 504)
    od.on_result(a, 503)
    assert not a.ejected
    od.on_result(a, 502)
    assert a.ejected == EJECT_OUTLIER
    assert counters["consecutive_gateway"].value == 1
    assert gauge.value == 1
    assert od.ejected == [a]


def test_a_plain_500_breaks_a_gateway_run_but_counts_for_5xx() -> None:
    loop = FakeLoop()
    eps = states(4, loop)
    config = snap.OutlierDetection(
        consecutive_gateway_errors=2, consecutive_5xx=3, max_ejection_percent=100
    )
    od, counters, _ = detector(loop, config, eps)
    a = eps[0]
    od.on_result(a, 503)
    od.on_result(a, 500)
    assert not a.ejected
    od.on_result(a, 503)  # gateway run: 1, 0, 1; 5xx run: 3
    assert counters["consecutive_gateway"].value == 0
    assert counters["consecutive_5xx"].value == 1  # three 5xx in a row
    assert a.ejected == EJECT_OUTLIER


def test_ejection_time_grows_with_each_ejection_capped_and_the_count_decays() -> None:
    """Ejected for base x times ejected (at most the max); a clean interval takes one off."""
    loop = FakeLoop()
    eps = states(2, loop)
    config = snap.OutlierDetection(
        consecutive_gateway_errors=1,
        interval=10.0,
        base_ejection_time=30.0,
        max_ejection_time=50.0,
        max_ejection_percent=50.0,
    )
    od, _, gauge = detector(loop, config, eps)
    a = eps[0]
    od.on_result(a, 503)
    assert a.ejected
    assert a.od_ejections == 1
    assert a.od_until == pytest.approx(1030.0)
    loop.advance(20.0)
    assert a.ejected
    loop.advance(10.0)  # the tick at +30 puts it back
    assert not a.ejected
    assert gauge.value == 0
    od.on_result(a, 503)  # second ejection: 60 s, capped at 50
    assert a.od_ejections == 2
    assert a.od_until == pytest.approx(loop.now + 50.0)
    loop.advance(50.0)
    assert not a.ejected
    assert a.od_ejections == 2
    loop.advance(10.0)
    assert a.od_ejections == 1
    loop.advance(10.0)
    assert a.od_ejections == 0
    loop.advance(100.0)
    assert loop.armed == []  # quiet: no timer left
    od.on_result(a, 503)
    assert a.od_until == pytest.approx(loop.now + 30.0)  # back to the base time


def test_max_ejection_percent_and_always_one() -> None:
    """With 10% of three endpoints, one may still be ejected; a second may not."""
    loop = FakeLoop()
    eps = states(3, loop)
    config = snap.OutlierDetection(consecutive_5xx=2, max_ejection_percent=10.0)
    od, counters, gauge = detector(loop, config, eps)
    feed(od, eps[0], 500, 2)
    feed(od, eps[1], 500, 2)
    assert eps[0].ejected
    assert not eps[1].ejected
    assert counters["consecutive_5xx"].value == 1
    assert gauge.value == 1
    config50 = snap.OutlierDetection(consecutive_5xx=2, max_ejection_percent=50.0)
    loop2 = FakeLoop()
    eps2 = states(4, loop2)
    od2, _, _ = detector(loop2, config50, eps2)
    for e in eps2:
        feed(od2, e, 500, 2)
    assert sum(1 for e in eps2 if e.ejected) == 2


def test_success_rate_ejects_the_outlier_only_with_enough_volume_and_hosts() -> None:
    loop = FakeLoop()
    eps = states(5, loop)
    config = snap.OutlierDetection(
        consecutive_gateway_errors=None,
        interval=10.0,
        max_ejection_percent=100.0,
        success_rate=snap.SuccessRateEjection(minimum_hosts=3, request_volume=20, stdev_factor=1.0),
    )
    od, counters, _ = detector(loop, config, eps)
    for e in eps[:4]:
        feed(od, e, 200, 20)
    bad = eps[4]
    for i in range(20):
        od.on_result(bad, 500 if i % 2 else 200)
    assert not bad.ejected  # only at the interval
    loop.advance(10.0)
    assert bad.ejected == EJECT_OUTLIER
    assert counters["success_rate"].value == 1
    assert all(not e.ejected for e in eps[:4])
    # Too few requests: nobody is judged.
    loop.advance(30.0)
    assert not bad.ejected
    for e in eps:
        feed(od, e, 200 if e is not bad else 500, 5)
    loop.advance(10.0)
    assert not bad.ejected


def test_success_rate_needs_minimum_hosts() -> None:
    loop = FakeLoop()
    eps = states(3, loop)
    config = snap.OutlierDetection(
        max_ejection_percent=100.0,
        success_rate=snap.SuccessRateEjection(minimum_hosts=3, request_volume=10),
    )
    od, counters, _ = detector(loop, config, eps)
    feed(od, eps[0], 200, 10)
    feed(od, eps[1], 503, 1)  # far below volume
    feed(od, eps[2], 500, 10)
    loop.advance(10.0)
    assert counters["success_rate"].value == 0


def test_one_timer_per_cluster_and_none_when_quiet() -> None:
    """Successes alone arm nothing (no success-rate detector: nothing to tally); an error does,
    and the timer stops after a quiet interval."""
    loop = FakeLoop()
    eps = states(3, loop)
    od, _, _ = detector(loop, GATEWAY, eps)
    assert loop.armed == []
    for e in eps:
        feed(od, e, 200, 50)
    assert loop.armed == []
    assert all(e.od_total == 0 and e.od_success == 0 for e in eps)
    for e in eps:
        feed(od, e, 503, 1)
        feed(od, e, 200, 5)
    assert len(loop.armed) == 1
    loop.advance(10.0)
    assert len(loop.armed) == 1  # errors in the last interval
    loop.advance(10.0)
    assert loop.armed == []
    od.close()
    assert loop.armed == []


def test_with_success_rate_every_result_is_tallied_and_keeps_the_timer() -> None:
    loop = FakeLoop()
    eps = states(3, loop)
    config = snap.OutlierDetection(success_rate=snap.SuccessRateEjection(minimum_hosts=3))
    od, _, _ = detector(loop, config, eps)
    feed(od, eps[0], 200, 4)
    feed(od, eps[0], 500, 1)
    assert (eps[0].od_total, eps[0].od_success) == (5, 4)
    assert len(loop.armed) == 1
    loop.advance(10.0)
    assert eps[0].od_total == 0
    assert len(loop.armed) == 1  # traffic in the last interval


def test_turning_success_rate_on_starts_the_tallies_over() -> None:
    """Before, only errors were tallied: kept, they would read as a 0% success rate."""
    loop = FakeLoop()
    eps = states(3, loop)
    od, counters, _ = detector(
        loop, snap.OutlierDetection(consecutive_gateway_errors=None, consecutive_5xx=1000), eps
    )
    for e in eps:
        feed(od, e, 200, 100)
    feed(od, eps[0], 500, 30)  # 30 of 130 failed: 77%, an outlier, but only the 30 were tallied
    assert eps[0].od_total == 30
    od.configure(
        snap.OutlierDetection(
            consecutive_gateway_errors=None,
            max_ejection_percent=100.0,
            success_rate=snap.SuccessRateEjection(
                minimum_hosts=3, request_volume=10, stdev_factor=1.0
            ),
        )
    )
    assert all(e.od_total == 0 for e in eps)
    for e in eps:
        feed(od, e, 200, 20)
    loop.advance(10.0)
    assert counters["success_rate"].value == 0
    assert not any(e.ejected for e in eps)


def test_max_ejection_percent_zero_never_ejects() -> None:
    """0% (Istio, Envoy): the detectors count, nobody is ejected, nothing is counted as one."""
    loop = FakeLoop()
    eps = states(3, loop)
    config = snap.OutlierDetection(
        consecutive_5xx=2,
        consecutive_gateway_errors=2,
        max_ejection_percent=0.0,
        success_rate=snap.SuccessRateEjection(minimum_hosts=3, request_volume=10),
    )
    od, counters, gauge = detector(loop, config, eps)
    assert not od.may_eject()
    feed(od, eps[0], 503, 10)
    feed(od, eps[1], 500, 10)
    feed(od, eps[2], 200, 10)
    loop.advance(10.0)
    assert not any(e.ejected for e in eps)
    assert all(c.value == 0 for c in counters.values())
    assert gauge.value == 0
    assert od.ejected == []
    # A small positive percentage still lets one out (Envoy's "at least one").
    od.configure(msgspec.structs.replace(config, max_ejection_percent=1.0))
    feed(od, eps[0], 503, 2)
    assert eps[0].ejected == EJECT_OUTLIER
    feed(od, eps[1], 503, 2)
    assert not eps[1].ejected


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"interval": 0.0}, "outlier_detection.interval"),
        ({"interval": math.inf}, "outlier_detection.interval"),
        ({"base_ejection_time": math.nan}, "outlier_detection.base_ejection_time"),
        ({"base_ejection_time": -1.0}, "outlier_detection.base_ejection_time"),
        ({"max_ejection_time": math.inf}, "outlier_detection.max_ejection_time"),
        ({"max_ejection_percent": 101.0}, "outlier_detection.max_ejection_percent"),
        ({"max_ejection_percent": math.nan}, "outlier_detection.max_ejection_percent"),
        ({"consecutive_5xx": -1}, "outlier_detection.consecutive_5xx"),
        ({"consecutive_gateway_errors": -3}, "outlier_detection.consecutive_gateway_errors"),
        (
            {"success_rate": snap.SuccessRateEjection(minimum_hosts=0)},
            "outlier_detection.success_rate.minimum_hosts",
        ),
        (
            {"success_rate": snap.SuccessRateEjection(request_volume=0)},
            "outlier_detection.success_rate.request_volume",
        ),
        (
            {"success_rate": snap.SuccessRateEjection(stdev_factor=math.nan)},
            "outlier_detection.success_rate.stdev_factor",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    """The data plane NACKs them (ClusterRuntime.check); the detector never runs with them."""
    loop = FakeLoop()
    config = msgspec.structs.replace(snap.OutlierDetection(), **change)
    spec = msgspec.structs.replace(cluster_spec(3), outlier_detection=config)
    with pytest.raises(ValueError, match=re.escape(field)):
        ClusterRuntime.check(spec, loop.as_loop())
    with pytest.raises(ValueError, match=re.escape(field)):
        detector(loop, config, states(3, loop))
    od, _, _ = detector(loop, GATEWAY, states(3, loop))
    with pytest.raises(ValueError, match=re.escape(field)):
        od.configure(config)
    assert od.interval == GATEWAY.interval  # unchanged


@pytest.mark.parametrize("panic", [math.nan, -1.0, 100.5, math.inf])
def test_bad_panic_threshold_is_refused(panic: float) -> None:
    spec = cluster_spec(3, panic=panic)
    with pytest.raises(ValueError, match=r"load_balancer\.panic_threshold"):
        ClusterRuntime.check(spec, FakeLoop().as_loop())


def test_a_ceiling_below_the_base_time_is_accepted_and_raised_to_it() -> None:
    """A folded config may have it (a Mesh ceiling, a policy's longer base)."""
    loop = FakeLoop()
    config = snap.OutlierDetection(base_ejection_time=60.0, max_ejection_time=30.0)
    ClusterRuntime.check(cluster_spec(3, outlier=config), loop.as_loop())
    od, _, _ = detector(loop, config, states(3, loop))
    assert od.max_time == 60.0


def test_close_puts_everyone_back() -> None:
    loop = FakeLoop()
    eps = states(2, loop)
    od, _, gauge = detector(loop, GATEWAY, eps)
    eps[0].ejected |= EJECT_UNREACHABLE
    feed(od, eps[0], 503, 3)
    assert eps[0].ejected == EJECT_OUTLIER | EJECT_UNREACHABLE
    od.close()
    assert eps[0].ejected == EJECT_UNREACHABLE  # fail-fast's bit is not ours
    assert gauge.value == 0
    assert loop.armed == []


# --- on a ClusterRuntime -------------------------------------------------------------------------


def cluster_spec(
    n: int,
    outlier: snap.OutlierDetection | None = GATEWAY,
    panic: float = 0.0,
    prefix: str = "10.0.0.",
) -> snap.Cluster:
    return snap.Cluster(
        name="pricing.default",
        service="pricing",
        endpoints=[snap.Endpoint(address=f"{prefix}{i + 1}:80") for i in range(n)],
        outlier_detection=outlier,
        load_balancer=snap.LoadBalancer(panic_threshold=panic),
    )


def make_runtime(
    loop: FakeLoop, spec: snap.Cluster, registry: Registry | None = None
) -> ClusterRuntime:
    metrics = DataPlaneMetrics(registry or Registry())
    return ClusterRuntime(loop.as_loop(), spec, metrics, "outbound", rand=random.Random(3))


HEAD = RequestHead(b"GET", b"/", host=b"pricing")


def picked(rt: ClusterRuntime, n: int = 200) -> set[str]:
    out = set()
    for _ in range(n):
        pool = rt.pick(HEAD, None)
        assert pool is not None
        out.add(pool.endpoint.address)
    return out


def test_runtime_feeds_outlier_detection_and_the_balancer_skips_the_ejected() -> None:
    loop = FakeLoop()
    registry = Registry()
    metrics = DataPlaneMetrics(registry)
    for family in resilience_metrics(metrics).families():
        registry.register(family)
    rt = ClusterRuntime(loop.as_loop(), cluster_spec(4), metrics, "outbound", rand=random.Random(1))
    bad = rt.endpoints[0]
    for _ in range(3):
        rt.on_try_result(bad, 503)
    assert bad.address not in picked(rt)
    text = registry.render().decode()
    assert (
        'gossamer_proxy_outlier_ejections_total{cluster="pricing.default",'
        'reason="consecutive_gateway"} 1' in text
    )
    assert 'gossamer_proxy_endpoints_ejected{cluster="pricing.default"} 1' in text
    loop.advance(30.0)
    assert bad.address in picked(rt)


def test_outlier_state_survives_a_snapshot_update_and_turning_it_off_clears_it() -> None:
    loop = FakeLoop()
    rt = make_runtime(loop, cluster_spec(4))
    bad = rt.endpoints[1]
    for _ in range(3):
        rt.on_try_result(bad, 504)
    assert bad.ejected
    # A new endpoint joins: the ejected one stays out, with its count.
    rt.update(cluster_spec(5))
    assert rt.endpoints[1] is bad
    assert bad.ejected
    assert bad.od_ejections == 1
    assert rt.outlier is not None
    assert rt.outlier.ejected == [bad]
    # The ejected endpoint leaves: forgotten.
    spec = snap.Cluster(
        name="pricing.default",
        service="pricing",
        endpoints=[e for i, e in enumerate(cluster_spec(5).endpoints) if i != 1],
        outlier_detection=GATEWAY,
    )
    rt.update(spec)
    assert rt.outlier.ejected == []
    assert not bad.ejected
    for _ in range(3):
        rt.on_try_result(rt.endpoints[0], 503)
    assert rt.endpoints[0].ejected
    rt.update(cluster_spec(4, outlier=None))
    assert rt.outlier is None
    assert not any(e.ejected for e in rt.endpoints)
    assert loop.armed == []


def test_runtime_success_path_ends_error_runs_and_tallies_nothing_else() -> None:
    """The runtime's early exit for successes still starts a run of errors over."""
    loop = FakeLoop()
    rt = make_runtime(loop, cluster_spec(4))  # 3 gateway errors in a row, no success rate
    a = rt.endpoints[0]
    for status in (503, 502, 200, 504, 503, 404, 502, 503):
        rt.on_try_result(a, status)
    assert not a.ejected
    assert (a.od_5xx, a.od_gateway) == (2, 2)
    rt.on_try_result(a, 301)
    assert (a.od_5xx, a.od_gateway, a.od_success) == (0, 0, 0)
    for _ in range(3):
        rt.on_try_result(a, 503)
    assert a.ejected == EJECT_OUTLIER


def test_no_outlier_detection_costs_one_attribute_test() -> None:
    loop = FakeLoop()
    rt = make_runtime(loop, cluster_spec(2, outlier=None))
    for _ in range(100):
        rt.on_try_result(rt.endpoints[0], 503)
    assert not rt.endpoints[0].ejected
    assert rt.endpoints[0].od_total == 0
    assert loop.armed == []


# --- panic threshold -----------------------------------------------------------------------------


def test_panic_threshold_balances_over_all_healthy_when_too_few_are_available() -> None:
    """Panic at 50%: with 1 of 4 available (25%), picks go to every healthy endpoint."""
    loop = FakeLoop()
    od = snap.OutlierDetection(consecutive_gateway_errors=1, max_ejection_percent=100.0)
    rt = make_runtime(loop, cluster_spec(4, outlier=od, panic=50.0))
    for e in rt.endpoints[1:]:
        rt.on_try_result(e, 503)
    assert rt.in_panic()
    assert picked(rt) == {e.address for e in rt.endpoints}
    # 2 of 4 available (50%): not below the threshold, the ejected stay out.
    rt.endpoints[1].ejected &= ~EJECT_OUTLIER
    assert not rt.in_panic()
    assert picked(rt) == {rt.endpoints[0].address, rt.endpoints[1].address}


def test_panic_threshold_ignores_control_plane_unhealthy_endpoints() -> None:
    """The share is of healthy endpoints; an unhealthy one is never picked, even in panic."""
    loop = FakeLoop()
    spec = cluster_spec(4, outlier=None, panic=60.0)
    spec = snap.Cluster(
        name=spec.name,
        service=spec.service,
        endpoints=[
            snap.Endpoint(address=e.address, healthy=i != 3) for i, e in enumerate(spec.endpoints)
        ],
        load_balancer=spec.load_balancer,
    )
    rt = make_runtime(loop, spec)
    rt.endpoints[0].ejected |= EJECT_UNREACHABLE
    rt.endpoints[0].unreachable_until = loop.now + 100
    rt.failfast.marked.append(rt.endpoints[0])
    # 2 of 3 healthy available = 66% >= 60%: no panic.
    assert picked(rt) == {rt.endpoints[1].address, rt.endpoints[2].address}
    # One more out: 1 of 3 healthy available (33%) is below 60%: panic over the healthy three.
    rt.endpoints[1].ejected |= EJECT_OUTLIER
    assert picked(rt) == {e.address for e in rt.endpoints[:3]}


def test_zero_panic_threshold_opens_the_circuit_when_all_are_ejected() -> None:
    loop = FakeLoop()
    rt = make_runtime(loop, cluster_spec(3, outlier=None))
    rt.endpoints[0].ejected |= EJECT_OUTLIER
    assert rt.endpoints[0].address not in picked(rt)
    for e in rt.endpoints:
        e.ejected |= EJECT_OUTLIER
    # No panic mode: ejected endpoints stay out and the request fails at once.
    assert rt.pick(HEAD, None) is None
    # An endpoint out only for fail-fast's backoff is still probed.
    rt.endpoints[1].ejected = EJECT_UNREACHABLE
    assert picked(rt) == {rt.endpoints[1].address}
