"""Resource models for gossamer.dev/v1alpha1: Mesh, Service, HTTPRoute, DestinationPolicy,
AuthorizationPolicy and RateLimitPolicy.

Field names are camelCase on the wire (as in Kubernetes and the Gateway API), snake_case in Python.
Unknown fields are errors. Durations are strings like "250ms", "5s", "1m" (Gateway API GEP-2257) and
are parsed into float seconds.
"""

from __future__ import annotations

import re
import shlex
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from gossamer.http import syntax
from gossamer.security.spiffe import SpiffeId, SpiffeIdError

API_VERSION = "gossamer.dev/v1alpha1"

_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)(h|m|s|ms))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ZONE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9._]{0,61}[A-Za-z0-9])?$")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")
_KEY_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def parse_duration(value: object) -> float:
    """Parse "1h", "10s", "250ms", "1m30s" into seconds; numbers are taken as seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as '250ms', '5s' or '1m'")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    if isinstance(value, str) and _DURATION.match(value.strip()):
        return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value.strip()))
    raise ValueError(f"{value!r} is not a duration; use a form such as '250ms', '5s' or '1m'")


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration: 0.25 -> "250ms", 5.0 -> "5s", 0.0005 -> "0.5ms"."""
    if seconds and seconds < 1:
        # Not rounded to whole milliseconds: 0.4ms must not come back as "0ms" (no timeout).
        # Fixed-point, never "6e-05ms", which parse_duration would refuse.
        millis = f"{seconds * 1000:.6f}".rstrip("0").rstrip(".")
        return f"{millis}ms"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds}s"


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be more than 0s: a zero duration is not allowed here")
    return value


# A duration for which zero would mean "never" or "at once", never what anyone wants (a connect
# timeout, a probe interval, a per-try timeout): zero is refused rather than read as "none".
PositiveDuration = Annotated[
    float,
    BeforeValidator(parse_duration),
    AfterValidator(_positive),
    PlainSerializer(format_duration, return_type=str),
]


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit (at most 63 characters)"
        )
    return value


Name = Annotated[str, BeforeValidator(lambda v: _dns_label(v) if isinstance(v, str) else v)]


def _zone(value: object) -> object:
    if isinstance(value, str) and not _ZONE.match(value):
        raise ValueError(
            f"{value!r} is not a valid zone: use letters, digits, '-', '.' and '_', starting and "
            "ending with a letter or digit (at most 63 characters)"
        )
    return value


# A locality, e.g. "zone-a" or "eu-west-1b": compared as written, never parsed.
Zone = Annotated[str, BeforeValidator(_zone)]


def _checked(check: Any) -> Any:
    """A BeforeValidator running one of the `gossamer.http.syntax` checks on strings."""

    def run(value: object) -> object:
        if isinstance(value, str):
            check(value)
        return value

    return BeforeValidator(run)


# The proxy's router refuses a Snapshot holding anything these refuse (and the whole mesh's config
# freezes on the NACK), so the models refuse it first, with the same rules from http.syntax.
HeaderName = Annotated[str, _checked(syntax.check_header_name)]
HeaderValue = Annotated[str, _checked(syntax.check_header_value)]
HostnameValue = Annotated[str, _checked(syntax.check_hostname)]
RouteHostname = Annotated[str, _checked(syntax.check_route_hostname)]
Path = Annotated[str, _checked(syntax.check_path)]
PrefixReplacement = Annotated[str, _checked(syntax.check_prefix_replacement)]


def _check_regex(value: str) -> str:
    """Compile `value` as the proxy does: Python's `re`, on the UTF-8 bytes."""
    syntax.compile_regex(value)
    return value


def _split_command(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:  # an unclosed quote
            raise ValueError(f"cannot split command {value!r}: {exc}") from None
    return value


# A command is a list of arguments, or one string split like a shell would (without running one).
Command = Annotated[list[str] | None, BeforeValidator(_split_command)]


class Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
    )


# --- common ---------------------------------------------------------------------------------------


class Metadata(Model):
    name: Name
    namespace: Name = "default"
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}


class Resource(Model):
    api_version: Literal["gossamer.dev/v1alpha1"]
    kind: str
    metadata: Metadata

    @property
    def key(self) -> str:
        """The resource's identity: "Kind/namespace/name"."""
        return f"{self.kind}/{self.metadata.namespace}/{self.metadata.name}"


# --- Mesh -----------------------------------------------------------------------------------------


class RetryBudgetSpec(Model):
    ratio: float = Field(0.2, ge=0, le=10)
    min_per_second: float = Field(10, ge=0)
    ttl: PositiveDuration = 10.0


class MeshTimeouts(Model):
    connect: PositiveDuration = 2.0
    request: Duration | None = 15.0  # 0s or null: no timeout
    idle: PositiveDuration = 60.0


class SuccessRateSpec(Model):
    """Envoy's success-rate ejection: endpoints far below the cluster's mean success rate."""

    minimum_hosts: int = Field(5, ge=1, le=10_000)
    request_volume: int = Field(100, ge=1)
    stdev_factor: float = Field(1.9, gt=0, le=100)


class OutlierDetectionSpec(Model):
    """Passive health checking (Istio's outlierDetection). A count of 0 turns that detector off.

    Only the fields written count when folding: the Mesh default first, then the service's
    DestinationPolicy, then the subset's, each overriding the fields it sets.
    """

    consecutive_5xx_errors: int = Field(0, ge=0, le=1_000_000, alias="consecutive5xxErrors")
    consecutive_gateway_errors: int = Field(5, ge=0, le=1_000_000)
    interval: PositiveDuration = 10.0
    base_ejection_time: PositiveDuration = 30.0
    max_ejection_time: PositiveDuration = 300.0
    max_ejection_percent: float = Field(10, ge=0, le=100)
    # Envoy's default panic threshold: a service whose only replica was ejected keeps getting
    # traffic; 0 lets the circuit open (nothing available: fail at once, or the fallback).
    min_health_percent: float = Field(50, ge=0, le=100)
    success_rate: SuccessRateSpec | None = None

    @model_validator(mode="after")
    def _ejection_times(self) -> OutlierDetectionSpec:
        written = self.model_fields_set
        if {
            "base_ejection_time",
            "max_ejection_time",
        } <= written and self.max_ejection_time < self.base_ejection_time:
            raise ValueError(
                f"maxEjectionTime ({format_duration(self.max_ejection_time)}) must not be shorter "
                f"than baseEjectionTime ({format_duration(self.base_ejection_time)})"
            )
        return self


class MeshDefaults(Model):
    timeouts: MeshTimeouts = MeshTimeouts()
    retry_budget: RetryBudgetSpec = RetryBudgetSpec()
    load_balancer: Literal["ROUND_ROBIN", "LEAST_REQUEST", "PEAK_EWMA", "RING_HASH"] = (
        "LEAST_REQUEST"
    )
    # On by default, like Linkerd's failure accrual: 5 gateway errors in a row eject an endpoint
    # for 30 s (at most 10% of a cluster). `consecutiveGatewayErrors: 0` here turns it off.
    outlier_detection: OutlierDetectionSpec = OutlierDetectionSpec()


def _host_port(value: object) -> object:
    if isinstance(value, str):
        match = _HOST_PORT.match(value)
        if match is None or not 1 <= int(match.group(2)) <= 65535:
            raise ValueError(f"{value!r} is not an address: write host:port, e.g. 127.0.0.1:6379")
    return value


class RedisSpec(Model):
    """The Redis server that global rate limits share."""

    address: Annotated[str, BeforeValidator(_host_port)]
    timeout: PositiveDuration = 0.25
    key_prefix: str = "gossamer"

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not _KEY_PREFIX.match(v):
            raise ValueError(
                f"{v!r}: use 1 to 64 letters, digits, '_', '.', ':' and '-' for a key prefix"
            )
        return v


class MeshRateLimit(Model):
    redis: RedisSpec | None = None  # None: no Global RateLimitPolicy limit may be used


MtlsMode = Literal["STRICT", "PERMISSIVE", "DISABLE"]


class MtlsSpec(Model):
    """How a service's sidecars accept traffic from other sidecars (Istio's PeerAuthentication).

    STRICT: mutual TLS only, plaintext refused; PERMISSIVE: mutual TLS and plaintext on the same
    port (for migrating clients that have no sidecar yet); DISABLE: plaintext only.
    """

    mode: MtlsMode = "STRICT"


TracingProtocol = Literal["http/protobuf", "grpc"]


def _number(value: object) -> object:
    if isinstance(value, bool):  # YAML's `true` is no percentage
        raise ValueError("must be a number from 0 to 100")
    return value


_OTLP_URL = re.compile(r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?(/[^?#\s]*)?$")


class OtlpSpec(Model):
    """Where the proxies send their spans, over OTLP (docs/tracing.md)."""

    protocol: TracingProtocol = "http/protobuf"
    # http/protobuf: the collector's URL ("/v1/traces" is added); grpc: host:port.
    endpoint: str
    timeout: PositiveDuration = 10.0

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str, info: ValidationInfo) -> str:
        if "protocol" not in info.data:
            return v  # the protocol is wrong (reported): which endpoint form is meant is unknown
        if info.data["protocol"] == "grpc":
            match = _HOST_PORT.match(v)
            if match is None or not 1 <= int(match.group(2)) <= 65535:
                raise ValueError(
                    f"{v!r} is not an address: with protocol grpc write host:port, "
                    "e.g. 127.0.0.1:4317"
                )
            return v
        url = _OTLP_URL.match(v)
        if url is None or (url.group(2) is not None and not 1 <= int(url.group(2)) <= 65535):
            raise ValueError(
                f"{v!r} is not a URL: with protocol http/protobuf write http://host:port, "
                "e.g. http://127.0.0.1:4318"
            )
        return v


class TracingSpec(Model):
    """Distributed tracing: how many traces the proxies record and where the spans go."""

    # Istio's default: 1% of new traces; an incoming decision is always kept.
    sampling_percentage: Annotated[float, BeforeValidator(_number), Field(ge=0.0, le=100.0)] = 1.0
    keep_errors: bool = True  # also record failed requests (5xx, flagged) of unsampled traces
    otlp: OtlpSpec | None = None  # None: propagate trace headers, record nothing


class MeshSpec(Model):
    trust_domain: str = "gossamer.local"
    defaults: MeshDefaults = MeshDefaults()
    mtls: MtlsSpec = MtlsSpec()
    rate_limit: MeshRateLimit = MeshRateLimit()
    tracing: TracingSpec | None = None  # None: trace headers propagate, nothing is recorded


class Mesh(Resource):
    kind: Literal["Mesh"] = "Mesh"
    spec: MeshSpec = MeshSpec()


# --- Service --------------------------------------------------------------------------------------


class ServicePort(Model):
    name: Name = "http"
    port: int = Field(8080, ge=1, le=65535)
    protocol: Literal["http", "tcp"] = "http"


class ReadinessProbe(Model):
    path: str = "/"
    interval: PositiveDuration = 1.0
    timeout: PositiveDuration = 1.0

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        syntax.check_path(v)
        return v


class Subset(Model):
    """One deployment of a service, e.g. pricing v2, told apart by its labels."""

    name: Name
    labels: dict[str, str] = {}
    replicas: int = Field(1, ge=0, le=64)
    command: Command = None
    env: dict[str, str] = {}
    zones: list[Zone] = []  # empty: the service's zones


class ServiceSpec(Model):
    ports: list[ServicePort] = Field(default_factory=lambda: [ServicePort()], min_length=1)
    service_account: Name | None = None
    mtls: MtlsSpec | None = None  # None: the Mesh's mode
    # The local runtime: how to run the replicas.
    command: Command = None
    env: dict[str, str] = {}
    replicas: int = Field(1, ge=0, le=64)
    working_dir: str | None = None
    subsets: list[Subset] = []
    readiness_probe: ReadinessProbe | None = None
    publish: int | None = Field(None, ge=0, le=65535)
    # Replica i runs in zones[i % len(zones)] (empty: no zone).
    zones: list[Zone] = []

    @model_validator(mode="after")
    def _unique_names(self) -> ServiceSpec:
        for what, names in (
            ("ports", [p.name for p in self.ports]),
            ("subsets", [s.name for s in self.subsets]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{what}: duplicate name {dupes[0]!r}")
        numbers = [p.port for p in self.ports]
        dupe_ports = sorted({n for n in numbers if numbers.count(n) > 1})
        if dupe_ports:
            raise ValueError(f"ports: duplicate port {dupe_ports[0]}")
        return self


class Service(Resource):
    kind: Literal["Service"] = "Service"
    spec: ServiceSpec = ServiceSpec()


# --- HTTPRoute (Gateway API shape) ----------------------------------------------------------------


class ParentRef(Model):
    kind: Literal["Service"] = "Service"
    group: str = ""
    name: Name
    namespace: Name | None = None
    port: int | None = Field(None, ge=1, le=65535)


class HTTPPathMatch(Model):
    type: Literal["Exact", "PathPrefix", "RegularExpression"] = "PathPrefix"
    value: str = "/"

    @field_validator("value")
    @classmethod
    def _valid_value(cls, v: str, info: ValidationInfo) -> str:
        # `type` is declared first, so it is in info.data unless it failed validation itself.
        kind = info.data.get("type")
        if kind == "RegularExpression":
            return _check_regex(v)
        if kind is not None and not v.startswith("/"):
            raise ValueError(f"a {kind} path must start with '/'")
        if kind is not None:
            syntax.check_path(v)
        return v


class HTTPHeaderMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: HeaderName = Field(min_length=1)
    value: str

    @field_validator("value")
    @classmethod
    def _valid_regex(cls, v: str, info: ValidationInfo) -> str:
        return _check_regex(v) if info.data.get("type") == "RegularExpression" else v


class HTTPQueryParamMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: str = Field(min_length=1)
    value: str

    @field_validator("value")
    @classmethod
    def _valid_regex(cls, v: str, info: ValidationInfo) -> str:
        return _check_regex(v) if info.data.get("type") == "RegularExpression" else v


class HTTPRouteMatch(Model):
    path: HTTPPathMatch | None = None
    headers: list[HTTPHeaderMatch] = []
    query_params: list[HTTPQueryParamMatch] = []
    method: (
        Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]
        | None
    ) = None


class HTTPHeader(Model):
    name: HeaderName = Field(min_length=1)
    value: HeaderValue


class HTTPHeaderFilter(Model):
    set: list[HTTPHeader] = []
    add: list[HTTPHeader] = []
    remove: list[HeaderName] = []

    @field_validator("set")
    @classmethod
    def _set_once(cls, v: list[HTTPHeader]) -> list[HTTPHeader]:
        seen: set[str] = set()
        for h in v:
            if h.name.lower() in seen:
                raise ValueError(f"header {h.name!r} is set twice (names are case-insensitive)")
            seen.add(h.name.lower())
        return v


class HTTPPathModifier(Model):
    type: Literal["ReplaceFullPath", "ReplacePrefixMatch"]
    replace_full_path: Path | None = None
    replace_prefix_match: PrefixReplacement | None = None

    @model_validator(mode="after")
    def _value_for_type(self) -> HTTPPathModifier:
        want = "replace_full_path" if self.type == "ReplaceFullPath" else "replace_prefix_match"
        if getattr(self, want) is None:
            raise ValueError(f"type {self.type} needs {to_camel(want)}")
        return self


class HTTPRequestRedirectFilter(Model):
    scheme: Literal["http", "https"] | None = None
    hostname: HostnameValue | None = None
    path: HTTPPathModifier | None = None
    port: int | None = Field(None, ge=1, le=65535)
    status_code: Literal[301, 302, 303, 307, 308] = 302


class HTTPURLRewriteFilter(Model):
    hostname: HostnameValue | None = None
    path: HTTPPathModifier | None = None


class HTTPFaultDelay(Model):
    fixed_delay: PositiveDuration
    percentage: float = Field(100, ge=0, le=100)


class HTTPFaultAbort(Model):
    http_status: int = Field(ge=400, le=599)
    percentage: float = Field(100, ge=0, le=100)


class HTTPFaultFilter(Model):
    """Istio's fault injection: delay and/or abort a share of the requests (with `headers`, only
    of the requests carrying all of them)."""

    delay: HTTPFaultDelay | None = None
    abort: HTTPFaultAbort | None = None
    headers: list[HTTPHeaderMatch] = []

    @model_validator(mode="after")
    def _something(self) -> HTTPFaultFilter:
        if self.delay is None and self.abort is None:
            raise ValueError("a fault needs delay, abort or both")
        return self


class HTTPServiceRef(Model):
    """A Service (or one subset of it) that is not one of a rule's weighted backends."""

    kind: Literal["Service"] = "Service"
    group: str = ""
    name: Name
    namespace: Name | None = None
    port: int | None = Field(None, ge=1, le=65535)
    subset: Name | None = None


class HTTPFraction(Model):
    numerator: int = Field(ge=0)
    denominator: int = Field(100, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _at_most_one(self) -> HTTPFraction:
        if self.numerator > self.denominator:
            raise ValueError(
                f"numerator ({self.numerator}) must not be greater than denominator "
                f"({self.denominator})"
            )
        return self


class HTTPRequestMirrorFilter(Model):
    """Gateway API RequestMirror: copy `percent` (or `fraction`) of the requests, 100% when
    neither is set, to `backendRef`; the copy's response is discarded."""

    backend_ref: HTTPServiceRef
    percent: int | None = Field(None, ge=0, le=100)
    fraction: HTTPFraction | None = None

    @field_validator("fraction")
    @classmethod
    def _one_share(cls, v: HTTPFraction | None, info: ValidationInfo) -> HTTPFraction | None:
        if v is not None and info.data.get("percent") is not None:
            raise ValueError("set percent or fraction, not both")
        return v

    @property
    def percentage(self) -> float:
        if self.fraction is not None:
            return 100.0 * self.fraction.numerator / self.fraction.denominator
        return float(self.percent) if self.percent is not None else 100.0


# filter type -> the field holding its settings (snake_case), one per type.
_FILTER_FIELDS = {
    "RequestHeaderModifier": "request_header_modifier",
    "ResponseHeaderModifier": "response_header_modifier",
    "RequestRedirect": "request_redirect",
    "URLRewrite": "url_rewrite",
    "Fault": "fault",
    "RequestMirror": "request_mirror",
}


class HTTPRouteFilter(Model):
    type: Literal[
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestRedirect",
        "URLRewrite",
        "Fault",
        "RequestMirror",
    ]
    request_header_modifier: HTTPHeaderFilter | None = None
    response_header_modifier: HTTPHeaderFilter | None = None
    request_redirect: HTTPRequestRedirectFilter | None = None
    url_rewrite: HTTPURLRewriteFilter | None = None
    fault: HTTPFaultFilter | None = None
    request_mirror: HTTPRequestMirrorFilter | None = None

    @model_validator(mode="after")
    def _one_config(self) -> HTTPRouteFilter:
        attr = _FILTER_FIELDS[self.type]
        if getattr(self, attr) is None:
            raise ValueError(f"type {self.type} needs {to_camel(attr)}")
        others = [
            to_camel(a)
            for a in _FILTER_FIELDS.values()
            if a != attr and getattr(self, a) is not None
        ]
        if others:
            raise ValueError(f"type {self.type} does not take {', '.join(others)}")
        return self


class HTTPBackendRef(Model):
    kind: Literal["Service"] = "Service"
    group: str = ""
    name: Name
    namespace: Name | None = None
    port: int | None = Field(None, ge=1, le=65535)
    subset: Name | None = None  # a Gossamer extension: one deployment of the service
    weight: int = Field(1, ge=0, le=1_000_000)
    filters: list[HTTPRouteFilter] = []

    @field_validator("filters")
    @classmethod
    def _backend_filters(cls, v: list[HTTPRouteFilter]) -> list[HTTPRouteFilter]:
        for i, f in enumerate(v):
            if f.type in ("RequestRedirect", "Fault", "RequestMirror"):
                raise ValueError(
                    f"[{i}]: {f.type} is not supported on a backendRef (put it on the rule)"
                )
        _check_filter_list(v)
        return v


def _check_filter_list(filters: list[HTTPRouteFilter]) -> None:
    """The router's rules for one list of filters (a rule's, or one backend's)."""
    types = [f.type for f in filters]
    if types.count("RequestRedirect") > 1:
        raise ValueError("only one RequestRedirect filter is allowed")
    if types.count("URLRewrite") > 1:
        raise ValueError("only one URLRewrite filter is allowed")
    if "RequestRedirect" in types and "URLRewrite" in types:
        raise ValueError("RequestRedirect and URLRewrite cannot both be set")
    if types.count("Fault") > 1:
        raise ValueError("only one Fault filter is allowed")


def _prefix_rewrite(filters: list[HTTPRouteFilter]) -> bool:
    for f in filters:
        config = f.request_redirect or f.url_rewrite
        if (
            config is not None
            and config.path is not None
            and config.path.type == "ReplacePrefixMatch"
        ):
            return True
    return False


class HTTPRouteTimeouts(Model):
    # Gateway API: 0s turns the timeout off (the Mesh default included, for `request`).
    request: Duration | None = None
    backend_request: Duration | None = None

    @field_validator("backend_request")
    @classmethod
    def _within_request(cls, v: float | None, info: ValidationInfo) -> float | None:
        request = info.data.get("request")
        if v is not None and request and v > request:
            raise ValueError(
                f"backendRequest ({format_duration(v)}) must not be longer than request "
                f"({format_duration(request)}), which covers every try"
            )
        return v


class HTTPBackoff(Model):
    base_interval: Duration = 0.025
    max_interval: Duration = 0.25

    @model_validator(mode="after")
    def _ordered(self) -> HTTPBackoff:
        if self.base_interval > self.max_interval:
            raise ValueError("baseInterval must not be greater than maxInterval")
        return self


RetryOn = Literal["5xx", "gateway-error", "reset", "connect-failure", "retriable-status-codes"]
_DEFAULT_RETRY_ON: tuple[RetryOn, ...] = ("connect-failure", "reset")


class HTTPRouteRetry(Model):
    attempts: int = Field(2, ge=0, le=10)
    per_try_timeout: PositiveDuration | None = None  # leave out for no per-try timeout
    retry_on: list[RetryOn] = Field(default_factory=lambda: list(_DEFAULT_RETRY_ON))
    retriable_status_codes: list[Annotated[int, Field(ge=400, le=599)]] = []
    backoff: HTTPBackoff = HTTPBackoff()

    @model_validator(mode="after")
    def _codes_with_retry_on(self) -> HTTPRouteRetry:
        wanted = "retriable-status-codes" in self.retry_on
        if wanted and not self.retriable_status_codes:
            raise ValueError("retryOn retriable-status-codes needs retriableStatusCodes")
        if self.retriable_status_codes and not wanted:
            raise ValueError(
                "retriableStatusCodes is only used when retryOn lists retriable-status-codes"
            )
        return self


# Framing is the proxy's business: a static response gets its own Content-Length.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
MAX_FALLBACK_BODY = 1 << 20


class HTTPStaticResponse(Model):
    status: int = Field(200, ge=200, le=599)
    headers: list[HTTPHeader] = []
    body: str = Field("", max_length=MAX_FALLBACK_BODY)

    @field_validator("headers")
    @classmethod
    def _no_framing(cls, v: list[HTTPHeader]) -> list[HTTPHeader]:
        for i, h in enumerate(v):
            if h.name.lower() in _FRAMING_HEADERS:
                raise ValueError(
                    f"[{i}]: {h.name!r} is set by the proxy from the body; leave it out"
                )
        return v

    @field_validator("body")
    @classmethod
    def _no_body_for_bodiless(cls, v: str, info: ValidationInfo) -> str:
        status = info.data.get("status")
        if v and status in (204, 304):
            raise ValueError(f"a {status} response has no body; leave `body` out")
        return v


class HTTPRouteFallback(Model):
    """What a rule serves when a request fails for good (retries exhausted, circuit open): a
    recent good response to the same GET/HEAD, another backend, or a static response, in that
    order of preference."""

    max_stale: PositiveDuration | None = None
    max_body_bytes: int | None = Field(None, ge=0, le=64 << 20)
    max_entries: int | None = Field(None, ge=1, le=1_000_000)
    backend_ref: HTTPServiceRef | None = None
    response: HTTPStaticResponse | None = None

    @model_validator(mode="after")
    def _something(self) -> HTTPRouteFallback:
        if self.max_stale is None and self.backend_ref is None and self.response is None:
            raise ValueError("a fallback needs at least one of maxStale, backendRef or response")
        return self

    @field_validator("max_body_bytes", "max_entries")
    @classmethod
    def _with_max_stale(cls, v: int | None, info: ValidationInfo) -> int | None:
        # Runs only when written; `maxStale` is declared first (absent if it failed itself).
        if v is not None and "max_stale" in info.data and info.data["max_stale"] is None:
            raise ValueError("is only used with maxStale (it bounds the responses kept for it)")
        return v


class HTTPRouteRule(Model):
    name: str | None = None
    matches: list[HTTPRouteMatch] = []
    filters: list[HTTPRouteFilter] = []
    backend_refs: list[HTTPBackendRef] = []
    timeouts: HTTPRouteTimeouts | None = None
    retry: HTTPRouteRetry | None = None
    fallback: HTTPRouteFallback | None = None

    @field_validator("fallback")
    @classmethod
    def _not_for_redirects(
        cls, v: HTTPRouteFallback | None, info: ValidationInfo
    ) -> HTTPRouteFallback | None:
        filters = info.data.get("filters") or []
        if v is not None and any(f.type == "RequestRedirect" for f in filters):
            raise ValueError("a rule that redirects answers itself: it has no use for a fallback")
        return v

    @field_validator("filters")
    @classmethod
    def _rule_filters(cls, v: list[HTTPRouteFilter], info: ValidationInfo) -> list[HTTPRouteFilter]:
        _check_filter_list(v)
        _prefix_needs_path_prefix(v, info.data.get("matches"))
        return v

    @field_validator("backend_refs")
    @classmethod
    def _backends(cls, v: list[HTTPBackendRef], info: ValidationInfo) -> list[HTTPBackendRef]:
        if v and all(b.weight == 0 for b in v):
            raise ValueError("all backendRefs have weight 0: no traffic can be routed")
        for b in v:
            _prefix_needs_path_prefix(b.filters, info.data.get("matches"))
        return v


def _prefix_needs_path_prefix(
    filters: list[HTTPRouteFilter], matches: list[HTTPRouteMatch] | None
) -> None:
    # The prefix to replace is the one the request matched: an Exact or RegularExpression path
    # match has none. `matches` is None when it failed validation itself.
    if not matches or not _prefix_rewrite(filters):
        return
    for i, m in enumerate(matches):
        if m.path is not None and m.path.type != "PathPrefix":
            raise ValueError(
                f"ReplacePrefixMatch needs every match of the rule to use a PathPrefix path "
                f"(matches[{i}] uses {m.path.type})"
            )


class HTTPRouteSpec(Model):
    parent_refs: list[ParentRef] = Field(min_length=1)
    hostnames: list[RouteHostname] = []
    rules: list[HTTPRouteRule] = Field(default_factory=lambda: [HTTPRouteRule()])


class HTTPRoute(Resource):
    kind: Literal["HTTPRoute"] = "HTTPRoute"
    spec: HTTPRouteSpec


# --- DestinationPolicy ----------------------------------------------------------------------------


class TargetRef(Model):
    kind: Literal["Service"] = "Service"
    group: str = ""
    name: Name
    namespace: Name | None = None
    subset: Name | None = None


class ConsistentHash(Model):
    http_header_name: HeaderName | None = None
    http_cookie: str | None = None
    minimum_ring_size: int = Field(1024, ge=1, le=1 << 20)

    @model_validator(mode="after")
    def _one_key(self) -> ConsistentHash:
        if (self.http_header_name is None) == (self.http_cookie is None):
            raise ValueError("set exactly one of httpHeaderName or httpCookie")
        return self


class LocalityLbSetting(Model):
    enabled: bool = Field(True, strict=True)  # prefer endpoints in the caller's zone


class LoadBalancerSpec(Model):
    policy: Literal["ROUND_ROBIN", "LEAST_REQUEST", "PEAK_EWMA", "RING_HASH"] = "LEAST_REQUEST"
    consistent_hash: ConsistentHash | None = None
    locality_lb_setting: LocalityLbSetting = LocalityLbSetting()

    @model_validator(mode="after")
    def _hash_for_ring(self) -> LoadBalancerSpec:
        if self.policy == "RING_HASH" and self.consistent_hash is None:
            raise ValueError("policy RING_HASH needs consistentHash (httpHeaderName or httpCookie)")
        if self.policy != "RING_HASH" and self.consistent_hash is not None:
            raise ValueError("consistentHash is only used with policy RING_HASH")
        return self


class ConnectionPoolSpec(Model):
    max_connections: int = Field(1024, ge=1)
    max_pending_requests: int = Field(1024, ge=0)
    max_requests_per_connection: int = Field(0, ge=0)
    idle_timeout: PositiveDuration = 60.0
    connect_timeout: PositiveDuration | None = None
    max_requests: int = Field(1024, ge=1)
    max_retries: int = Field(64, ge=0)


class HealthCheckSpec(Model):
    """Active health checks: GET `path` on every endpoint each `interval`."""

    path: Path = "/"
    interval: PositiveDuration = 5.0
    timeout: PositiveDuration = 1.0
    healthy_threshold: int = Field(2, ge=1, le=1000)
    unhealthy_threshold: int = Field(3, ge=1, le=1000)

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v


class DestinationPolicySpec(Model):
    target_ref: TargetRef
    load_balancer: LoadBalancerSpec | None = None
    connection_pool: ConnectionPoolSpec | None = None
    retry_budget: RetryBudgetSpec | None = None
    outlier_detection: OutlierDetectionSpec | None = None
    health_check: HealthCheckSpec | None = None


class DestinationPolicy(Resource):
    kind: Literal["DestinationPolicy"] = "DestinationPolicy"
    spec: DestinationPolicySpec


# --- AuthorizationPolicy (Istio's shape) ----------------------------------------------------------

_SPIFFE = "spiffe://"
_PRINCIPAL_CHARS = re.compile(r"[a-zA-Z0-9._/:-]*")
_NAMESPACE_CHARS = re.compile(r"[a-z0-9-]*")
_METHOD = re.compile(r"[A-Z]+")


def _wildcard(value: str, what: str) -> tuple[str, str]:
    """Split an Istio string match into (form, literal): form is "any", "prefix", "suffix" or
    "exact"; a `*` is allowed alone, first or last, never elsewhere."""
    if value == "*":
        return "any", ""
    if value.startswith("*"):
        form, literal = "suffix", value[1:]
    elif value.endswith("*"):
        form, literal = "prefix", value[:-1]
    else:
        form, literal = "exact", value
    if not literal:
        raise ValueError(f"{what} must not be empty")
    if "*" in literal:
        raise ValueError(
            f"{what} {value!r}: '*' is only allowed alone, as the first or as the last character"
        )
    return form, literal


def normalize_principal(value: object) -> object:
    """A principal pattern in the `spiffe://` form: Istio's short `td/ns/x/sa/y` gets the scheme.

    `*` alone, `prefix*` and `*suffix` are wildcards; an exact principal must be a valid SPIFFE ID.
    """
    if not isinstance(value, str):
        return value
    form, literal = _wildcard(value, "principal")
    if form in ("any", "suffix"):
        # A suffix matches the end of the ID: there is no scheme to add.
        if not _PRINCIPAL_CHARS.fullmatch(literal):
            raise ValueError(
                f"principal {value!r} may only hold letters, digits, '.', '-', '_' and '/'"
            )
        return value
    full = literal if literal.startswith(_SPIFFE) else _SPIFFE + literal
    if form == "exact":
        try:
            return str(SpiffeId.parse(full))
        except SpiffeIdError as exc:
            raise ValueError(f"principal {value!r} is not a SPIFFE ID: {exc}") from None
    if not _PRINCIPAL_CHARS.fullmatch(full[len(_SPIFFE) :]):
        raise ValueError(
            f"principal {value!r} may only hold letters, digits, '.', '-', '_' and '/'"
        )
    return full + "*"


def _namespace_pattern(value: object) -> object:
    if isinstance(value, str):
        _, literal = _wildcard(value, "namespace")
        if not _NAMESPACE_CHARS.fullmatch(literal):
            raise ValueError(
                f"namespace {value!r} may only hold lower-case letters, digits and '-' "
                "(and '*' first or last)"
            )
    return value


def _method(value: object) -> object:
    if isinstance(value, str) and not _METHOD.fullmatch(value):
        if value.upper() != value and _METHOD.fullmatch(value.upper()):
            raise ValueError(
                f"method {value!r}: HTTP methods are upper-case, write {value.upper()!r}"
            )
        raise ValueError(f"method {value!r} is not an HTTP method such as GET or POST")
    return value


def _port(value: object) -> object:
    # Istio writes ports as strings ("8080"); both forms are accepted.
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return value


def _authz_path(value: object) -> object:
    """Istio's path string (`/exact`, `/prefix*`, `*suffix`, `*`) as an AuthzPathMatch mapping."""
    if not isinstance(value, str):
        return value
    form, literal = _wildcard(value, "path")
    if form == "any":
        return {"type": "Prefix", "value": ""}
    kind = {"exact": "Exact", "prefix": "Prefix", "suffix": "Suffix"}[form]
    return {"type": kind, "value": literal}


class AuthzPathMatch(Model):
    """One path condition. Written as Istio's string or as this mapping (HTTPRoute's types, plus
    Istio's plain Prefix and Suffix)."""

    type: Literal["Exact", "Prefix", "Suffix", "PathPrefix", "RegularExpression"]
    value: str

    @field_validator("value")
    @classmethod
    def _valid_value(cls, v: str, info: ValidationInfo) -> str:
        kind = info.data.get("type")
        if kind == "RegularExpression":
            return _check_regex(v)
        if kind == "Suffix":
            if not v:
                raise ValueError("a Suffix path must not be empty")
            syntax.check_path("/" + v)
        elif kind == "Prefix" and v == "":
            pass  # `*`: any path
        elif kind is not None:
            if not v.startswith("/"):
                raise ValueError(f"{kind} paths must start with '/' (or '*' for a suffix)")
            syntax.check_path(v)
        return v


Principal = Annotated[str, BeforeValidator(normalize_principal)]
NamespacePattern = Annotated[str, BeforeValidator(_namespace_pattern)]
Method = Annotated[str, BeforeValidator(_method)]
AuthzPort = Annotated[int, BeforeValidator(_port), Field(ge=1, le=65535)]
AuthzPath = Annotated[AuthzPathMatch, BeforeValidator(_authz_path)]


class AuthzSource(Model):
    """Who sends the request; the fields are AND-ed, the values of one field OR-ed."""

    principals: list[Principal] = []
    not_principals: list[Principal] = []
    namespaces: list[NamespacePattern] = []
    not_namespaces: list[NamespacePattern] = []

    @model_validator(mode="after")
    def _not_empty(self) -> AuthzSource:
        if not (self.principals or self.not_principals or self.namespaces or self.not_namespaces):
            raise ValueError(
                "source must set at least one of principals, notPrincipals, namespaces, "
                "notNamespaces (leave out `from` to match every source)"
            )
        return self


class AuthzOperation(Model):
    """What the request asks for; the fields are AND-ed, the values of one field OR-ed."""

    paths: list[AuthzPath] = []
    not_paths: list[AuthzPath] = []
    methods: list[Method] = []
    not_methods: list[Method] = []
    ports: list[AuthzPort] = []
    not_ports: list[AuthzPort] = []

    @model_validator(mode="after")
    def _not_empty(self) -> AuthzOperation:
        if not any(
            (self.paths, self.not_paths, self.methods, self.not_methods, self.ports, self.not_ports)
        ):
            raise ValueError(
                "operation must set at least one of paths, notPaths, methods, notMethods, ports, "
                "notPorts (leave out `to` to match every request)"
            )
        return self


class AuthzFrom(Model):
    source: AuthzSource


class AuthzTo(Model):
    operation: AuthzOperation


class AuthzRule(Model):
    """`from` AND `to`; the entries of each are OR-ed; a rule with neither matches every request."""

    from_: list[AuthzFrom] = Field([], alias="from")
    to: list[AuthzTo] = []


class AuthzTargetRef(Model):
    kind: Literal["Service"] = "Service"
    group: str = ""
    name: Name
    namespace: Name | None = None  # only the policy's own: a policy applies in its namespace


class AuthorizationPolicySpec(Model):
    target_ref: AuthzTargetRef | None = None  # None: every service in the policy's namespace
    action: Literal["ALLOW", "DENY", "AUDIT"] = "ALLOW"
    rules: list[AuthzRule] = []


class AuthorizationPolicy(Resource):
    kind: Literal["AuthorizationPolicy"] = "AuthorizationPolicy"
    spec: AuthorizationPolicySpec = AuthorizationPolicySpec()

    @field_validator("spec")
    @classmethod
    def _own_namespace(
        cls, spec: AuthorizationPolicySpec, info: ValidationInfo
    ) -> AuthorizationPolicySpec:
        ref = spec.target_ref
        metadata = info.data.get("metadata")  # declared before spec; absent if it failed itself
        if (
            ref is not None
            and metadata is not None
            and ref.namespace not in (None, metadata.namespace)
        ):
            raise ValueError(
                f"targetRef.namespace {ref.namespace!r}: an AuthorizationPolicy applies only in "
                f"its own namespace ({metadata.namespace!r}); create it there"
            )
        return spec


# --- RateLimitPolicy ------------------------------------------------------------------------------


class RateLimitTargetRef(Model):
    """A Service (its sidecars limit what they receive) or an HTTPRoute (every caller routing by
    it limits what it sends), in the policy's own namespace."""

    kind: Literal["Service", "HTTPRoute"]
    group: str = ""
    name: Name
    namespace: Name | None = None  # only the policy's own (validate.py says so, at its line)


class RateLimitKeySpec(Model):
    type: Literal["Route", "SourceIdentity", "Header", "ClientAddress"]
    name: HeaderName | None = Field(None, min_length=1)  # the header, for type Header

    @model_validator(mode="after")
    def _name_for_header(self) -> RateLimitKeySpec:
        if self.type == "Header" and self.name is None:
            raise ValueError("type Header needs name (the header whose value tells buckets apart)")
        if self.type != "Header" and self.name is not None:
            raise ValueError(f"type {self.type} takes no name (only type Header does)")
        return self


class RateLimitSpec(Model):
    """`requests` per `per` for each distinct key, with `burst` more allowed at once."""

    name: Name | None = None
    matches: list[HTTPRouteMatch] = []
    keys: list[RateLimitKeySpec] = []
    requests: int = Field(ge=1, le=1_000_000_000)
    per: PositiveDuration
    burst: int = Field(0, ge=0, le=1_000_000_000)
    scope: Literal["Local", "Global"] = "Local"
    failure_mode: Literal["FailOpen", "FailClosed"] = "FailOpen"

    @field_validator("name")
    @classmethod
    def _not_a_number(cls, v: str | None) -> str | None:
        if v is not None and v.isdigit():
            raise ValueError(f"{v!r} would read as a limit's index: use a name with a letter")
        return v

    @field_validator("keys")
    @classmethod
    def _distinct(cls, v: list[RateLimitKeySpec]) -> list[RateLimitKeySpec]:
        seen: set[tuple[str, str | None]] = set()
        for i, key in enumerate(v):
            ident = (key.type, key.name.lower() if key.name else None)
            if ident in seen:
                raise ValueError(f"[{i}]: the same key twice")
            seen.add(ident)
        return v

    @field_validator("failure_mode")
    @classmethod
    def _failure_mode_for_global(cls, v: str, info: ValidationInfo) -> str:
        # Runs only when written; `scope` is declared first (absent if it failed itself).
        if info.data.get("scope", "Global") != "Global":
            raise ValueError("is only used with scope Global (a Local limit needs no Redis)")
        return v


class RateLimitPolicySpec(Model):
    target_ref: RateLimitTargetRef
    limits: list[RateLimitSpec] = Field(min_length=1)

    @field_validator("limits")
    @classmethod
    def _unique_names(cls, v: list[RateLimitSpec]) -> list[RateLimitSpec]:
        names = [limit.name for limit in v if limit.name is not None]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate limit name {dupes[0]!r}")
        return v


class RateLimitPolicy(Resource):
    kind: Literal["RateLimitPolicy"] = "RateLimitPolicy"
    spec: RateLimitPolicySpec

    def rule_name(self, index: int) -> str:
        """The name the Snapshot gives limit `index`: `<namespace>/<policy>#<name or index>`."""
        limit = self.spec.limits[index]
        suffix = limit.name if limit.name is not None else str(index)
        return f"{self.metadata.namespace}/{self.metadata.name}#{suffix}"


KINDS: dict[str, type[Resource]] = {
    "Mesh": Mesh,
    "Service": Service,
    "HTTPRoute": HTTPRoute,
    "DestinationPolicy": DestinationPolicy,
    "AuthorizationPolicy": AuthorizationPolicy,
    "RateLimitPolicy": RateLimitPolicy,
}

AnyResource = Mesh | Service | HTTPRoute | DestinationPolicy | AuthorizationPolicy | RateLimitPolicy
