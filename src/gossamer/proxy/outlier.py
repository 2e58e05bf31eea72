"""Passive outlier detection: endpoints that keep failing leave the balancer for a while.

Envoy's outlier detection, driven by `ClusterRuntime.on_try_result(endpoint, status)`: one call
per try, the response status or, for a try that got none, 503 (connect failure), 502 (reset) or
504 (timeout). Three detectors, each off when its setting is None or 0:

- consecutive 5xx: `consecutive_5xx` 5xx results in a row;
- consecutive gateway errors: `consecutive_gateway_errors` 502/503/504 in a row (so also the
  connect failures, resets and timeouts the exchange reports as those);
- success rate: every `interval`, among endpoints with at least `request_volume` tries in the
  interval (when at least `minimum_hosts` have), those whose success rate (non-5xx share) is below
  mean - stdev_factor * stdev.

An ejected endpoint gets the `EJECT_OUTLIER` bit (its own: fail-fast's `EJECT_UNREACHABLE` and
health checks' `EJECT_HEALTH_CHECK` come and go independently) for `base_ejection_time` times
the number of times it was ejected, at most `max_ejection_time`; that number goes down by one
for each interval the endpoint spends in the balancer without being ejected. At most
`max_ejection_percent` of the cluster's endpoints are out at once, but with any percentage above
0 one may always be (Envoy's rule, so a cluster of three with 10% still ejects its bad endpoint);
0 ejects nobody.

Time: one timer per cluster (`loop.call_later(interval)`), armed by the first result after a
quiet spell and kept while there is traffic, an ejection or an ejection count to decay; an
ejection ends at the first interval tick at or after its end (as in Envoy). The per-try work is a
few integer updates on the endpoint's own slots; a success without a success-rate detector (what
nearly every request is) only tests one slot. `configure` and `check_outlier_detection` refuse
settings that are not finite, positive durations and percentages (the data plane NACKs them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol

from gossamer import snapshot as snap
from gossamer.proxy.loadbalance.base import EJECT_OUTLIER, EndpointState
from gossamer.telemetry.metrics import CounterChild, GaugeChild

REASONS = ("consecutive_5xx", "consecutive_gateway", "success_rate")


class Handle(Protocol):
    def cancel(self) -> None: ...


class TimerLoop(Protocol):
    """The parts of the event loop outlier detection uses (tests pass a driven fake)."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], object], /) -> Handle: ...


class OutlierDetector:
    """Outlier detection for one cluster's endpoints."""

    __slots__ = (
        "_max_percent",
        "_min_hosts",
        "_stdev_factor",
        "_volume",
        "base_time",
        "consecutive_5xx",
        "consecutive_gateway",
        "ejected",
        "ejected_gauge",
        "ejections",
        "endpoints",
        "interval",
        "loop",
        "max_time",
        "success_rate",
        "timer",
    )

    def __init__(
        self,
        loop: TimerLoop,
        config: snap.OutlierDetection,
        ejections: dict[str, CounterChild],
        ejected_gauge: GaugeChild,
    ) -> None:
        """`ejections`: the ejection counter's child for each of REASONS; `ejected_gauge`: the
        number of endpoints out by outlier detection."""
        self.loop = loop
        self.ejections = ejections
        self.ejected_gauge = ejected_gauge
        self.endpoints: Sequence[EndpointState] = ()
        self.ejected: list[EndpointState] = []  # endpoints with the EJECT_OUTLIER bit set
        self.timer: Handle | None = None
        self.success_rate = False
        self.configure(config)

    def configure(self, config: snap.OutlierDetection) -> None:
        """Take (new) settings; counters and ejections carry over.

        Raises:
            ValueError: settings `check_outlier_detection` refuses (nothing is changed).
        """
        check_outlier_detection(config)
        self.consecutive_5xx = config.consecutive_5xx or 0
        self.consecutive_gateway = config.consecutive_gateway_errors or 0
        self.interval = config.interval
        self.base_time = config.base_ejection_time
        self.max_time = max(self.base_time, config.max_ejection_time)
        self._max_percent = config.max_ejection_percent
        sr = config.success_rate
        if sr is not None and not self.success_rate:
            # Successes are counted only while a success-rate detector is on (on_result): the
            # interval's tallies start over, or failures alone would read as a 0% success rate.
            for e in self.endpoints:
                e.od_total = 0
                e.od_success = 0
        self.success_rate = sr is not None
        self._min_hosts = sr.minimum_hosts if sr is not None else 0
        self._volume = sr.request_volume if sr is not None else 0
        self._stdev_factor = sr.stdev_factor if sr is not None else 0.0

    def set_endpoints(self, endpoints: Sequence[EndpointState]) -> None:
        """The cluster's membership changed; states of persisting endpoints are the same objects.

        A removed endpoint that was ejected is forgotten (and its bit cleared: should it come back
        it starts afresh); the gauge follows.
        """
        self.endpoints = endpoints
        members = {id(e) for e in endpoints}
        keep = []
        for e in self.ejected:
            if id(e) in members:
                keep.append(e)
            else:
                e.ejected &= ~EJECT_OUTLIER
        self.ejected = keep
        self.ejected_gauge.set(len(keep))

    def close(self) -> None:
        """Detection is turned off or the cluster is gone: stop the timer, put everyone back."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for e in self.ejected:
            e.ejected &= ~EJECT_OUTLIER
        self.ejected = []
        self.ejected_gauge.set(0)
        for e in self.endpoints:
            _reset_counters(e)
            e.od_ejections = 0

    # --- per try ---------------------------------------------------------------------------------

    def on_result(self, endpoint: EndpointState, status: int) -> None:
        """One try's result on `endpoint`: a response status, or 503/502/504 for a connect
        failure, reset or timeout."""
        if status < 500:
            # The common case, on every request of every cluster (the mesh default is on): with
            # no success-rate detector a success only ends a run of errors. The interval's
            # tallies and the timer serve success rate and ejections alone. `od_gateway` is
            # never above `od_5xx` (both count up together and `od_5xx` never resets alone),
            # so one test covers both.
            if self.success_rate:
                endpoint.od_total += 1
                endpoint.od_success += 1
                if self.timer is None:
                    self.timer = self.loop.call_later(self.interval, self._tick)
            if endpoint.od_5xx:
                endpoint.od_5xx = 0
                endpoint.od_gateway = 0
            return
        endpoint.od_total += 1
        endpoint.od_5xx += 1
        if status == 502 or status == 503 or status == 504:
            endpoint.od_gateway += 1
            limit = self.consecutive_gateway
            if limit and endpoint.od_gateway >= limit and not endpoint.ejected & EJECT_OUTLIER:
                self._eject(endpoint, "consecutive_gateway")
        else:
            endpoint.od_gateway = 0
        limit = self.consecutive_5xx
        if limit and endpoint.od_5xx >= limit and not endpoint.ejected & EJECT_OUTLIER:
            self._eject(endpoint, "consecutive_5xx")
        if self.timer is None:
            self.timer = self.loop.call_later(self.interval, self._tick)

    # --- ejection --------------------------------------------------------------------------------

    def may_eject(self) -> bool:
        """Whether one more endpoint may be ejected under `max_ejection_percent`: never at 0
        (as in Istio and Envoy: detection counts, nobody leaves), else at least one."""
        if not self._max_percent:
            return False
        out = len(self.ejected)
        if out == 0:
            return bool(self.endpoints)
        return out + 1 <= math.floor(len(self.endpoints) * self._max_percent / 100.0 + 1e-9)

    def _eject(self, endpoint: EndpointState, reason: str) -> None:
        # Whether or not it is ejected, the run that triggered this starts over.
        endpoint.od_5xx = 0
        endpoint.od_gateway = 0
        if not self.may_eject():
            return
        endpoint.od_ejections += 1
        duration = min(self.base_time * endpoint.od_ejections, self.max_time)
        endpoint.od_until = self.loop.time() + duration
        endpoint.ejected |= EJECT_OUTLIER
        self.ejected.append(endpoint)
        self.ejected_gauge.set(len(self.ejected))
        self.ejections[reason].inc()
        if self.timer is None:
            self.timer = self.loop.call_later(self.interval, self._tick)

    def _tick(self) -> None:
        """Once per interval: success-rate ejection, expired ejections back, decay counts."""
        self.timer = None
        now = self.loop.time()
        # The endpoints ejected during the interval keep their count; the others decay.
        ejected_now = {id(e) for e in self.ejected}
        if self.ejected:
            keep = []
            for e in self.ejected:
                if e.od_until <= now:
                    e.ejected &= ~EJECT_OUTLIER
                else:
                    keep.append(e)
            self.ejected = keep
            self.ejected_gauge.set(len(keep))
        traffic = False
        if self.success_rate:
            traffic = self._success_rate_ejections()
        pending = bool(self.ejected)
        for e in self.endpoints:
            if e.od_total:
                traffic = True
                e.od_total = 0
                e.od_success = 0
            if e.od_ejections and id(e) not in ejected_now and not e.ejected & EJECT_OUTLIER:
                e.od_ejections -= 1
            if e.od_ejections:
                pending = True
        if self.timer is None and (traffic or pending):
            self.timer = self.loop.call_later(self.interval, self._tick)

    def _success_rate_ejections(self) -> bool:
        """Eject the endpoints whose success rate in the interval is an outlier; whether there
        was any traffic."""
        volume = self._volume
        rates: list[tuple[EndpointState, float]] = []
        traffic = False
        for e in self.endpoints:
            if e.od_total:
                traffic = True
            if e.od_total >= volume and not e.ejected & EJECT_OUTLIER:
                rates.append((e, 100.0 * e.od_success / e.od_total))
        if len(rates) < self._min_hosts:
            return traffic
        mean = sum(r for _, r in rates) / len(rates)
        stdev = math.sqrt(sum((r - mean) ** 2 for _, r in rates) / len(rates))
        threshold = mean - self._stdev_factor * stdev
        for e, rate in sorted(rates, key=lambda item: item[1]):
            if rate < threshold:
                self._eject(e, "success_rate")
        return traffic


def check_percent(field: str, value: float) -> None:
    """Raise ValueError naming `field` unless `value` is a percentage (0-100)."""
    if not 0.0 <= value <= 100.0:  # NaN fails both comparisons
        raise ValueError(f"{field} must be a percentage from 0 to 100, not {value!r}")


def check_seconds(field: str, value: float) -> None:
    """Raise ValueError naming `field` unless `value` is a finite number of seconds above 0."""
    if not 0.0 < value < math.inf:
        raise ValueError(f"{field} must be a finite number of seconds above 0, not {value!r}")


def check_outlier_detection(config: snap.OutlierDetection) -> None:
    """Raise ValueError naming the field for settings the detector cannot run with."""
    for field, count in (
        ("consecutive_5xx", config.consecutive_5xx),
        ("consecutive_gateway_errors", config.consecutive_gateway_errors),
    ):
        if count is not None and count < 0:
            raise ValueError(f"outlier_detection.{field} must be 0 (off) or more, not {count}")
    check_seconds("outlier_detection.interval", config.interval)
    check_seconds("outlier_detection.base_ejection_time", config.base_ejection_time)
    # Below the base time it is raised to it (a folded config may have that), but it must be a
    # real duration.
    check_seconds("outlier_detection.max_ejection_time", config.max_ejection_time)
    check_percent("outlier_detection.max_ejection_percent", config.max_ejection_percent)
    sr = config.success_rate
    if sr is not None:
        if sr.minimum_hosts < 1:
            raise ValueError(
                f"outlier_detection.success_rate.minimum_hosts must be 1 or more, "
                f"not {sr.minimum_hosts}"
            )
        if sr.request_volume < 1:
            raise ValueError(
                f"outlier_detection.success_rate.request_volume must be 1 or more, "
                f"not {sr.request_volume}"
            )
        if not 0.0 < sr.stdev_factor < math.inf:
            raise ValueError(
                f"outlier_detection.success_rate.stdev_factor must be a finite number above 0, "
                f"not {sr.stdev_factor!r}"
            )


def _reset_counters(e: EndpointState) -> None:
    e.od_5xx = 0
    e.od_gateway = 0
    e.od_success = 0
    e.od_total = 0
