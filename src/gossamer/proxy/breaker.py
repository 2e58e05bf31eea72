"""Circuit breaking by limits: the metric families of the cluster's resilience mechanisms.

The limits themselves (Envoy's circuit breakers, `snapshot.ConnectionPool`) are counted inline by
`ClusterRuntime` (proxy/cluster.py), where the request path already is:

- `max_connections`: open or opening connections of the cluster; a request that finds no idle
  connection and no free slot waits (counted as a `connections` overflow);
- `max_pending_requests`: requests waiting for a connection; one more is refused (`pending`);
- `max_requests`: requests in flight between `start_request()` and `end_request()` (`requests`);
- `max_retries`: retries in flight between `start_retry()` and `end_retry()` (`retries`).

A refused request is answered 503 `overflow` at once; a refused retry leaves the failure as it
is. A limit lowered by a Snapshot update refuses new work until the count is under it again; it
never cuts what is in flight. The counters never go below zero or past a limit they were
checked against.

The families live here (one set per `DataPlaneMetrics`, like the fail-fast counter) and are
registered by the data plane with `registry.register(...)` for each of `families()`.
"""

from __future__ import annotations

import weakref

from gossamer.proxy.stats import DataPlaneMetrics
from gossamer.telemetry.metrics import Counter, CounterChild, Gauge, GaugeChild

LIMITS = ("connections", "pending", "requests", "retries")
HEALTH_RESULTS = ("success", "failure", "timeout")
EJECTION_REASONS = ("consecutive_5xx", "consecutive_gateway", "success_rate")


class ResilienceMetrics:
    """Overflows, outlier ejections and active health checks, by cluster."""

    def __init__(self) -> None:
        self.overflows = Counter(
            "gossamer_proxy_overflows_total",
            "Requests (or retries, or connections) refused or made to wait by a cluster's "
            "circuit-breaker limit, by cluster and limit (connections, pending, requests, "
            "retries).",
            ("cluster", "limit"),
        )
        self.outlier_ejections = Counter(
            "gossamer_proxy_outlier_ejections_total",
            "Endpoints ejected by outlier detection, by cluster and reason (consecutive_5xx, "
            "consecutive_gateway, success_rate).",
            ("cluster", "reason"),
        )
        self.endpoints_ejected = Gauge(
            "gossamer_proxy_endpoints_ejected",
            "Endpoints out of the balancer by outlier detection now, by cluster.",
            ("cluster",),
        )
        self.health_checks = Counter(
            "gossamer_proxy_health_checks_total",
            "Active health checks, by cluster and result (success, failure, timeout).",
            ("cluster", "result"),
        )

    def families(self) -> tuple[Counter | Gauge, ...]:
        return (self.overflows, self.outlier_ejections, self.endpoints_ejected, self.health_checks)

    def overflow_children(self, cluster: str) -> OverflowStats:
        return OverflowStats(*(self.overflows.labels(cluster, limit) for limit in LIMITS))

    def ejection_children(self, cluster: str) -> dict[str, CounterChild]:
        return {r: self.outlier_ejections.labels(cluster, r) for r in EJECTION_REASONS}

    def ejected_gauge(self, cluster: str) -> GaugeChild:
        return self.endpoints_ejected.labels(cluster)

    def health_children(self, cluster: str) -> dict[str, CounterChild]:
        return {r: self.health_checks.labels(cluster, r) for r in HEALTH_RESULTS}


class OverflowStats:
    """The overflow counter's children of one cluster, one per limit."""

    __slots__ = ("connections", "pending", "requests", "retries")

    def __init__(
        self,
        connections: CounterChild,
        pending: CounterChild,
        requests: CounterChild,
        retries: CounterChild,
    ) -> None:
        self.connections = connections
        self.pending = pending
        self.requests = requests
        self.retries = retries


_families: weakref.WeakKeyDictionary[DataPlaneMetrics, ResilienceMetrics] = (
    weakref.WeakKeyDictionary()
)


def resilience_metrics(metrics: DataPlaneMetrics) -> ResilienceMetrics:
    """The resilience families of a data plane's metrics (one set per `DataPlaneMetrics`)."""
    found = _families.get(metrics)
    if found is None:
        found = _families[metrics] = ResilienceMetrics()
    return found
