"""Translator, issue 4: outlier detection folding, breaker limits, locality, zones, faults,
mirrors, fallbacks and rate limits in the Snapshot."""

from __future__ import annotations

from textwrap import dedent

from gossamer import snapshot as snap
from gossamer.config.loader import load_text
from gossamer.control.registry import Registration
from gossamer.control.translate import PUBLISH_LABEL, translate

PROXY = snap.ProxyIdentity(proxy_id="web-0", service="web")

SERVICES = """\
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: web}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: api}
spec:
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
"""


def _translate(
    text: str,
    regs: list[Registration] | None = None,
    proxy: snap.ProxyIdentity = PROXY,
) -> snap.Snapshot:
    resources = [item.resource for item in load_text(SERVICES + text, "mesh.yaml")]
    return translate(resources, regs or [], proxy)


def _cluster(s: snap.Snapshot, name: str) -> snap.Cluster:
    (cluster,) = [c for c in s.clusters if c.name == name]
    return cluster


def _rule(s: snap.Snapshot, vhost: str, index: int = 0) -> snap.RouteRule:
    (host,) = [v for v in s.virtual_hosts if v.name == vhost]
    return host.rules[index]


def _mesh(spec: str) -> str:
    return dedent(f"""\
        apiVersion: gossamer.dev/v1alpha1
        kind: Mesh
        metadata: {{name: mesh}}
        spec: {spec}
        ---
        """)


def _policy(name: str, target: str, spec: str) -> str:
    return dedent(f"""\
        apiVersion: gossamer.dev/v1alpha1
        kind: DestinationPolicy
        metadata: {{name: {name}}}
        spec:
          targetRef: {target}
          {spec}
        ---
        """)


# --- outlier detection and the cluster's other settings -------------------------------------------


def test_gateway_error_detection_is_on_by_default() -> None:
    s = _translate("")
    assert all(c.outlier_detection == snap.OutlierDetection() for c in s.clusters)
    assert snap.OutlierDetection().consecutive_gateway_errors == 5
    assert all(c.health_check is None for c in s.clusters)
    # Envoy's default panic threshold comes with it: a lone ejected replica still gets traffic.
    assert all(
        c.load_balancer == snap.LoadBalancer(policy="LEAST_REQUEST", panic_threshold=50.0)
        for c in s.clusters
    )
    assert s.rate_limits is None


def test_mesh_default_can_turn_it_off() -> None:
    s = _translate(_mesh("{defaults: {outlierDetection: {consecutiveGatewayErrors: 0}}}"))
    assert all(c.outlier_detection is None for c in s.clusters)


def test_mesh_default_reaches_every_cluster() -> None:
    s = _translate(_mesh("{defaults: {outlierDetection: {consecutive5xxErrors: 7}}}"))
    expected = snap.OutlierDetection(consecutive_5xx=7)  # the gateway detector's default: 5
    assert {c.name: c.outlier_detection for c in s.clusters} == {
        "api.default": expected,
        "api.default.v1": expected,
        "api.default.v2": expected,
        "web.default": expected,
    }


def test_fields_fold_mesh_then_service_then_subset() -> None:
    s = _translate(
        _mesh("{defaults: {outlierDetection: {interval: 20s, maxEjectionPercent: 30}}}")
        + _policy(
            "api",
            "{name: api}",
            "outlierDetection: {consecutive5xxErrors: 4, interval: 5s, minHealthPercent: 40}",
        )
        + _policy(
            "api-v2",
            "{name: api, subset: v2}",
            "outlierDetection: {consecutiveGatewayErrors: 0, successRate: {minimumHosts: 2}}",
        )
    )
    assert _cluster(s, "web.default").outlier_detection == snap.OutlierDetection(
        interval=20.0, max_ejection_percent=30.0
    )
    service_level = snap.OutlierDetection(
        consecutive_5xx=4, interval=5.0, max_ejection_percent=30.0
    )
    assert _cluster(s, "api.default").outlier_detection == service_level
    assert _cluster(s, "api.default.v1").outlier_detection == service_level
    assert _cluster(s, "api.default.v2").outlier_detection == snap.OutlierDetection(
        consecutive_5xx=4,
        consecutive_gateway_errors=None,
        interval=5.0,
        max_ejection_percent=30.0,
        success_rate=snap.SuccessRateEjection(minimum_hosts=2),
    )
    # minHealthPercent is the balancer's panic threshold, inherited by the subsets.
    assert _cluster(s, "api.default").load_balancer.panic_threshold == 40.0
    assert _cluster(s, "api.default.v2").load_balancer.panic_threshold == 40.0
    assert _cluster(s, "web.default").load_balancer.panic_threshold == 50.0  # the default


def test_all_detectors_off_is_none_but_the_panic_threshold_stays() -> None:
    s = _translate(
        _mesh("{defaults: {outlierDetection: {consecutiveGatewayErrors: 3}}}")
        + _policy(
            "api",
            "{name: api}",
            "outlierDetection: {consecutiveGatewayErrors: 0, minHealthPercent: 25}",
        )
    )
    assert _cluster(s, "api.default").outlier_detection is None
    assert _cluster(s, "api.default").load_balancer.panic_threshold == 25.0
    assert _cluster(s, "web.default").outlier_detection == snap.OutlierDetection(
        consecutive_gateway_errors=3
    )


def test_a_null_success_rate_turns_the_mesh_default_off() -> None:
    s = _translate(
        _mesh("{defaults: {outlierDetection: {successRate: {requestVolume: 10}}}}")
        + _policy("api", "{name: api}", "outlierDetection: {successRate: null}")
    )
    assert _cluster(s, "web.default").outlier_detection == snap.OutlierDetection(
        success_rate=snap.SuccessRateEjection(request_volume=10)
    )
    assert _cluster(s, "api.default").outlier_detection == snap.OutlierDetection()


def test_ejection_ceiling_from_another_layer_never_below_the_base() -> None:
    s = _translate(
        _mesh("{defaults: {outlierDetection: {maxEjectionTime: 20s}}}")
        + _policy("api", "{name: api}", "outlierDetection: {baseEjectionTime: 1m}")
    )
    detection = _cluster(s, "api.default").outlier_detection
    assert detection is not None
    assert (detection.base_ejection_time, detection.max_ejection_time) == (60.0, 60.0)


def test_breaker_limits_locality_and_health_check() -> None:
    s = _translate(
        _policy(
            "api",
            "{name: api}",
            "connectionPool: {maxRequests: 7, maxRetries: 2}\n"
            "          loadBalancer: {policy: ROUND_ROBIN, localityLbSetting: {enabled: false}}\n"
            "          healthCheck: {path: /ready, interval: 3s, unhealthyThreshold: 1}",
        )
    )
    api = _cluster(s, "api.default.v1")
    assert (api.connection_pool.max_requests, api.connection_pool.max_retries) == (7, 2)
    assert api.load_balancer == snap.LoadBalancer(
        policy="ROUND_ROBIN", locality=False, panic_threshold=50.0
    )
    assert api.health_check == snap.HealthCheck(path="/ready", interval=3.0, unhealthy_threshold=1)
    web = _cluster(s, "web.default")
    assert web.load_balancer.locality
    assert web.health_check is None


# --- the proxy's zone -----------------------------------------------------------------------------


def test_the_proxy_zone_comes_from_its_registration() -> None:
    regs = [
        Registration(proxy_id="web-0", service="web", inbound="127.0.0.1:1", zone="zone-b"),
        Registration(proxy_id="api-0", service="api", inbound="127.0.0.1:2", zone="zone-a"),
    ]
    assert _translate("", regs).proxy.zone == "zone-b"
    told = snap.ProxyIdentity(proxy_id="web-0", service="web", zone="zone-c")
    assert _translate("", regs, told).proxy.zone == "zone-c"
    assert _translate("", []).proxy.zone is None


# --- faults, mirrors and fallbacks ----------------------------------------------------------------

ROUTE = dedent("""\
    apiVersion: gossamer.dev/v1alpha1
    kind: HTTPRoute
    metadata: {name: api}
    spec:
      parentRefs: [{name: api}]
      rules:
        - matches: [{path: {value: /a}}, {path: {value: /b}}]
          backendRefs: [{name: api, subset: v1}]
          filters:
            - type: Fault
              fault: {abort: {httpStatus: 500}}
            - type: RequestMirror
              requestMirror: {backendRef: {name: ghost, namespace: elsewhere}, percent: 30}
          fallback:
            backendRef: {name: phantom}
            response: {status: 503, body: busy}
        - backendRefs: [{name: api, subset: v2}]
    ---
    """)


def test_faults_mirrors_and_fallbacks_reach_the_rule() -> None:
    s = _translate(ROUTE)
    rule = _rule(s, "api.default")
    assert rule.name == "default/api#0"
    assert len(rule.matches) == 2
    assert rule.filters == [
        snap.FaultFilter(fault=snap.Fault(abort=snap.FaultAbort(http_status=500))),
        snap.RequestMirrorFilter(
            request_mirror=snap.RequestMirror(cluster="ghost.elsewhere", percentage=30.0)
        ),
    ]
    assert rule.fallback == snap.Fallback(
        backend=snap.WeightedCluster(cluster="phantom.default"),
        response=snap.StaticResponse(status=503, body="busy"),
    )
    assert _rule(s, "api.default", 1).fallback is None


def test_mirror_and_fallback_services_get_clusters_even_when_missing() -> None:
    """Like a backendRef to an unknown service: an empty cluster, never a dangling name."""
    for proxy in (
        PROXY,
        snap.ProxyIdentity(proxy_id="p", service="api", labels={PUBLISH_LABEL: "api"}),
    ):
        s = _translate(ROUTE, proxy=proxy)
        names = {c.name for c in s.clusters}
        assert {"ghost.elsewhere", "phantom.default"} <= names
        assert _cluster(s, "ghost.elsewhere").endpoints == []
        for v in s.virtual_hosts:
            for r in v.rules:
                for f in r.filters:
                    if isinstance(f, snap.RequestMirrorFilter):
                        assert f.request_mirror.cluster in names
                if r.fallback is not None and r.fallback.backend is not None:
                    assert r.fallback.backend.cluster in names


# --- rate limits ----------------------------------------------------------------------------------


def _limits(target: str, limits: str, name: str = "limits", namespace: str = "default") -> str:
    return dedent(f"""\
        apiVersion: gossamer.dev/v1alpha1
        kind: RateLimitPolicy
        metadata: {{name: {name}, namespace: {namespace}}}
        spec:
          targetRef: {target}
          limits: {limits}
        ---
        """)


def test_inbound_limits_are_the_own_service_s() -> None:
    s = _translate(
        _limits(
            "{kind: Service, name: web}",
            "[{requests: 5, per: 1s}, {name: by-user, requests: 9, per: 1m, burst: 3,"
            " keys: [{type: Header, name: X-User}]}]",
        )
        + _limits("{kind: Service, name: api}", "[{requests: 1, per: 1s}]", name="api-limits")
    )
    assert s.rate_limits == snap.RateLimits(
        inbound=[
            snap.RateLimitRule(name="default/limits#0", requests=5, period=1.0),
            snap.RateLimitRule(
                name="default/limits#by-user",
                requests=9,
                period=60.0,
                burst=3,
                keys=[snap.RateLimitKey(type="Header", name="x-user")],
            ),
        ]
    )


def test_outbound_limits_follow_the_route_rules_this_proxy_routes_by() -> None:
    text = ROUTE + _limits("{kind: HTTPRoute, name: api}", "[{requests: 5, per: 1s}]")
    s = _translate(text)
    assert s.rate_limits is not None
    assert s.rate_limits.inbound == []
    (rule,) = s.rate_limits.outbound
    route_rules = {r.name for v in s.virtual_hosts for r in v.rules}
    assert rule.route_rules == ["default/api#0", "default/api#1"]
    assert set(rule.route_rules) <= route_rules
    # A front door for web routes by no rule of api's route: the limit is not its to enforce.
    door = snap.ProxyIdentity(proxy_id="door", service="web", labels={PUBLISH_LABEL: "web"})
    assert _translate(text, proxy=door).rate_limits is None


def test_global_limits_carry_the_mesh_redis_and_only_they_do() -> None:
    redis = "{rateLimit: {redis: {address: '127.0.0.1:6390', keyPrefix: t}}}"
    local = _limits("{kind: Service, name: web}", "[{requests: 5, per: 1s}]")
    assert _translate(_mesh(redis) + local).rate_limits == snap.RateLimits(
        inbound=[snap.RateLimitRule(name="default/limits#0", requests=5, period=1.0)]
    )
    global_ = _limits(
        "{kind: Service, name: web}",
        "[{requests: 5, per: 1s, scope: Global, failureMode: FailClosed}]",
    )
    limits = _translate(_mesh(redis) + global_).rate_limits
    assert limits is not None
    assert limits.redis == snap.RedisServer(address="127.0.0.1:6390", key_prefix="t")
    assert (limits.inbound[0].scope, limits.inbound[0].failure_mode) == ("Global", "FailClosed")


def test_a_global_limit_without_redis_is_counted_locally() -> None:
    """Validation refuses it; a Mesh that lost its Redis later must not freeze the proxies."""
    limits = _translate(
        _limits("{kind: Service, name: web}", "[{requests: 5, per: 1s, scope: Global}]")
    ).rate_limits
    assert limits is not None
    assert limits.redis is None
    assert limits.inbound[0].scope == "Local"


def test_limits_of_another_namespace_do_not_apply() -> None:
    s = _translate(
        dedent("""\
        apiVersion: gossamer.dev/v1alpha1
        kind: Service
        metadata: {name: web, namespace: other}
        ---
        """)
        + _limits("{kind: Service, name: web}", "[{requests: 5, per: 1s}]", namespace="other")
    )
    assert s.rate_limits is None


def test_nothing_configured_adds_only_the_default_outlier_detection() -> None:
    """Nothing of issue 4 configured: the Snapshot holds none of its fields but the default
    outlier detection, which is all defaults (an empty object on the wire)."""
    body = snap.encode(_translate(ROUTE.split("      filters:")[0] + "---\n"))
    for key in (b"healthCheck", b"rateLimits", b"zone", b"fallback"):
        assert key not in body
    assert b'"outlierDetection":{}' in body
    assert b'"panicThreshold":50.0' in body
