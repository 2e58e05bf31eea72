"""The translator: resources + registry endpoints -> the one resolved Snapshot a given proxy runs.

A pure function: no I/O, no clock, and nothing depends on the order of its inputs, so the same
resources and endpoints always give the same Snapshot version and a proxy is only pushed a new
Snapshot when something it runs really changed.

What every proxy gets:
- one virtual host per Service, named `NAME.NS`, with the domains `NAME.NS`, `NAME.NS.svc`,
  `NAME.NS.svc.cluster.local`, the `hostnames` of the HTTPRoutes attached to it, and each of those
  also as `HOST:PORT` for every port of the service; all lower-case. The bare `NAME` goes to the
  service of that name in the proxy's own namespace; when there is none, to the only service of
  that name in the mesh; when several namespaces have one and none is the proxy's, to nobody (a
  `no-route` 404 says more than a request quietly sent to a namespace picked by the alphabet).
  A domain belongs to one virtual host: the names derived from services come first, then route
  hostnames by route `namespace/name`, and a later claim on a taken domain is dropped;
- the rules of the routes attached to the service, GAMMA-style: routes in the service's namespace
  apply to every client, routes in another namespace only to proxies in that namespace, where they
  replace the former. They are ordered by Gateway API precedence (see `translate_routes`); a
  service with no route gets one rule `default` sending everything to `NAME.NS`. No catch-all is
  added after route rules: the Gateway API answers unmatched requests with 404, the `no-route` flag;
- one cluster per service (`NAME.NS`, every replica), per declared subset and per subset any route
  names (`NAME.NS.SUBSET`); a replica is in a subset when it registered with that subset or when the
  subset has labels and the replica's labels include them all. Load balancer, connection pool and
  retry budget come from DestinationPolicies (per field: subset-level over service-level, and among
  several policies for one target the first by `namespace/name`), else from the Mesh defaults;
- the inbound listener for the proxy's own registration, and its SPIFFE identity;
- `authz`: the AuthorizationPolicies of the proxy's namespace that select its own service (by
  targetRef, or namespace-wide without one), by `namespace/name`, for its inbound listener to
  enforce; None when there is none, so a mesh without policies gets the Snapshot it always had;
- outlier detection per cluster: the Mesh's `defaults.outlierDetection`, then the service's
  DestinationPolicies, then the subset's, each overriding the fields it writes (a whole
  `successRate` is one field); none of them written: off. Its `minHealthPercent` becomes the load
  balancer's panic threshold;
- `rate_limits`: inbound, the limits of the RateLimitPolicies of the proxy's namespace that target
  its own service; outbound, those targeting an HTTPRoute whose rules this proxy routes by, tied
  to those rules by name. Each limit is named `<namespace>/<policy>#<name or index>`. None when
  no policy applies.

A front door (a proxy registered with the label `gossamer.dev/publish: S`, which `gossamer up` runs
for a Service's `publish: PORT`) gets less: service S's virtual host with its rules, and only the
clusters those rules send to. Every other service keeps its virtual host and domains but with no
rules, so a request naming it (`Host: pricing`, or `GET http://pricing/...` through the port as an
HTTP proxy) gets the `no-route` 404 instead of reaching it: the published port exposes S alone.
Any other host (`localhost:8080`, `127.0.0.1:PORT`) goes to S by the proxy's `--default-host S`.

Retries when a rule has no `retry` block: 2 retries on `connect-failure` only. Istio retries twice
by default on connect failures, refused streams and 503s, whatever the method; Linkerd retries
nothing unless asked. A connect failure means the request never reached the app, so retrying it is
safe even for a POST, while after a `reset` or a 503 the app may already have acted. So the default
takes Istio's count and only the outcome that is safe for every method; the cluster's retry budget
bounds it under load. Routes ask for more (`5xx`, `reset`, ...) with a retry block, and turn
retries off with `attempts: 0`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from gossamer import snapshot as snap
from gossamer.config.models import (
    AuthorizationPolicy,
    AuthzOperation,
    AuthzPathMatch,
    AuthzRule,
    AuthzSource,
    ConnectionPoolSpec,
    DestinationPolicy,
    HealthCheckSpec,
    HTTPRoute,
    LoadBalancerSpec,
    Mesh,
    MeshSpec,
    OutlierDetectionSpec,
    RateLimitPolicy,
    RateLimitSpec,
    Resource,
    RetryBudgetSpec,
    Service,
)
from gossamer.control.registry import Registration
from gossamer.control.translate_routes import (
    ClusterKey,
    RuleDefaults,
    TranslateError,
    build_rules,
    cluster_name,
    match_to_snapshot,
)

__all__ = ["DEFAULT_RETRY", "PUBLISH_LABEL", "TranslateError", "spiffe_id", "translate"]

# The label of a front door for one service: its value is the service's name, in the proxy's
# namespace (`gossamer up` sets it on the proxy it runs for `publish: PORT`).
PUBLISH_LABEL = "gossamer.dev/publish"

DEFAULT_RETRY = snap.RetryPolicy(attempts=2, retry_on=["connect-failure"])

_T = TypeVar("_T")
_R = TypeVar("_R", bound=Resource)

_POLICY_FIELDS = ("load_balancer", "connection_pool", "retry_budget", "health_check")


@dataclass(frozen=True)
class _World:
    """The resources, indexed and sorted so that input order cannot leak into the output."""

    mesh: MeshSpec
    services: dict[tuple[str, str], Service]  # (namespace, name), in sorted order
    routes: list[HTTPRoute]  # by namespace/name
    policies: list[DestinationPolicy]  # by namespace/name
    authz: list[AuthorizationPolicy]  # by namespace/name
    rate_limits: list[RateLimitPolicy]  # by namespace/name


@dataclass(frozen=True, slots=True)
class Trust:
    """What every proxy must trust and who issues SVIDs now: from the CA, not from resources."""

    bundle_pem: str  # every root a peer's SVID may chain to
    signer: str  # SHA-256 fingerprint (hex) of the CA certificate now issuing SVIDs


def translate(
    resources: Sequence[Resource],
    endpoints: Sequence[Registration],
    proxy: snap.ProxyIdentity,
    *,
    trust: Trust | None = None,
) -> snap.Snapshot:
    """Build and seal the Snapshot for one proxy.

    Args:
        resources: every applied resource; kinds other than Mesh, Service, HTTPRoute,
            DestinationPolicy, AuthorizationPolicy and RateLimitPolicy are ignored. References to
            missing services are not errors here (validation reports them): a route (a mirror, a
            fallback) to one gets an empty cluster (503), a route attached to one is not served.
        endpoints: every registration in the registry, healthy or not.
        proxy: who asks; its namespace decides bare service names, its id finds its registration.
        trust: the CA's bundle and signer for the Snapshot's `tls`; None leaves them empty.

    Raises:
        TranslateError: a resource the models accepted but that cannot be translated.
    """
    world = _index(resources)
    regs = sorted(endpoints, key=lambda r: (r.namespace, r.service, r.inbound, r.proxy_id))
    regs_by_service: dict[tuple[str, str], list[Registration]] = {}
    for r in regs:
        # A proxy with no app behind it (a `publish` front door) serves no requests for its
        # service, so it is never an endpoint.
        if r.app_port:
            regs_by_service.setdefault((r.namespace, r.service), []).append(r)
    defaults = RuleDefaults(
        request_timeout=world.mesh.defaults.timeouts.request or None,
        retry=DEFAULT_RETRY,
    )

    routes_by_parent = _attached_routes(world.routes, proxy.namespace)

    front = proxy.labels.get(PUBLISH_LABEL)
    front_key = (proxy.namespace, front) if front is not None else None
    wanted: set[ClusterKey] = set()
    rules: dict[tuple[str, str], list[snap.RouteRule]] = {}
    for (ns, name), service in world.services.items():
        service_rules, referenced = build_rules(
            (name, ns, None), routes_by_parent.get((ns, name), []), defaults
        )
        if front_key is not None:
            # A front door serves its one service: no rules (so no-route) for the others.
            if (ns, name) == front_key:
                rules[(ns, name)] = service_rules
                wanted.update(referenced)
            else:
                rules[(ns, name)] = []
            continue
        wanted.add((name, ns, None))
        wanted.update((name, ns, s.name) for s in service.spec.subsets)
        rules[(ns, name)] = service_rules
        wanted.update(referenced)

    domains = _domains(world, routes_by_parent, proxy.namespace)
    virtual_hosts = [
        snap.VirtualHost(name=f"{name}.{ns}", domains=domains[(ns, name)], rules=rules[(ns, name)])
        for (ns, name) in world.services
    ]
    virtual_hosts.sort(key=lambda v: v.name)
    clusters = [
        _cluster(key, world, regs_by_service.get((key[1], key[0]), []))
        for key in sorted(wanted, key=lambda k: (k[1], k[0], k[2] or ""))
    ]
    clusters.sort(key=lambda c: c.name)

    built = snap.Snapshot(
        proxy=_identity(world, regs, proxy),
        listeners=snap.Listeners(inbound=_inbound(world, regs, proxy)),
        virtual_hosts=virtual_hosts,
        clusters=clusters,
        authz=_authz(world, proxy),
        tls=_tls(world, proxy, trust),
        rate_limits=_rate_limits(world, proxy, virtual_hosts, front_door=front is not None),
        telemetry=_telemetry(world),
    )
    return snap.seal(built)


def _telemetry(world: _World) -> snap.Telemetry | None:
    """The Mesh's `tracing`, for every proxy alike; None without one (the Snapshot as before)."""
    spec = world.mesh.tracing
    if spec is None:
        return None
    otlp = spec.otlp
    exporter = None
    if otlp is not None:
        exporter = snap.TracingExporter(
            protocol=otlp.protocol, endpoint=otlp.endpoint, timeout=otlp.timeout
        )
    tracing = snap.Tracing(
        sampling=spec.sampling_percentage / 100.0, keep_errors=spec.keep_errors, exporter=exporter
    )
    return snap.Telemetry(tracing=tracing)


def spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def _index(resources: Iterable[Resource]) -> _World:
    meshes: list[Mesh] = []
    services: list[Service] = []
    routes: list[HTTPRoute] = []
    policies: list[DestinationPolicy] = []
    authz: list[AuthorizationPolicy] = []
    rate_limits: list[RateLimitPolicy] = []
    for r in resources:
        if isinstance(r, Mesh):
            meshes.append(r)
        elif isinstance(r, Service):
            services.append(r)
        elif isinstance(r, HTTPRoute):
            routes.append(r)
        elif isinstance(r, DestinationPolicy):
            policies.append(r)
        elif isinstance(r, AuthorizationPolicy):
            authz.append(r)
        elif isinstance(r, RateLimitPolicy):
            rate_limits.append(r)

    by_key: dict[tuple[str, str], Service] = {
        (s.metadata.namespace, s.metadata.name): s for s in _unique(services)
    }
    return _World(
        mesh=_unique(meshes)[0].spec if meshes else MeshSpec(),
        services=by_key,
        routes=_unique(routes),
        policies=_unique(policies),
        authz=_unique(authz),
        rate_limits=_unique(rate_limits),
    )


def _attached_routes(
    routes: Sequence[HTTPRoute], proxy_namespace: str
) -> dict[tuple[str, str], list[HTTPRoute]]:
    """The routes that apply to this proxy, by the (namespace, name) of the service they attach to.

    GAMMA: a route in the service's own namespace (a producer route) applies to every client; a
    route in another namespace (a consumer route) applies only to clients in its namespace, and
    there it replaces the producer routes of that service.
    """
    producer: dict[tuple[str, str], list[HTTPRoute]] = {}
    consumer: dict[tuple[str, str], list[HTTPRoute]] = {}
    for route in routes:
        route_ns = route.metadata.namespace
        for parent in sorted({(p.namespace or route_ns, p.name) for p in route.spec.parent_refs}):
            if parent[0] == route_ns:
                producer.setdefault(parent, []).append(route)
            elif route_ns == proxy_namespace:
                consumer.setdefault(parent, []).append(route)
    return {**producer, **consumer}


def _unique(items: Sequence[_R]) -> list[_R]:
    """One resource per namespace/name, sorted by it.

    The store holds one resource per key, but a caller might pass two; the one with the smaller JSON
    is kept, since any fixed choice beats one that follows input order.
    """
    chosen: dict[tuple[str, str], _R] = {}
    for r in items:
        key = (r.metadata.namespace, r.metadata.name)
        other = chosen.get(key)
        if other is None or r.model_dump_json() < other.model_dump_json():
            chosen[key] = r
    return [chosen[key] for key in sorted(chosen)]


def _domains(
    world: _World,
    routes_by_parent: dict[tuple[str, str], list[HTTPRoute]],
    proxy_namespace: str,
) -> dict[tuple[str, str], list[str]]:
    namespaces_of: dict[str, list[str]] = {}
    for ns, name in world.services:
        namespaces_of.setdefault(name, []).append(ns)

    hosts: dict[tuple[str, str], list[str]] = {}
    for ns, name in world.services:
        own = [f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
        candidates = namespaces_of[name]
        bare_ns = (
            proxy_namespace
            if proxy_namespace in candidates
            else (candidates[0] if len(candidates) == 1 else None)
        )
        if bare_ns == ns:
            own.append(name)
        hosts[(ns, name)] = [h.lower() for h in own]

    taken = {h for names in hosts.values() for h in names}
    claims: list[tuple[str, str, str, tuple[str, str]]] = []
    for parent in world.services:
        for route in routes_by_parent.get(parent, []):
            for hostname in route.spec.hostnames:
                claims.append((route.metadata.namespace, route.metadata.name, hostname, parent))
    for _, _, hostname, parent in sorted(claims):
        host = hostname.lower()
        if host not in taken:
            taken.add(host)
            hosts[parent].append(host)

    out: dict[tuple[str, str], list[str]] = {}
    for key, names in hosts.items():
        ports = sorted({p.port for p in world.services[key].spec.ports})
        out[key] = sorted({*names, *(f"{h}:{port}" for h in names for port in ports)})
    return out


def _cluster(key: ClusterKey, world: _World, regs: Sequence[Registration]) -> snap.Cluster:
    """The cluster for `key`, from `regs`: the registrations of its service (sorted)."""
    name, ns, subset = key
    service = world.services.get((ns, name))
    subset_labels: dict[str, str] = {}
    if service is not None and subset is not None:
        for s in service.spec.subsets:
            if s.name == subset:
                subset_labels = s.labels

    def member(r: Registration) -> bool:
        if r.service != name or r.namespace != ns or not r.inbound:
            return False
        if subset is None or r.subset == subset:
            return True
        # A subset without labels would take every replica; it selects by registration only.
        return bool(subset_labels) and all(r.labels.get(k) == v for k, v in subset_labels.items())

    endpoints = [
        snap.Endpoint(
            address=r.inbound,
            healthy=r.healthy,
            zone=r.zone,
            labels=dict(r.labels),
            proxy_id=r.proxy_id,
        )
        for r in regs
        if member(r)
    ]
    endpoints.sort(key=lambda e: (e.address, e.proxy_id or ""))

    mesh = world.mesh.defaults
    load_balancer = snap.LoadBalancer(policy=mesh.load_balancer)
    pool = snap.ConnectionPool(
        connect_timeout=mesh.timeouts.connect, idle_timeout=mesh.timeouts.idle
    )
    budget = _budget(mesh.retry_budget)
    health_check = None
    for field in _POLICY_FIELDS:
        value = _policy_field(world.policies, key, field)
        if isinstance(value, LoadBalancerSpec):
            load_balancer = _load_balancer(value)
        elif isinstance(value, ConnectionPoolSpec):
            pool = _pool(value, world.mesh)
        elif isinstance(value, RetryBudgetSpec):
            budget = _budget(value)
        elif isinstance(value, HealthCheckSpec):
            health_check = _health_check(value)
    outlier, panic_threshold = _outlier_detection(world, key)
    if panic_threshold:
        load_balancer = msgspec.structs.replace(load_balancer, panic_threshold=panic_threshold)

    return snap.Cluster(
        name=cluster_name(key),
        service=name,
        namespace=ns,
        subset=subset,
        load_balancer=load_balancer,
        connection_pool=pool,
        retry_budget=budget,
        endpoints=endpoints,
        tls=_upstream_tls(world, ns, name, service),
        outlier_detection=outlier,
        health_check=health_check,
    )


def _mtls_mode(world: _World, service: Service | None) -> snap.MtlsMode:
    own = service.spec.mtls if service is not None else None
    return (own or world.mesh.mtls).mode


def _account(service: Service | None, name: str) -> str:
    return (service.spec.service_account if service is not None else None) or name


def _upstream_tls(
    world: _World, ns: str, name: str, service: Service | None
) -> snap.UpstreamTls | None:
    """Originate mTLS unless the destination accepts only plaintext; its replicas must present
    the SVID of its service account (PERMISSIVE accepts mTLS too, so it gets mTLS)."""
    if _mtls_mode(world, service) == "DISABLE":
        return None
    return snap.UpstreamTls(
        identities=[spiffe_id(world.mesh.trust_domain, ns, _account(service, name))]
    )


def _targeting(
    policies: Sequence[DestinationPolicy], key: ClusterKey
) -> list[list[DestinationPolicy]]:
    """The policies for this cluster by level, most specific first: its subset's, its service's;
    within a level by namespace/name."""
    name, ns, subset = key
    levels = [subset, None] if subset is not None else [None]
    return [
        [
            p
            for p in policies
            if p.spec.target_ref.name == name
            and (p.spec.target_ref.namespace or p.metadata.namespace) == ns
            and p.spec.target_ref.subset == level
        ]
        for level in levels
    ]


def _policy_field(policies: Sequence[DestinationPolicy], key: ClusterKey, field: str) -> object:
    """The first setting of `field` for this cluster: subset-level policies, then service-level."""
    for level in _targeting(policies, key):
        for p in level:
            value = getattr(p.spec, field)
            if value is not None:
                return value
    return None


def _outlier_detection(
    world: _World, key: ClusterKey
) -> tuple[snap.OutlierDetection | None, float]:
    """The cluster's outlier detection and panic threshold, folded per field written: the Mesh
    default, then service-level policies, then subset-level ones (the first by namespace/name
    winning within a level). Nothing written anywhere: the mesh default (gateway errors)."""
    layers: list[OutlierDetectionSpec] = [world.mesh.defaults.outlier_detection]
    for level in reversed(_targeting(world.policies, key)):
        layers += [p.spec.outlier_detection for p in reversed(level) if p.spec.outlier_detection]
    folded: dict[str, Any] = {}
    for layer in layers:
        folded.update({f: getattr(layer, f) for f in layer.model_fields_set})
    # The folded fields over the model's defaults; not validated again, since fields from
    # different layers were each valid alone (a ceiling below a base is mended below).
    spec = OutlierDetectionSpec.model_construct(**folded)
    panic = float(spec.min_health_percent)
    five = spec.consecutive_5xx_errors or None
    gateway = spec.consecutive_gateway_errors or None
    rate = spec.success_rate
    if five is None and gateway is None and rate is None:
        return None, panic
    return (
        snap.OutlierDetection(
            consecutive_5xx=five,
            consecutive_gateway_errors=gateway,
            interval=spec.interval,
            base_ejection_time=spec.base_ejection_time,
            max_ejection_time=max(spec.max_ejection_time, spec.base_ejection_time),
            max_ejection_percent=float(spec.max_ejection_percent),
            success_rate=(
                snap.SuccessRateEjection(
                    minimum_hosts=rate.minimum_hosts,
                    request_volume=rate.request_volume,
                    stdev_factor=float(rate.stdev_factor),
                )
                if rate is not None
                else None
            ),
        ),
        panic,
    )


def _health_check(spec: HealthCheckSpec) -> snap.HealthCheck:
    return snap.HealthCheck(
        path=spec.path,
        interval=spec.interval,
        timeout=spec.timeout,
        healthy_threshold=spec.healthy_threshold,
        unhealthy_threshold=spec.unhealthy_threshold,
    )


def _load_balancer(spec: LoadBalancerSpec) -> snap.LoadBalancer:
    ring = None
    if spec.consistent_hash is not None:
        h = spec.consistent_hash
        ring = snap.RingHash(
            header=h.http_header_name.lower() if h.http_header_name else None,
            cookie=h.http_cookie,
            minimum_ring_size=h.minimum_ring_size,
        )
    return snap.LoadBalancer(
        policy=spec.policy, ring_hash=ring, locality=spec.locality_lb_setting.enabled
    )


def _pool(spec: ConnectionPoolSpec, mesh: MeshSpec) -> snap.ConnectionPool:
    timeouts = mesh.defaults.timeouts
    return snap.ConnectionPool(
        max_connections=spec.max_connections,
        max_pending_requests=spec.max_pending_requests,
        max_requests_per_connection=spec.max_requests_per_connection,
        # The model's own defaults would hide the Mesh's: only what the policy spelled out wins.
        idle_timeout=spec.idle_timeout
        if "idle_timeout" in spec.model_fields_set
        else timeouts.idle,
        connect_timeout=spec.connect_timeout
        if spec.connect_timeout is not None
        else timeouts.connect,
        max_requests=spec.max_requests,
        max_retries=spec.max_retries,
    )


def _budget(spec: RetryBudgetSpec) -> snap.RetryBudget:
    return snap.RetryBudget(
        ratio=float(spec.ratio), min_per_second=float(spec.min_per_second), ttl=float(spec.ttl)
    )


def _inbound(
    world: _World, regs: Sequence[Registration], proxy: snap.ProxyIdentity
) -> snap.InboundListener | None:
    own = [r for r in regs if r.proxy_id == proxy.proxy_id]
    if not own or not own[0].app_port:
        return None
    reg = own[0]
    service = world.services.get((reg.namespace, reg.service))
    protocol: snap.Protocol = service.spec.ports[0].protocol if service is not None else "http"
    return snap.InboundListener(app_port=reg.app_port, protocol=protocol)


def _identity(
    world: _World, regs: Sequence[Registration], proxy: snap.ProxyIdentity
) -> snap.ProxyIdentity:
    """The proxy with its SPIFFE ID, and its zone from its registration unless it has one."""
    service = world.services.get((proxy.namespace, proxy.service))
    account = _account(service, proxy.service)
    zone = proxy.zone
    if zone is None:
        zone = next((r.zone for r in regs if r.proxy_id == proxy.proxy_id), None)
    return msgspec.structs.replace(
        proxy,
        spiffe_id=spiffe_id(world.mesh.trust_domain, proxy.namespace, account),
        zone=zone,
    )


def _tls(world: _World, proxy: snap.ProxyIdentity, trust: Trust | None) -> snap.MeshTls:
    """The proxy's inbound mode, with the bundle and signer `trust` gives (they come from the CA
    rather than from resources)."""
    mode = _mtls_mode(world, world.services.get((proxy.namespace, proxy.service)))
    if trust is None:
        return snap.MeshTls(mode=mode)
    return snap.MeshTls(mode=mode, trust_bundle=trust.bundle_pem, signer=trust.signer)


def _authz(world: _World, proxy: snap.ProxyIdentity) -> snap.AuthzConfig | None:
    """The policies selecting the proxy's own service, already sorted by namespace/name."""
    chosen = [
        _authz_policy(p)
        for p in world.authz
        if p.metadata.namespace == proxy.namespace
        and (
            p.spec.target_ref is None
            or (
                p.spec.target_ref.name == proxy.service
                and p.spec.target_ref.namespace in (None, proxy.namespace)
            )
        )
    ]
    if not chosen:
        return None
    service = world.services.get((proxy.namespace, proxy.service))
    default_port = service.spec.ports[0].port if service is not None else None
    return snap.AuthzConfig(policies=chosen, default_port=default_port)


def _authz_policy(policy: AuthorizationPolicy) -> snap.AuthzPolicy:
    return snap.AuthzPolicy(
        name=f"{policy.metadata.namespace}/{policy.metadata.name}",
        action=policy.spec.action,
        rules=[_authz_rule(r) for r in policy.spec.rules],
    )


def _authz_rule(rule: AuthzRule) -> snap.AuthzRule:
    return snap.AuthzRule(
        from_=[_authz_source(f.source) for f in rule.from_],
        to=[_authz_operation(t.operation) for t in rule.to],
    )


def _authz_source(source: AuthzSource) -> snap.AuthzSource:
    return snap.AuthzSource(
        principals=list(source.principals),
        not_principals=list(source.not_principals),
        namespaces=list(source.namespaces),
        not_namespaces=list(source.not_namespaces),
    )


def _authz_operation(op: AuthzOperation) -> snap.AuthzOperation:
    return snap.AuthzOperation(
        paths=[_authz_path(p) for p in op.paths],
        not_paths=[_authz_path(p) for p in op.not_paths],
        methods=list(op.methods),
        not_methods=list(op.not_methods),
        ports=list(op.ports),
        not_ports=list(op.not_ports),
    )


def _authz_path(path: AuthzPathMatch) -> snap.AuthzPath:
    return snap.AuthzPath(type=path.type, value=path.value)


def _rate_limits(
    world: _World,
    proxy: snap.ProxyIdentity,
    virtual_hosts: Sequence[snap.VirtualHost],
    *,
    front_door: bool,
) -> snap.RateLimits | None:
    """The limits this proxy enforces: inbound for its own service, outbound for the routes whose
    rules it routes by (a consumer route elsewhere, or a front door's narrowing, leaves a route's
    rules out of this proxy's tables, and with them its limits). A front door has no inbound
    listener: its service's replicas enforce their inbound limits themselves."""
    routed = {rule.name for v in virtual_hosts for rule in v.rules}
    inbound: list[snap.RateLimitRule] = []
    outbound: list[snap.RateLimitRule] = []
    for policy in world.rate_limits:
        ns = policy.metadata.namespace
        ref = policy.spec.target_ref
        if ref.kind == "Service":
            if not front_door and (ns, ref.name) == (proxy.namespace, proxy.service):
                inbound += _limits(world, policy, [])
            continue
        route = next(
            (r for r in world.routes if (r.metadata.namespace, r.metadata.name) == (ns, ref.name)),
            None,
        )
        if route is None:
            continue
        names = [f"{ns}/{ref.name}#{i}" for i in range(len(route.spec.rules))]
        rules = [n for n in names if n in routed]
        if rules:
            outbound += _limits(world, policy, rules)
    if not inbound and not outbound:
        return None
    redis = world.mesh.rate_limit.redis
    needs_redis = any(r.scope == "Global" for r in (*inbound, *outbound))
    server = None
    if redis is not None and needs_redis:
        server = snap.RedisServer(
            address=redis.address, timeout=redis.timeout, key_prefix=redis.key_prefix
        )
    return snap.RateLimits(inbound=inbound, outbound=outbound, redis=server)


def _limits(
    world: _World, policy: RateLimitPolicy, route_rules: list[str]
) -> list[snap.RateLimitRule]:
    return [
        _limit(policy.rule_name(i), limit, route_rules, world.mesh.rate_limit.redis is not None)
        for i, limit in enumerate(policy.spec.limits)
    ]


def _limit(
    name: str, spec: RateLimitSpec, route_rules: list[str], has_redis: bool
) -> snap.RateLimitRule:
    # Validation refuses a Global limit without the Mesh's Redis; one can still be stored when
    # the Mesh loses it later. Each proxy then counts alone (Local) rather than NACK the Snapshot.
    scope: snap.RateLimitScope = spec.scope if has_redis else "Local"
    return snap.RateLimitRule(
        name=name,
        matches=[match_to_snapshot(m) for m in spec.matches],
        route_rules=list(route_rules),
        keys=[
            snap.RateLimitKey(type=k.type, name=k.name.lower() if k.name else None)
            for k in spec.keys
        ],
        requests=spec.requests,
        period=spec.per,
        burst=spec.burst,
        scope=scope,
        failure_mode=spec.failure_mode if scope == "Global" else "FailOpen",
    )
