"""Fault injection (Istio's HTTPFaultInjection as a route filter): delay and/or abort requests.

`compile(fault, route, counter)` turns a `snapshot.Fault` into a `FaultInjector` once per
Snapshot. Per request the downstream connection asks `decide(head, rand)`: None (the usual
answer: leave the request alone), or `(delay, abort_status)`. With a delay the request waits
`delay` seconds on a loop timer before it starts (its body is buffered meanwhile, as while a
connection is opened); with an abort status it is answered locally with that status and the
`fault-abort` flag, after the delay if there is one. `headers`, when given, limit the fault to
requests carrying all of them (first value; exact or whole-value regex), as a route match's
header conditions (filters/match.py).
Each injection is counted in `gossamer_proxy_faults_injected_total{route,kind}`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from gossamer import snapshot as snap
from gossamer.filters import headers as header_filter
from gossamer.filters.match import ValueCond, compile_headers, headers_match
from gossamer.http.message import RequestHead
from gossamer.telemetry.metrics import Counter, CounterChild


class FaultInjector:
    """One rule's compiled Fault; see the module docstring."""

    __slots__ = (
        "abort_percent",
        "abort_status",
        "aborts",
        "delay",
        "delay_percent",
        "delays",
        "headers",
        "route",
    )

    def __init__(
        self,
        route: str,
        delay: float,
        delay_percent: float,
        abort_status: int,
        abort_percent: float,
        headers: tuple[ValueCond, ...],
        delays: CounterChild,
        aborts: CounterChild,
    ) -> None:
        self.route = route
        self.delay = delay  # seconds; 0: no delay
        self.delay_percent = delay_percent
        self.abort_status = abort_status  # 0: no abort
        self.abort_percent = abort_percent
        self.headers = headers
        self.delays = delays
        self.aborts = aborts

    def decide(self, head: RequestHead, rand: Callable[[], float]) -> tuple[float, int] | None:
        """What to do to this request: None, or (delay seconds, abort status or 0).

        `rand` is a uniform float in [0, 1) (the data plane's seeded PRNG), drawn once for the
        delay and once for the abort, each only when its percentage is below 100.
        """
        if self.headers and not headers_match(self.headers, head.headers):
            return None
        delay = 0.0
        if self.delay > 0.0 and _chosen(self.delay_percent, rand):
            delay = self.delay
            self.delays.value += 1.0
        status = 0
        if self.abort_status and _chosen(self.abort_percent, rand):
            status = self.abort_status
            self.aborts.value += 1.0
        if delay == 0.0 and not status:
            return None
        return delay, status

    def __repr__(self) -> str:
        return (
            f"FaultInjector({self.route!r}, delay={self.delay:g}s@{self.delay_percent:g}%, "
            f"abort={self.abort_status}@{self.abort_percent:g}%)"
        )


def _chosen(percent: float, rand: Callable[[], float]) -> bool:
    if percent >= 100.0:
        return True
    return percent > 0.0 and rand() * 100.0 < percent


def _percent(value: float, where: str) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 100.0):
        raise ValueError(f"{where}: percentage {value!r} is not between 0 and 100")
    return float(value)


def compile(fault: snap.Fault, route: str, counter: Counter, where: str = "Fault") -> FaultInjector:
    """Compile a rule's Fault.

    Args:
        fault: the Snapshot's Fault.
        route: the rule's name (the metric's `route` label).
        counter: the `gossamer_proxy_faults_injected_total` family (labels route, kind).
        where: names the filter in error messages.

    Raises:
        ValueError: neither delay nor abort, a negative or non-finite delay, a percentage
            outside 0-100, an abort status outside 400-599, or a bad header condition.
    """
    if fault.delay is None and fault.abort is None:
        raise ValueError(f"{where}: a Fault needs a delay, an abort or both")
    delay = delay_percent = 0.0
    if fault.delay is not None:
        delay = fault.delay.fixed_delay
        if not (math.isfinite(delay) and delay >= 0.0):
            raise ValueError(f"{where}: delay.fixedDelay {delay!r} is not a duration >= 0")
        delay_percent = _percent(fault.delay.percentage, f"{where}: delay")
    abort_status = 0
    abort_percent = 0.0
    if fault.abort is not None:
        abort_status = fault.abort.http_status
        if not 400 <= abort_status <= 599:
            # An abort is an error answer: a 2xx would also need the body rules of 204/304.
            raise ValueError(f"{where}: abort.httpStatus {abort_status} is not in 400-599")
        abort_percent = _percent(fault.abort.percentage, f"{where}: abort")
    # Exact values as the proxy writes header values (checked, latin-1), unlike route matches.
    conds = compile_headers(
        fault.headers, where, field="headers", encode_value=header_filter.encode_value
    )
    return FaultInjector(
        route,
        delay,
        delay_percent,
        abort_status,
        abort_percent,
        conds,
        counter.labels(route, "delay"),
        counter.labels(route, "abort"),
    )
