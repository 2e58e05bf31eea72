"""The data plane's metrics, created once per registry; children are resolved off the hot path."""

from __future__ import annotations

from bisect import bisect_left

from gossamer.proxy import flags
from gossamer.telemetry.metrics import (
    Counter,
    CounterChild,
    Gauge,
    GaugeChild,
    Histogram,
    HistogramChild,
    Registry,
)

STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class DataPlaneMetrics:
    """The metric families; `ClusterStats` / `ListenerStats` hold the per-request children."""

    def __init__(self, registry: Registry) -> None:
        self.requests: Counter = registry.counter(
            "gossamer_proxy_requests_total",
            "Requests answered, by direction, cluster and status class.",
            ("direction", "cluster", "status_class"),
        )
        self.duration: Histogram = registry.histogram(
            "gossamer_proxy_request_duration_seconds",
            "Time from the request head to the end of the response, by direction and cluster.",
            ("direction", "cluster"),
            LATENCY_BUCKETS,
        )
        self.local_responses: Counter = registry.counter(
            "gossamer_proxy_local_responses_total",
            "Responses the mesh produced itself, by direction and response flag.",
            ("direction", "flag"),
        )
        self.retries: Counter = registry.counter(
            "gossamer_proxy_retries_total", "Retries sent, by cluster.", ("cluster",)
        )
        self.downstream_active: Gauge = registry.gauge(
            "gossamer_proxy_downstream_connections_active",
            "Open client connections, by listener.",
            ("direction",),
        )
        self.downstream_total: Counter = registry.counter(
            "gossamer_proxy_downstream_connections_total",
            "Client connections accepted, by listener.",
            ("direction",),
        )
        self.upstream_active: Gauge = registry.gauge(
            "gossamer_proxy_upstream_connections_active",
            "Open connections to endpoints, by cluster.",
            ("cluster",),
        )
        self.upstream_total: Counter = registry.counter(
            "gossamer_proxy_upstream_connections_total",
            "Connections opened to endpoints, by cluster.",
            ("cluster",),
        )
        self.authz_decisions: Counter = registry.counter(
            "gossamer_proxy_authz_decisions_total",
            "Inbound requests decided by AuthorizationPolicies, by policy and decision "
            "(allow, deny, audit; policy 'default' when no policy decided).",
            ("policy", "decision"),
        )
        self.tls_handshakes: Counter = registry.counter(
            "gossamer_proxy_tls_handshakes_total",
            "Sidecar mTLS handshakes, by direction (inbound, outbound) and result ('ok', "
            "'resumed', or why it failed: unknown-ca, expired, no-client-cert, bad-identity, "
            "peer-not-allowed, no-svid, protocol, timeout, closed, other).",
            ("direction", "result"),
        )
        self.inbound_connections_tls: Counter = registry.counter(
            "gossamer_proxy_inbound_connections_by_tls_total",
            "Inbound connections handed to HTTP, by transport (mtls, plaintext).",
            ("tls",),
        )
        self.inbound_requests_by_peer: Counter = registry.counter(
            "gossamer_proxy_inbound_requests_by_peer_total",
            "Inbound requests on mTLS-capable listeners, by the peer's verified SPIFFE ID "
            "('none' for plaintext).",
            ("peer",),
        )
        self.access_log_lines: Counter = registry.counter(
            "gossamer_proxy_access_log_lines_total",
            "Access log lines, by result: 'written', or 'dropped' (a failed write, such as a "
            "full disk, or more than 8 MiB waiting on a stuck writer).",
            ("result",),
        )


class ListenerStats:
    """Children for one listener (direction): connections and local responses by flag."""

    __slots__ = ("active", "direction", "local", "metrics", "total")

    def __init__(self, metrics: DataPlaneMetrics, direction: str) -> None:
        self.metrics = metrics
        self.direction = direction
        self.active: GaugeChild = metrics.downstream_active.labels(direction)
        self.total: CounterChild = metrics.downstream_total.labels(direction)
        self.local: dict[str, CounterChild] = {
            flag: metrics.local_responses.labels(direction, flag) for flag in flags.FLAGS
        }

    def local_child(self, flag: str) -> CounterChild:
        child = self.local.get(flag)
        if child is None:
            child = self.local[flag] = self.metrics.local_responses.labels(self.direction, flag)
        return child


class ClusterStats:
    """Children for one (direction, cluster): requests by status class, latency, retries."""

    __slots__ = ("by_class", "duration", "retries", "upstream_active", "upstream_total")

    def __init__(self, metrics: DataPlaneMetrics, direction: str, cluster: str) -> None:
        self.by_class: tuple[CounterChild, ...] = tuple(
            metrics.requests.labels(direction, cluster, c) for c in STATUS_CLASSES
        )
        self.duration: HistogramChild = metrics.duration.labels(direction, cluster)
        self.retries: CounterChild = metrics.retries.labels(cluster)
        self.upstream_active: GaugeChild = metrics.upstream_active.labels(cluster)
        self.upstream_total: CounterChild = metrics.upstream_total.labels(cluster)

    def count(self, status: int, seconds: float) -> None:
        # Runs once per request: the counter and histogram updates are inlined (the same
        # arithmetic as CounterChild.inc and HistogramChild.observe) to save two calls.
        index = status // 100 - 1
        self.by_class[index if 0 <= index < 5 else 4].value += 1.0
        duration = self.duration
        duration.counts[bisect_left(duration.bounds, seconds)] += 1
        duration.sum += seconds
        duration.count += 1
