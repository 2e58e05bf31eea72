"""Route fallbacks: what a rule serves when its backend fails for good (snapshot.Fallback).

The exchange (proxy/exchange.py) consults a rule's compiled `FallbackPlan` at two moments only:
when it is about to answer a failure locally with one of `CAUSES`, and when the final response
(no retry left) from upstream is a 5xx, at its head, before anything went downstream (cause
`upstream-5xx`). Then, in this order, the first that applies wins:

1. cached: the last shareable 200/203/204 response to the same GET/HEAD (proxy/response_cache.py
   says what is shared), when it is at most `max_stale` seconds old;
2. backend: one try on another cluster (a new exchange, no retries, no fallback of its own, its
   request timeout counted from when it starts; if that try cannot get a response the static
   response is served when there is one);
3. response: a static response (a 204 or 304 goes without a body or a Content-Length).

None applies: the failure goes out as it would have. Every fallback response carries
`x-gossamer-flags: fallback,<cause>`, is logged with that flag and counted in
`gossamer_proxy_fallbacks_total{route,kind,cause}`. A rule without a fallback costs nothing: the
exchange reads `route.fallback` once per request.

This module also holds the metric families of the route-level resilience features (fallbacks,
faults, mirrors), one set per data plane, registered by `DataPlane`.
"""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING

from gossamer import snapshot as snap
from gossamer.filters import headers as header_filter
from gossamer.proxy import flags
from gossamer.proxy.response_cache import ResponseCache
from gossamer.telemetry.metrics import Counter, CounterChild

if TYPE_CHECKING:
    from gossamer.proxy.cluster import ClusterRuntime
    from gossamer.proxy.exchange import RulePlan
    from gossamer.proxy.router import Backend
    from gossamer.proxy.stats import DataPlaneMetrics

UPSTREAM_5XX = "upstream-5xx"
CAUSES = frozenset(
    {
        flags.CONNECT_FAILURE,
        flags.UPSTREAM_RESET,
        flags.TIMEOUT,
        flags.NO_HEALTHY_ENDPOINT,
        flags.OVERFLOW,
        flags.RETRY_BUDGET_EXHAUSTED,
    }
)
"""The local failures a fallback may replace (plus `UPSTREAM_5XX`, decided at response head)."""

KINDS = ("cached", "backend", "response")


class ResilienceCounters:
    """The metric families of fallbacks, fault injection and mirroring."""

    __slots__ = ("fallbacks", "faults", "mirrors")

    def __init__(self) -> None:
        self.fallbacks = Counter(
            "gossamer_proxy_fallbacks_total",
            "Responses served by a route rule's fallback, by rule, kind (cached, backend, "
            "response) and cause (the failure's flag, or upstream-5xx).",
            ("route", "kind", "cause"),
        )
        self.faults = Counter(
            "gossamer_proxy_faults_injected_total",
            "Faults injected by a route rule's Fault filter, by rule and kind (delay, abort).",
            ("route", "kind"),
        )
        self.mirrors = Counter(
            "gossamer_proxy_mirrored_requests_total",
            "Mirrored copies of requests, by mirror cluster and result (sent: it answered; "
            "failed: no answer; skipped: not sent).",
            ("cluster", "result"),
        )

    def all(self) -> tuple[Counter, ...]:
        return (self.fallbacks, self.faults, self.mirrors)


_counters: weakref.WeakKeyDictionary[DataPlaneMetrics, ResilienceCounters] = (
    weakref.WeakKeyDictionary()
)


def resilience_counters(metrics: DataPlaneMetrics) -> ResilienceCounters:
    """The families of one data plane's metrics (created once; the data plane registers them)."""
    counters = _counters.get(metrics)
    if counters is None:
        counters = _counters[metrics] = ResilienceCounters()
    return counters


class StaticFallback:
    """A compiled StaticResponse: status, header fields and body, encoded once."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: tuple[tuple[bytes, bytes], ...], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class FallbackPlan:
    """One rule's compiled Fallback; see the module docstring.

    `backend_cluster` is bound by `RouteTable.bind` once the data plane has its cluster
    runtimes (None until then, or when no backend is configured: that step is skipped).
    """

    __slots__ = (
        "_children",
        "backend",
        "backend_cluster",
        "backend_plan",
        "cache",
        "counter",
        "max_stale",
        "route",
        "static",
    )

    def __init__(
        self,
        route: str,
        counter: Counter,
        max_stale: float | None,
        cache: ResponseCache | None,
        backend: Backend | None,
        backend_plan: RulePlan | None,
        static: StaticFallback | None,
    ) -> None:
        self.route = route
        self.counter = counter
        self.max_stale = max_stale if max_stale is not None else 0.0
        self.cache = cache
        self.backend = backend
        self.backend_plan = backend_plan
        self.backend_cluster: ClusterRuntime | None = None
        self.static = static
        self._children: dict[tuple[str, str], CounterChild] = {}

    def count(self, kind: str, cause: str) -> None:
        key = (kind, cause)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.counter.labels(self.route, kind, cause)
        child.value += 1.0

    def __repr__(self) -> str:
        steps = [
            name
            for name, present in (
                ("cached", self.cache is not None),
                ("backend", self.backend is not None),
                ("response", self.static is not None),
            )
            if present
        ]
        return f"FallbackPlan({self.route!r}, {'/'.join(steps) or 'nothing'})"


def compile_static(response: snap.StaticResponse, where: str) -> StaticFallback:
    """Raises ValueError for a status outside 200-599 or a bad header. The body of a 204 or 304
    (statuses that never have one) is dropped, not refused: the config layer accepts it, and a
    refused Snapshot would hold back the whole update for one cosmetic field."""
    if not 200 <= response.status <= 599:
        raise ValueError(f"{where}: status {response.status} is not in 200-599")
    headers = []
    for h in response.headers:
        name = header_filter.encode_name(h.name, f"{where}, headers")
        if name in (b"content-length", b"transfer-encoding", b"connection"):
            raise ValueError(f"{where}: header {h.name!r} is set by the proxy, not configurable")
        headers.append((name, header_filter.encode_value(h.value, f"{where}, header {h.name!r}")))
    body = b"" if response.status in (204, 304) else response.body.encode("utf-8")
    return StaticFallback(response.status, tuple(headers), body)


def check(spec: snap.Fallback, where: str) -> None:
    """Raises ValueError for a Fallback that cannot be applied."""
    if spec.max_stale is None and spec.backend is None and spec.response is None:
        raise ValueError(f"{where}: a fallback needs maxStale, a backend or a response")
    if spec.max_stale is not None and not (math.isfinite(spec.max_stale) and spec.max_stale > 0):
        raise ValueError(f"{where}: maxStale {spec.max_stale!r} is not a duration > 0")
    if spec.max_entries < 1:
        raise ValueError(f"{where}: maxEntries {spec.max_entries} must be at least 1")
    if spec.max_body_bytes < 0:
        raise ValueError(f"{where}: maxBodyBytes {spec.max_body_bytes} must not be negative")
