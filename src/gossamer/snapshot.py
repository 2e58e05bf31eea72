"""The resolved Snapshot: the only contract between the control plane and a proxy.

A proxy never sees raw resources. The control plane's translator builds one Snapshot per proxy
from the user's resources and the registry; the proxy compiles it into its routing tables.
Snapshots are plain, immutable data, JSON on the wire with camelCase keys so that
`gossamer proxy-config` reads like the user's YAML. Durations are float seconds; `None` means
"not set" (no limit, or the mesh default was already folded in by the translator).

This module must stay import-light (msgspec only): the proxy imports it on its hot start-up path.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Literal, TypeVar, cast

import msgspec

SCHEMA = "gossamer.dev/snapshot/v1"

PathMatchType = Literal["Exact", "PathPrefix", "RegularExpression"]
ValueMatchType = Literal["Exact", "RegularExpression"]
LoadBalancerPolicy = Literal["ROUND_ROBIN", "LEAST_REQUEST", "PEAK_EWMA", "RING_HASH"]
Protocol = Literal["http", "tcp"]
MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
_T = TypeVar("_T")


class _Base(msgspec.Struct, kw_only=True, frozen=True, rename="camel", omit_defaults=True):
    pass


# --- identity ------------------------------------------------------------------------------------


class ProxyIdentity(_Base, kw_only=True, frozen=True):
    """Which workload this proxy stands beside."""

    proxy_id: str  # unique per sidecar, e.g. "pricing-v2-0.default"
    service: str
    namespace: str = "default"
    subset: str | None = None
    labels: dict[str, str] = {}
    spiffe_id: str = ""
    # The replica's zone (locality): its balancers prefer endpoints in the same zone.
    zone: str | None = None


# --- listeners -----------------------------------------------------------------------------------


class InboundListener(_Base, kw_only=True, frozen=True):
    """Traffic arriving for this replica goes to its local app."""

    app_host: str = "127.0.0.1"
    app_port: int
    protocol: Protocol = "http"


class Listeners(_Base, kw_only=True, frozen=True):
    inbound: InboundListener | None = None


# --- routes --------------------------------------------------------------------------------------


class PathMatch(_Base, kw_only=True, frozen=True):
    type: PathMatchType = "PathPrefix"
    value: str = "/"


class HeaderMatch(_Base, kw_only=True, frozen=True):
    name: str  # lower-cased by the translator
    value: str
    type: ValueMatchType = "Exact"


class QueryParamMatch(_Base, kw_only=True, frozen=True):
    name: str
    value: str
    type: ValueMatchType = "Exact"


class RouteMatch(_Base, kw_only=True, frozen=True):
    """All present conditions must hold (AND); a rule's matches are OR-ed."""

    path: PathMatch | None = None
    headers: list[HeaderMatch] = []
    query_params: list[QueryParamMatch] = []
    method: str | None = None


class HeaderValue(_Base, kw_only=True, frozen=True):
    name: str
    value: str


class HeaderModifier(_Base, kw_only=True, frozen=True):
    set: list[HeaderValue] = []
    add: list[HeaderValue] = []
    remove: list[str] = []


class PathModifier(_Base, kw_only=True, frozen=True):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    value: str


class RequestHeaderModifierFilter(
    _Base, kw_only=True, frozen=True, tag="RequestHeaderModifier", tag_field="type"
):
    request_header_modifier: HeaderModifier


class ResponseHeaderModifierFilter(
    _Base, kw_only=True, frozen=True, tag="ResponseHeaderModifier", tag_field="type"
):
    response_header_modifier: HeaderModifier


class RequestRedirect(_Base, kw_only=True, frozen=True):
    scheme: str | None = None
    hostname: str | None = None
    path: PathModifier | None = None
    port: int | None = None
    status_code: int = 302


class RequestRedirectFilter(
    _Base, kw_only=True, frozen=True, tag="RequestRedirect", tag_field="type"
):
    request_redirect: RequestRedirect


class URLRewrite(_Base, kw_only=True, frozen=True):
    hostname: str | None = None
    path: PathModifier | None = None


class URLRewriteFilter(_Base, kw_only=True, frozen=True, tag="URLRewrite", tag_field="type"):
    url_rewrite: URLRewrite


class FaultDelay(_Base, kw_only=True, frozen=True):
    fixed_delay: float  # seconds
    percentage: float = 100.0  # of the requests the fault applies to, 0-100


class FaultAbort(_Base, kw_only=True, frozen=True):
    http_status: int  # 400-599
    percentage: float = 100.0


class Fault(_Base, kw_only=True, frozen=True):
    """Istio's fault injection, as a route filter: delay and/or abort a share of the requests.

    With `headers`, only requests carrying all of them are eligible (test in production for one
    user). Both may apply to one request: the delay first, then the abort.
    """

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    headers: list[HeaderMatch] = []


class FaultFilter(_Base, kw_only=True, frozen=True, tag="Fault", tag_field="type"):
    fault: Fault


class RequestMirror(_Base, kw_only=True, frozen=True):
    """Gateway API RequestMirror: a copy of `percentage` of the requests to another cluster,
    fire and forget (its response is discarded; it never slows or fails the original)."""

    cluster: str  # a Cluster.name in this Snapshot
    percentage: float = 100.0


class RequestMirrorFilter(_Base, kw_only=True, frozen=True, tag="RequestMirror", tag_field="type"):
    request_mirror: RequestMirror


RouteFilter = (
    RequestHeaderModifierFilter
    | ResponseHeaderModifierFilter
    | RequestRedirectFilter
    | URLRewriteFilter
    | FaultFilter
    | RequestMirrorFilter
)


class WeightedCluster(_Base, kw_only=True, frozen=True):
    cluster: str  # a Cluster.name in this Snapshot
    weight: int = 1
    filters: list[RouteFilter] = []


class Timeouts(_Base, kw_only=True, frozen=True):
    request: float | None = None  # whole request, all retries included
    backend_request: float | None = None  # one try


class Backoff(_Base, kw_only=True, frozen=True):
    base_interval: float = 0.025
    max_interval: float = 0.25


class RetryPolicy(_Base, kw_only=True, frozen=True):
    attempts: int = 1  # retries after the first try (Istio's meaning)
    per_try_timeout: float | None = None
    retry_on: list[str] = []  # 5xx, gateway-error, reset, connect-failure, retriable-status-codes
    retriable_status_codes: list[int] = []
    backoff: Backoff = Backoff()


class StaticResponse(_Base, kw_only=True, frozen=True):
    status: int = 200
    headers: list[HeaderValue] = []
    body: str = ""


class Fallback(_Base, kw_only=True, frozen=True):
    """What a rule serves when a request fails for good: retries exhausted (or none allowed) on
    a connect failure, reset, timeout or 5xx, or the circuit open (overflow, no healthy
    endpoint, retry budget exhausted). Tried in this order, the first that applies wins:

    1. `max_stale`: the last shareable 200/203/204 response to the same GET/HEAD request
       (method, authority, path, query, and the request headers its Vary names; never for
       requests with credentials; see proxy/response_cache.py), when at most `max_stale` old;
    2. `backend`: the request goes to this cluster instead (a degraded service), one try;
    3. `response`: a static response.

    A fallback response carries `x-gossamer-flags: fallback` (and the cause after a comma).
    """

    max_stale: float | None = None
    max_body_bytes: int = 65536  # larger responses are not kept for `max_stale`
    max_entries: int = 1024  # cached responses kept per rule (least recently used go first)
    backend: WeightedCluster | None = None
    response: StaticResponse | None = None


class RouteRule(_Base, kw_only=True, frozen=True):
    name: str  # "<namespace>/<route>#<rule index>", or "default" for the implicit route
    matches: list[RouteMatch] = []  # empty = match everything
    filters: list[RouteFilter] = []
    backends: list[WeightedCluster] = []
    timeouts: Timeouts = Timeouts()
    retry: RetryPolicy | None = None
    fallback: Fallback | None = None


class VirtualHost(_Base, kw_only=True, frozen=True):
    """The routes for one destination service, found by the request's host."""

    name: str  # "<service>.<namespace>"
    domains: list[str]  # "pricing", "pricing.default", "pricing.default.svc", hostnames from routes
    port: int | None = None  # the service port a client names (http://pricing:8080); None = any
    rules: list[RouteRule]  # in precedence order (Gateway API rules), the first match wins


# --- clusters ------------------------------------------------------------------------------------


class Endpoint(_Base, kw_only=True, frozen=True):
    address: str  # "host:port" of the replica's sidecar inbound listener
    healthy: bool = True
    weight: int = 1
    zone: str | None = None
    labels: dict[str, str] = {}
    proxy_id: str | None = None


class RingHash(_Base, kw_only=True, frozen=True):
    header: str | None = None
    cookie: str | None = None
    minimum_ring_size: int = 1024


class LoadBalancer(_Base, kw_only=True, frozen=True):
    policy: LoadBalancerPolicy = "ROUND_ROBIN"
    ring_hash: RingHash | None = None
    # Envoy's panic threshold (Istio's minHealthPercent): when fewer than this percentage of the
    # healthy endpoints are available (not ejected), balance over all healthy ones, ejected or
    # not. 0 (Istio's default) turns panic off: with nothing available, only an endpoint out for
    # fail-fast's backoff alone is probed; ejected ones stay out and the request fails at once.
    panic_threshold: float = 0.0
    # Prefer endpoints in the caller's zone (ProxyIdentity.zone) and spill to other zones as the
    # local one loses available endpoints (Envoy's priority levels, overprovisioning 1.4).
    locality: bool = True


class ConnectionPool(_Base, kw_only=True, frozen=True):
    """Envoy's circuit breakers: past a limit a request is answered 503 `overflow` at once."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests_per_connection: int = 0  # 0 = unlimited
    idle_timeout: float = 60.0
    connect_timeout: float = 2.0
    max_requests: int = 1024  # requests in flight to the cluster, all endpoints
    max_retries: int = 64  # retries in flight (a try after the first) to the cluster


class SuccessRateEjection(_Base, kw_only=True, frozen=True):
    """Envoy's success-rate outlier detection: every `interval`, endpoints with at least
    `request_volume` requests in the interval, when at least `minimum_hosts` of them have, are
    ejected if their success rate is below mean - stdev_factor * stdev."""

    minimum_hosts: int = 5
    request_volume: int = 100
    stdev_factor: float = 1.9


class OutlierDetection(_Base, kw_only=True, frozen=True):
    """Passive health: take misbehaving endpoints out of the balancer for a while.

    An endpoint is ejected after `consecutive_5xx` 5xx responses in a row, or after
    `consecutive_gateway_errors` gateway errors in a row (connect failure, reset, timeout, 502,
    503, 504), or by success rate; None turns that detector off. It comes back after
    `base_ejection_time` times the number of times it was ejected (at most `max_ejection_time`);
    a run without ejection brings that number down by one per `interval`. At most
    `max_ejection_percent` of the cluster's endpoints are out at once (with any percentage above
    0 at least one may be; 0 ejects none).
    """

    consecutive_5xx: int | None = msgspec.field(default=None, name="consecutive5xx")
    consecutive_gateway_errors: int | None = 5
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 10.0
    success_rate: SuccessRateEjection | None = None


class HealthCheck(_Base, kw_only=True, frozen=True):
    """Active health checking: GET `path` on every endpoint each `interval` (through the
    endpoint's sidecar, so over mTLS when the cluster has `tls`). A 2xx or 3xx within `timeout`
    passes. An endpoint is marked down after `unhealthy_threshold` failures in a row and up again
    after `healthy_threshold` passes in a row; endpoints start as up."""

    path: str = "/"
    interval: float = 5.0
    timeout: float = 1.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3


class RetryBudget(_Base, kw_only=True, frozen=True):
    """Linkerd's budget: retries may add at most `ratio` of the requests, plus `min_per_second`."""

    ratio: float = 0.2
    min_per_second: float = 10.0
    ttl: float = 10.0


class UpstreamTls(_Base, kw_only=True, frozen=True):
    """Originate mTLS to this cluster's endpoints and accept only these peer identities."""

    # SPIFFE IDs (or `*` patterns, see `gossamer.security.spiffe.matches`) the destination's
    # replicas may run as; a server presenting any other is refused after the handshake.
    identities: list[str]


class Cluster(_Base, kw_only=True, frozen=True):
    name: str  # "<service>.<namespace>" or "<service>.<namespace>.<subset>"
    service: str
    namespace: str = "default"
    subset: str | None = None
    load_balancer: LoadBalancer = LoadBalancer()
    connection_pool: ConnectionPool = ConnectionPool()
    retry_budget: RetryBudget = RetryBudget()
    endpoints: list[Endpoint] = []
    tls: UpstreamTls | None = None  # None: plaintext (the destination's mode is DISABLE)
    outlier_detection: OutlierDetection | None = None  # None: off
    health_check: HealthCheck | None = None  # None: no active health checks


# --- authorization -------------------------------------------------------------------------------

AuthzAction = Literal["ALLOW", "DENY", "AUDIT"]
AuthzPathType = Literal["Exact", "Prefix", "Suffix", "PathPrefix", "RegularExpression"]


class AuthzPath(_Base, kw_only=True, frozen=True):
    """Exact; Prefix/Suffix: Istio's `/api/*` and `*.png` (plain string, "" = any path);
    PathPrefix: HTTPRoute's segment-aware prefix; RegularExpression: the whole path."""

    type: AuthzPathType
    value: str


class AuthzSource(_Base, kw_only=True, frozen=True):
    """Principals are `spiffe://` patterns with `*` alone, first or last; namespaces likewise."""

    principals: list[str] = []
    not_principals: list[str] = []
    namespaces: list[str] = []
    not_namespaces: list[str] = []


class AuthzOperation(_Base, kw_only=True, frozen=True):
    paths: list[AuthzPath] = []
    not_paths: list[AuthzPath] = []
    methods: list[str] = []
    not_methods: list[str] = []
    ports: list[int] = []
    not_ports: list[int] = []


class AuthzRule(_Base, kw_only=True, frozen=True):
    """`from` AND `to`; entries of each OR-ed; empty = no condition."""

    from_: list[AuthzSource] = msgspec.field(default_factory=list, name="from")
    to: list[AuthzOperation] = []


class AuthzPolicy(_Base, kw_only=True, frozen=True):
    name: str  # "<namespace>/<name>"
    action: AuthzAction = "ALLOW"
    rules: list[
        AuthzRule
    ] = []  # none: an ALLOW policy allows nothing, DENY and AUDIT match nothing


class AuthzConfig(_Base, kw_only=True, frozen=True):
    """The AuthorizationPolicies that select this proxy's own service, by name."""

    policies: list[AuthzPolicy] = []
    # The service port this replica's inbound listener serves (the Service's first port): what
    # `ports` conditions are checked against, never a port the client wrote in its Host header.
    default_port: int | None = None


# --- mutual TLS ----------------------------------------------------------------------------------


class MeshTls(_Base, kw_only=True, frozen=True):
    """This proxy's side of mTLS: how its inbound listener treats peers, and whom to trust."""

    # STRICT: only mTLS on the inbound listener; PERMISSIVE: mTLS and plaintext on the same
    # port, told apart by the first byte; DISABLE: plaintext only.
    mode: MtlsMode
    # PEM of every root a peer's SVID may chain to (more than one during a root rotation).
    trust_bundle: str = ""
    # SHA-256 fingerprint (hex) of the CA now issuing SVIDs: a proxy whose SVID another CA
    # issued renews it at once (root rotation).
    signer: str = ""


# --- rate limits ---------------------------------------------------------------------------------

RateLimitKeyType = Literal["Route", "SourceIdentity", "Header", "ClientAddress"]
RateLimitScope = Literal["Local", "Global"]
FailureMode = Literal["FailOpen", "FailClosed"]


class RateLimitKey(_Base, kw_only=True, frozen=True):
    """What tells buckets apart: the route rule's name, the caller's SPIFFE ID, a header's
    value (`name`, lower-cased; requests without it share one bucket) or the client's address."""

    type: RateLimitKeyType
    name: str | None = None  # the header, for type Header


class RateLimitRule(_Base, kw_only=True, frozen=True):
    """`requests` per `period` seconds for each distinct key, as a token bucket holding at most
    `requests + burst` tokens (Local: in this proxy; Global: shared by every proxy enforcing the
    same rule, through Redis)."""

    name: str  # "<namespace>/<policy>#<limit index>"
    matches: list[RouteMatch] = []  # empty: every request
    route_rules: list[str] = []  # outbound only: RouteRule names it applies to; empty: any
    keys: list[RateLimitKey] = []  # empty: one bucket for all matching requests
    requests: int
    period: float
    burst: int = 0
    scope: RateLimitScope = "Local"
    failure_mode: FailureMode = "FailOpen"  # Global only: when Redis cannot answer


class RedisServer(_Base, kw_only=True, frozen=True):
    address: str  # "host:port"
    timeout: float = 0.25  # one call, connect included
    key_prefix: str = "gossamer"


class RateLimits(_Base, kw_only=True, frozen=True):
    """The rate limits this proxy enforces: on requests arriving for its app (inbound; from
    RateLimitPolicies targeting its Service) and on requests it sends (outbound; from
    RateLimitPolicies targeting an HTTPRoute it routes by). Over a limit: 429 `rate-limited`
    with `Retry-After` and the IETF `RateLimit` / `RateLimit-Policy` headers."""

    inbound: list[RateLimitRule] = []
    outbound: list[RateLimitRule] = []
    redis: RedisServer | None = None  # required when any rule is Global


# --- telemetry -----------------------------------------------------------------------------------

TracingProtocol = Literal["http/protobuf", "grpc"]


class TracingExporter(_Base, kw_only=True, frozen=True):
    """Where spans go, over OTLP (the OpenTelemetry SDK's exporters)."""

    protocol: TracingProtocol = "http/protobuf"
    # http/protobuf: the collector's URL ("http://127.0.0.1:4318", `/v1/traces` is added);
    # grpc: "host:port".
    endpoint: str
    timeout: float = 10.0  # one export


class Tracing(_Base, kw_only=True, frozen=True):
    """Distributed tracing: every proxy propagates W3C `traceparent`/`tracestate` and B3 (single
    and multi header) whatever this says; with an exporter, it also records a span per hop."""

    sampling: float = 1.0  # share of new traces sampled, 0-1 (an incoming decision is kept)
    keep_errors: bool = True  # record 5xx and mesh-produced failures even when not sampled
    exporter: TracingExporter | None = None  # None: propagate only, record nothing


class Telemetry(_Base, kw_only=True, frozen=True):
    tracing: Tracing | None = None  # None: propagation only


# --- the whole -----------------------------------------------------------------------------------


class Snapshot(_Base, kw_only=True, frozen=True):
    version: str = ""  # content hash, set by `seal`; opaque to the proxy
    schema: str = SCHEMA
    proxy: ProxyIdentity
    listeners: Listeners = Listeners()
    virtual_hosts: list[VirtualHost] = []
    clusters: list[Cluster] = []
    authz: AuthzConfig | None = None  # None: no policy selects this proxy's service
    tls: MeshTls | None = None  # None: no mTLS at all, inbound or outbound (static snapshots)
    rate_limits: RateLimits | None = None  # None: no RateLimitPolicy applies to this proxy
    telemetry: Telemetry | None = None  # None: no tracing export (headers still propagate)


_encoder = msgspec.json.Encoder(order="deterministic")
_decoder = msgspec.json.Decoder(Snapshot)


def seal(snapshot: Snapshot) -> Snapshot:
    """Return the snapshot, canonicalized, with `version` set to a hash of its content.

    Equal content gives the same version however it was built, also across control-plane restarts.
    """
    canonical = _canonical(msgspec.structs.replace(snapshot, version=""))
    body = _encoder.encode(canonical)
    return msgspec.structs.replace(canonical, version=hashlib.sha256(body).hexdigest()[:16])


def _canonical(value: _T) -> _T:
    """Swap every field value that equals its default for the default object itself.

    msgspec's `omit_defaults` compares by identity, so a "default" namespace parsed from YAML is
    encoded while the model's own "default" is not: two equal inputs would seal to two versions.
    Canonical values make the encoding, and so the version, depend on content only.
    """
    if isinstance(value, list):
        # Lists hold either structs or plain values (domains, header names) with no defaults.
        if value and isinstance(value[0], msgspec.Struct):
            return cast(_T, [_canonical(v) for v in value])
        return value
    if not isinstance(value, msgspec.Struct):
        return value
    changes: dict[str, object] = {}
    for name, default in _defaults(type(value)):
        current = getattr(value, name)
        new = _canonical(current) if isinstance(current, msgspec.Struct | list) else current
        if default is not msgspec.NODEFAULT and type(new) is type(default) and new == default:
            new = default
        if new is not current:
            changes[name] = new
    return msgspec.structs.replace(value, **changes) if changes else value


@functools.cache
def _defaults(cls: type[msgspec.Struct]) -> tuple[tuple[str, object], ...]:
    # msgspec.structs.fields() re-evaluates the annotations on every call: far too slow per value.
    return tuple((f.name, f.default) for f in msgspec.structs.fields(cls))


def encode(snapshot: Snapshot) -> bytes:
    return _encoder.encode(snapshot)


def decode(data: bytes | str) -> Snapshot:
    """Parse and validate a Snapshot; raises msgspec.ValidationError / DecodeError with a path."""
    return _decoder.decode(data)


def to_builtins(snapshot: Snapshot) -> dict[str, object]:
    out = msgspec.to_builtins(snapshot, order="deterministic")
    assert isinstance(out, dict)
    return out
