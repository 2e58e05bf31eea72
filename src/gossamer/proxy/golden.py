"""The golden metrics: one record per finished request (each direction) and TCP counts per listener.

Families and labels are a contract (docs/metrics.md): `gossamer_requests_total`,
`gossamer_request_duration_seconds`, `gossamer_request_bytes`, `gossamer_response_bytes` and the
`gossamer_tcp_*` counters. The downstream connection calls `Recorder.request(conn, status, flag)`
where it finishes a request (the same places as the access log) and counts its bytes on the
recorder's TCP children.

Cost: a request builds one small tuple of what it already holds (cluster name, route rule name,
the peer's verified SPIFFE ID, status, flag), looks it up in the recorder's dict and updates the
four children it finds there, inlined. Label values (service names, status text, status class)
are worked out once per distinct tuple, on a miss; the dict is emptied when what the names
depend on changes (a Snapshot, an SVID), so stale names never stick.

Cardinality is bounded by the mesh, never by traffic: services and identities come from the
Snapshot or from certificates the mesh CA issued, routes are RouteRule names, status codes are at
most 900 values and a response flag is one of `proxy/flags.py`'s (anything else: "").
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import TYPE_CHECKING

from gossamer.proxy import flags
from gossamer.proxy.accesslog import CLIENT_DISCONNECTED
from gossamer.proxy.exchange import Exchange
from gossamer.proxy.stats import LATENCY_BUCKETS
from gossamer.telemetry.metrics import CounterChild, HistogramChild, Registry

if TYPE_CHECKING:
    from gossamer.proxy.cluster import ClusterRuntime
    from gossamer.proxy.connection import DownstreamConnection
    from gossamer.snapshot import Snapshot

UNKNOWN = "unknown"
"""The service label of a peer the proxy cannot name (plaintext, or an identity it has no
service for)."""

# Body sizes: powers of 4 from 256 B to 64 MiB, and 0 for the many requests without a body.
BYTE_BUCKETS: tuple[float, ...] = (
    0.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
)

# The same bounds as ints: bisecting an int among ints is faster than among floats.
_BYTE_BOUNDS = tuple(int(b) for b in BYTE_BUCKETS)
DIRECTIONS = ("inbound", "outbound")
_FLAGS_FIELD = b"\r\nx-gossamer-flags:"
# Response flags a label may take: the mesh's own, a fallback's (its cause is dropped), and the
# access log's client-disconnected (the client left before its response was done).
_KNOWN_FLAGS: dict[str, str] = {f: f for f in (*flags.FLAGS, flags.FALLBACK, CLIENT_DISCONNECTED)}


class GoldenMetrics:
    """The golden metric families of one registry (the contract in docs/metrics.md)."""

    def __init__(self, registry: Registry) -> None:
        self.requests = registry.counter(
            "gossamer_requests_total",
            "Requests finished, by direction (inbound, outbound), source and destination "
            "service (<name>.<namespace>, 'unknown') and SPIFFE identity ('' unknown), route "
            "rule ('' inbound or none), status code and response flag (x-gossamer-flags, '').",
            (
                "direction",
                "source_service",
                "source_identity",
                "destination_service",
                "destination_identity",
                "route",
                "status_code",
                "response_flag",
            ),
        )
        self.duration = registry.histogram(
            "gossamer_request_duration_seconds",
            "Time from the request head to the end of its response, by direction, source and "
            "destination service, route rule and status class (2xx, 5xx, ...).",
            ("direction", "source_service", "destination_service", "route", "status_class"),
            LATENCY_BUCKETS,
        )
        edge = ("direction", "source_service", "destination_service")
        self.request_bytes = registry.histogram(
            "gossamer_request_bytes",
            "Request body sizes in bytes, by direction, source and destination service.",
            edge,
            BYTE_BUCKETS,
        )
        self.response_bytes = registry.histogram(
            "gossamer_response_bytes",
            "Response body sizes in bytes, by direction, source and destination service.",
            edge,
            BYTE_BUCKETS,
        )
        self.tcp_opened = registry.counter(
            "gossamer_tcp_connections_opened_total",
            "Client connections opened on a listener, by direction (inbound, outbound).",
            ("direction",),
        )
        self.tcp_closed = registry.counter(
            "gossamer_tcp_connections_closed_total",
            "Client connections closed on a listener, by direction (inbound, outbound).",
            ("direction",),
        )
        self.tcp_received = registry.counter(
            "gossamer_tcp_received_bytes_total",
            "Bytes received from clients on a listener (after TLS decryption), by direction.",
            ("direction",),
        )
        self.tcp_sent = registry.counter(
            "gossamer_tcp_sent_bytes_total",
            "Bytes sent to clients on a listener (before TLS encryption), by direction.",
            ("direction",),
        )


class MeshNames:
    """What the recorders name peers with: this proxy's service and identity, and the service
    of each SPIFFE ID the Snapshot's clusters accept (`tls.identities`)."""

    __slots__ = ("_own_identity", "own_service", "recorders", "services")

    def __init__(self, own_identity: Callable[[], str | None]) -> None:
        self._own_identity = own_identity
        self.own_service = UNKNOWN
        self.services: dict[str, str] = {}
        self.recorders: list[Recorder] = []

    def own_identity(self) -> str:
        return self._own_identity() or ""

    def service_of(self, spiffe_id: str | None) -> str:
        if not spiffe_id:
            return UNKNOWN
        return self.services.get(spiffe_id, UNKNOWN)

    def apply(self, snapshot: Snapshot) -> None:
        """Take the names of a Snapshot the data plane just swapped in."""
        own = f"{snapshot.proxy.service}.{snapshot.proxy.namespace}"
        services = identity_services(snapshot)
        if own != self.own_service or services != self.services:
            self.own_service = own
            self.services = services
            self.changed()

    def changed(self) -> None:
        """Forget every resolved name (a new Snapshot's names, or a new SVID)."""
        for recorder in self.recorders:
            recorder.cache.clear()


def identity_services(snapshot: Snapshot) -> dict[str, str]:
    """SPIFFE ID -> "<service>.<namespace>", from the clusters' accepted identities.

    Patterns (with `*`) name no one in particular and are skipped; an identity that several
    services accept (a shared service account) names none of them: it maps to "unknown".
    """
    found: dict[str, set[str]] = {}
    for cluster in snapshot.clusters:
        if cluster.tls is None:
            continue
        service = f"{cluster.service}.{cluster.namespace}"
        for identity in cluster.tls.identities:
            if "*" not in identity:
                found.setdefault(identity, set()).add(service)
    return {i: next(iter(s)) if len(s) == 1 else UNKNOWN for i, s in found.items()}


def response_flag(head_bytes: bytes) -> str | None:
    """The flag of a serialized response head's `x-gossamer-flags` field (a peer sidecar's, or
    one the exchange added), as a bounded label value; None when it has none."""
    start = head_bytes.lower().find(_FLAGS_FIELD)
    if start < 0:
        return None
    start += len(_FLAGS_FIELD)
    end = head_bytes.find(b"\r\n", start)
    value = head_bytes[start : end if end >= 0 else len(head_bytes)]
    first = value.split(b",", 1)[0].strip().decode("latin-1")
    return _KNOWN_FLAGS.get(first, "")


class _Series:
    """The children one distinct request tuple counts into."""

    __slots__ = ("duration", "request_bytes", "requests", "response_bytes")

    def __init__(
        self,
        requests: CounterChild,
        duration: HistogramChild,
        request_bytes: HistogramChild,
        response_bytes: HistogramChild,
    ) -> None:
        self.requests = requests
        self.duration = duration
        self.request_bytes = request_bytes
        self.response_bytes = response_bytes

    def record(self, seconds: float, received: int, sent: int) -> None:
        """Count one finished request (CounterChild.inc and HistogramChild.observe, inlined:
        this runs once per request)."""
        self.requests.value += 1.0
        h = self.duration
        h.counts[bisect_left(h.bounds, seconds)] += 1
        h.sum += seconds
        h.count += 1
        h = self.request_bytes
        h.counts[bisect_left(_BYTE_BOUNDS, received) if received else 0] += 1
        h.sum += received
        h.count += 1
        h = self.response_bytes
        h.counts[bisect_left(_BYTE_BOUNDS, sent) if sent else 0] += 1
        h.sum += sent
        h.count += 1


class Recorder:
    """One listener's golden metrics: `request()` per finished request, TCP children."""

    __slots__ = (
        "cache",
        "clock",
        "closed",
        "direction",
        "families",
        "names",
        "opened",
        "received",
        "sent",
    )

    def __init__(
        self,
        families: GoldenMetrics,
        direction: str,
        names: MeshNames,
        clock: Callable[[], float],
    ) -> None:
        self.families = families
        self.direction = direction
        self.names = names
        self.clock = clock
        self.cache: dict[tuple[object, ...], _Series] = {}
        self.opened = families.tcp_opened.labels(direction)
        self.closed = families.tcp_closed.labels(direction)
        self.received = families.tcp_received.labels(direction)
        self.sent = families.tcp_sent.labels(direction)
        names.recorders.append(self)

    def request(self, conn: DownstreamConnection, status: int, flag: str | None) -> None:
        raise NotImplementedError

    def _series(
        self,
        source: str,
        source_id: str,
        destination: str,
        destination_id: str,
        route: str,
        status: int,
        flag: str | None,
    ) -> _Series:
        f = self.families
        d = self.direction
        label = "" if flag is None else _KNOWN_FLAGS.get(flag.split(",", 1)[0], "")
        return _Series(
            f.requests.labels(
                d, source, source_id, destination, destination_id, route, str(status), label
            ),
            f.duration.labels(d, source, destination, route, f"{status // 100}xx"),
            f.request_bytes.labels(d, source, destination),
            f.response_bytes.labels(d, source, destination),
        )


class InboundRecorder(Recorder):
    """Inbound: the source is the verified peer (its service from the Snapshot), the destination
    this proxy."""

    __slots__ = ()

    def request(self, conn: DownstreamConnection, status: int, flag: str | None) -> None:
        """Record the request `conn` just finished (`flag`: a local answer's, or None)."""
        exchange = conn.exchange
        if isinstance(exchange, Exchange):
            seconds = self.clock() - exchange.started
            if flag is None:
                flag = exchange.flag
        else:
            seconds = 0.0
        if flag is None:
            flag = conn.resp_flag
        conn.resp_flag = None
        peer = conn.peer_spiffe_id
        key = (peer, status, flag)
        series = self.cache.get(key)
        if series is None:
            names = self.names
            series = self.cache[key] = self._series(
                names.service_of(peer),
                peer or "",
                names.own_service,
                names.own_identity(),
                "",
                status,
                flag,
            )
        series.record(seconds, conn.bytes_received, conn.bytes_sent)


class OutboundRecorder(Recorder):
    """Outbound: the source is this proxy, the destination the cluster's service and the
    identity its server verified as (mTLS)."""

    __slots__ = ()

    def request(self, conn: DownstreamConnection, status: int, flag: str | None) -> None:
        """Record the request `conn` just finished (`flag`: a local answer's, or None)."""
        exchange = conn.exchange
        if isinstance(exchange, Exchange):
            seconds = self.clock() - exchange.started
            cluster: ClusterRuntime | None = exchange.cluster
            route = exchange.route
            last = exchange.last_conn
            peer = last.peer_spiffe_id if last is not None and last.pool is exchange.pool else None
            if flag is None:
                flag = exchange.flag  # a fallback's, on a response that went out normally
                if flag is None:
                    flag = conn.resp_flag
            conn.resp_flag = None
            key: tuple[object, ...] = (
                exchange.cluster.name,
                route.rule.name if route is not None else "",
                peer,
                status,
                flag,
            )
        else:
            # A local answer before any exchange (no route, redirect, rate limited, ...).
            seconds = 0.0
            cluster = peer = None
            conn.resp_flag = None
            route = getattr(exchange, "route", None)
            if route is None:
                key = (None, None, "", status, flag)
            else:
                key = (None, route.virtual_host.name, route.rule.name, status, flag)
        series = self.cache.get(key)
        if series is None:
            names = self.names
            if cluster is not None:
                destination = f"{cluster.spec.service}.{cluster.spec.namespace}"
            elif route is not None:
                destination = route.virtual_host.name
            else:
                destination = UNKNOWN
            series = self.cache[key] = self._series(
                names.own_service,
                names.own_identity(),
                destination,
                peer or "",
                route.rule.name if route is not None else "",
                status,
                flag,
            )
        series.record(seconds, conn.bytes_received, conn.bytes_sent)


def recorders(
    families: GoldenMetrics, names: MeshNames, clock: Callable[[], float]
) -> tuple[InboundRecorder, OutboundRecorder]:
    """The two listeners' recorders, sharing `names`."""
    return (
        InboundRecorder(families, "inbound", names, clock),
        OutboundRecorder(families, "outbound", names, clock),
    )
