"""Issue 4's configuration: outlier detection, health checks, breaker limits, zones, faults,
mirrors, fallbacks and RateLimitPolicy load with their values; bad input is refused at its line."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from gossamer.config import models
from gossamer.config.errors import ConfigError
from gossamer.config.loader import load_files, load_objects, load_text
from gossamer.config.validate import check, check_against, validate_apply
from gossamer.control.resources import decode_resource, encode_resource

FIXTURE = Path(__file__).parent / "fixtures" / "resilience.yaml"


def _by_key() -> dict[str, models.AnyResource]:
    return {r.key: r.resource for r in load_files([FIXTURE])}


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(dedent(text), "mesh.yaml")
    return [str(p) for p in info.value.problems]


def _cross(*parts: str) -> list[str]:
    text = "".join(dedent(part) for part in parts)
    return [str(p) for p in check(load_text(text, "mesh.yaml"))]


# --- the contract's YAML loads with its values ----------------------------------------------------


def test_the_fixture_is_valid_as_a_mesh() -> None:
    assert check(load_files([FIXTURE])) == []


def test_mesh_outlier_default_and_redis() -> None:
    mesh = _by_key()["Mesh/default/shop"]
    assert isinstance(mesh, models.Mesh)
    od = mesh.spec.defaults.outlier_detection
    assert od is not None
    assert (od.consecutive_gateway_errors, od.consecutive_5xx_errors) == (5, 0)
    assert (od.interval, od.base_ejection_time, od.max_ejection_time) == (10.0, 30.0, 300.0)
    assert od.max_ejection_percent == 10
    redis = mesh.spec.rate_limit.redis
    assert redis == models.RedisSpec(address="127.0.0.1:6379", timeout=0.25, key_prefix="gossamer")


def test_zones_on_services_and_subsets() -> None:
    catalog = _by_key()["Service/default/catalog"]
    assert isinstance(catalog, models.Service)
    assert catalog.spec.zones == ["zone-a", "zone-b"]
    assert [s.zones for s in catalog.spec.subsets] == [[], ["zone-c"]]


def test_destination_policy_resilience_fields() -> None:
    policy = _by_key()["DestinationPolicy/default/inventory"]
    assert isinstance(policy, models.DestinationPolicy)
    spec = policy.spec
    assert spec.load_balancer is not None
    assert spec.load_balancer.locality_lb_setting.enabled is True
    assert spec.connection_pool is not None
    assert (spec.connection_pool.max_requests, spec.connection_pool.max_retries) == (50, 5)
    od = spec.outlier_detection
    assert od is not None
    assert (od.consecutive_5xx_errors, od.consecutive_gateway_errors, od.min_health_percent) == (
        5,
        3,
        50,
    )
    assert od.success_rate == models.SuccessRateSpec(
        minimum_hosts=3, request_volume=50, stdev_factor=1.9
    )
    assert spec.health_check == models.HealthCheckSpec(
        path="/healthz", interval=2.0, timeout=1.0, healthy_threshold=2, unhealthy_threshold=3
    )


def test_route_fault_mirror_and_fallback() -> None:
    route = _by_key()["HTTPRoute/default/catalog"]
    assert isinstance(route, models.HTTPRoute)
    rule = route.spec.rules[0]
    fault, mirror = rule.filters[0].fault, rule.filters[1].request_mirror
    assert fault is not None
    assert fault.delay == models.HTTPFaultDelay(fixed_delay=0.2, percentage=10)
    assert fault.abort == models.HTTPFaultAbort(http_status=503, percentage=5)
    assert [(h.name, h.value) for h in fault.headers] == [("x-chaos", "on")]
    assert mirror is not None
    assert (mirror.backend_ref.name, mirror.backend_ref.subset, mirror.percentage) == (
        "catalog",
        "v2",
        10.0,
    )
    fallback = rule.fallback
    assert fallback is not None
    assert fallback.max_stale == 60.0
    assert fallback.backend_ref is not None
    assert fallback.backend_ref.name == "catalog-lite"
    assert fallback.response is not None
    assert (fallback.response.status, fallback.response.body) == (200, '{"items":[]}')


def test_rate_limit_policy() -> None:
    policy = _by_key()["RateLimitPolicy/default/catalog-limits"]
    assert isinstance(policy, models.RateLimitPolicy)
    first, second = policy.spec.limits
    assert (first.name, first.requests, first.per, first.burst, first.scope) == (
        "per-caller",
        100,
        1.0,
        20,
        "Local",
    )
    assert first.failure_mode == "FailOpen"
    assert [k.type for k in first.keys] == ["SourceIdentity"]
    assert (second.scope, second.failure_mode, second.per) == ("Global", "FailClosed", 60.0)
    assert [policy.rule_name(i) for i in (0, 1)] == [
        "default/catalog-limits#per-caller",
        "default/catalog-limits#1",
    ]


def test_mirror_fraction_is_a_percentage() -> None:
    mirror = models.HTTPRequestMirrorFilter.model_validate(
        {"backendRef": {"name": "a"}, "fraction": {"numerator": 1, "denominator": 3}}
    )
    assert mirror.percentage == pytest.approx(100 / 3)
    whole = models.HTTPRequestMirrorFilter.model_validate({"backendRef": {"name": "a"}})
    assert whole.percentage == 100.0


def test_stored_form_round_trips() -> None:
    """What the control plane stores decodes to the same resources (the API accepts the kind)."""
    for resource in _by_key().values():
        assert decode_resource(encode_resource(resource)) == resource
    # Outlier detection folds by the fields written: the stored form keeps exactly those.
    policy = decode_resource(encode_resource(_by_key()["DestinationPolicy/default/inventory"]))
    assert isinstance(policy, models.DestinationPolicy)
    assert policy.spec.outlier_detection is not None
    assert "max_ejection_time" in policy.spec.outlier_detection.model_fields_set
    mesh = decode_resource(encode_resource(_by_key()["Mesh/default/shop"]))
    assert isinstance(mesh, models.Mesh)
    assert mesh.spec.defaults.outlier_detection is not None
    assert "min_health_percent" not in mesh.spec.defaults.outlier_detection.model_fields_set


# --- bad input, at its line -----------------------------------------------------------------------


def test_bad_outlier_detection_and_health_check() -> None:
    assert _problems("""\
        apiVersion: gossamer.dev/v1alpha1
        kind: DestinationPolicy
        metadata: {name: p}
        spec:
          targetRef: {name: inventory}
          outlierDetection:
            consecutive5xxErrors: -1
            interval: 0s
            maxEjectionPercent: 101
            successRate: {minimumHosts: 0, stdevFactor: 0}
          healthCheck: {path: healthz, healthyThreshold: 0}
          connectionPool: {maxRequests: 0, maxRetries: -1}
          loadBalancer: {localityLbSetting: {enabled: "yes"}}
        """) == [
        "mesh.yaml:7:5: spec.outlierDetection.consecutive5xxErrors: must be >= 0",
        "mesh.yaml:8:5: spec.outlierDetection.interval: must be more than 0s: a zero duration "
        "is not allowed here",
        "mesh.yaml:9:5: spec.outlierDetection.maxEjectionPercent: must be <= 100.0",
        "mesh.yaml:10:19: spec.outlierDetection.successRate.minimumHosts: must be >= 1",
        "mesh.yaml:10:36: spec.outlierDetection.successRate.stdevFactor: must be > 0.0",
        "mesh.yaml:11:17: spec.healthCheck.path: path 'healthz' must start with '/'",
        "mesh.yaml:11:32: spec.healthCheck.healthyThreshold: must be >= 1",
        "mesh.yaml:12:20: spec.connectionPool.maxRequests: must be >= 1",
        "mesh.yaml:12:36: spec.connectionPool.maxRetries: must be >= 0",
        "mesh.yaml:13:38: spec.loadBalancer.localityLbSetting.enabled: must be true or false, "
        "not a string",
    ]


def test_ejection_times_and_unknown_fields() -> None:
    assert _problems("""\
        apiVersion: gossamer.dev/v1alpha1
        kind: Mesh
        metadata: {name: m}
        spec:
          defaults:
            outlierDetection: {baseEjectionTime: 1m, maxEjectionTime: 10s}
          rateLimit:
            redis: {address: localhost, keyPrefix: "a b", timeot: 1s}
        """) == [
        "mesh.yaml:6:5: spec.defaults.outlierDetection: maxEjectionTime (10s) must not be "
        "shorter than baseEjectionTime (60s)",
        "mesh.yaml:8:13: spec.rateLimit.redis.address: 'localhost' is not an address: write "
        "host:port, e.g. 127.0.0.1:6379",
        "mesh.yaml:8:33: spec.rateLimit.redis.keyPrefix: 'a b': use 1 to 64 letters, digits, "
        "'_', '.', ':' and '-' for a key prefix",
        "mesh.yaml:8:51: spec.rateLimit.redis.timeot: unknown field 'timeot' (did you mean "
        "'timeout'?)",
    ]


def test_bad_zones() -> None:
    assert _problems("""\
        apiVersion: gossamer.dev/v1alpha1
        kind: Service
        metadata: {name: s}
        spec:
          zones: [zone-a, "-bad"]
          subsets: [{name: v1, zones: [ok, "x y"]}]
        """) == [
        "mesh.yaml:5:19: spec.zones[1]: '-bad' is not a valid zone: use letters, digits, '-', "
        "'.' and '_', starting and ending with a letter or digit (at most 63 characters)",
        "mesh.yaml:6:36: spec.subsets[0].zones[1]: 'x y' is not a valid zone: use letters, "
        "digits, '-', '.' and '_', starting and ending with a letter or digit (at most 63 "
        "characters)",
    ]


def test_bad_faults_mirrors_and_fallbacks() -> None:
    assert _problems("""\
        apiVersion: gossamer.dev/v1alpha1
        kind: HTTPRoute
        metadata: {name: r}
        spec:
          parentRefs: [{name: s}]
          rules:
            - filters:
                - type: Fault
                  fault: {}
                - type: Fault
                  fault: {delay: {fixedDelay: 0s}, abort: {httpStatus: 200, percentage: 101}}
                - type: RequestMirror
                  requestMirror: {backendRef: {name: s}, percent: 10, fraction: {numerator: 1}}
                - type: RequestMirror
                  requestMirror: {backendRef: {name: s}, fraction: {numerator: 5, denominator: 3}}
                - type: RequestMirror
                  fault: {abort: {httpStatus: 503}}
            - fallback: {maxEntries: 3, backendRef: {name: s}}
            - fallback: {}
            - fallback: {response: {status: 100, headers: [{name: Content-Length, value: "3"}]}}
            - backendRefs: [{name: s, filters: [{type: Fault, fault: {abort: {httpStatus: 503}}}]}]
            - filters: [{type: RequestRedirect, requestRedirect: {hostname: x}}]
              fallback: {response: {status: 503}}
            - filters:
                - {type: Fault, fault: {abort: {httpStatus: 503}}}
                - {type: Fault, fault: {delay: {fixedDelay: 1s}}}
        """) == [
        "mesh.yaml:9:11: spec.rules[0].filters[0].fault: a fault needs delay, abort or both",
        "mesh.yaml:11:27: spec.rules[0].filters[1].fault.delay.fixedDelay: must be more than "
        "0s: a zero duration is not allowed here",
        "mesh.yaml:11:52: spec.rules[0].filters[1].fault.abort.httpStatus: must be >= 400",
        "mesh.yaml:11:69: spec.rules[0].filters[1].fault.abort.percentage: must be <= 100.0",
        "mesh.yaml:13:63: spec.rules[0].filters[2].requestMirror.fraction: set percent or "
        "fraction, not both",
        "mesh.yaml:15:50: spec.rules[0].filters[3].requestMirror.fraction: numerator (5) must "
        "not be greater than denominator (3)",
        "mesh.yaml:16:11: spec.rules[0].filters[4]: type RequestMirror needs requestMirror",
        "mesh.yaml:18:18: spec.rules[1].fallback.maxEntries: is only used with maxStale (it "
        "bounds the responses kept for it)",
        "mesh.yaml:19:7: spec.rules[2].fallback: a fallback needs at least one of maxStale, "
        "backendRef or response",
        "mesh.yaml:20:29: spec.rules[3].fallback.response.status: must be >= 200",
        "mesh.yaml:20:42: spec.rules[3].fallback.response.headers: [0]: 'Content-Length' is set "
        "by the proxy from the body; leave it out",
        "mesh.yaml:21:31: spec.rules[4].backendRefs[0].filters: [0]: Fault is not supported on "
        "a backendRef (put it on the rule)",
        "mesh.yaml:23:7: spec.rules[5].fallback: a rule that redirects answers itself: it has "
        "no use for a fallback",
        "mesh.yaml:24:7: spec.rules[6].filters: only one Fault filter is allowed",
    ]


def test_bad_rate_limit_policies() -> None:
    assert _problems("""\
        apiVersion: gossamer.dev/v1alpha1
        kind: RateLimitPolicy
        metadata: {name: rl}
        spec:
          targetRef: {kind: Gateway, name: s}
          limits:
            - name: "7"
              keys: [{type: Header}, {type: Route, name: x}]
              requests: 0
              per: 0s
            - {name: a, requests: 1}
            - {requests: 1, per: 1s, failureMode: FailClosed}
            - {requests: 1, per: 1s, keys: [{type: Header, name: X-A}, {type: Header, name: x-a}]}
        ---
        apiVersion: gossamer.dev/v1alpha1
        kind: RateLimitPolicy
        metadata: {name: rl2}
        spec:
          targetRef: {kind: Service, name: s}
          limits: []
        ---
        apiVersion: gossamer.dev/v1alpha1
        kind: RateLimitPolicy
        metadata: {name: rl3}
        spec:
          targetRef: {kind: Service, name: s}
          limits: [{name: a, requests: 1, per: 1s}, {name: a, requests: 2, per: 1s}]
        """) == [
        "mesh.yaml:5:15: spec.targetRef.kind: must be one of: Service, HTTPRoute",
        "mesh.yaml:7:7: spec.limits[0].name: '7' would read as a limit's index: use a name "
        "with a letter",
        "mesh.yaml:8:14: spec.limits[0].keys[0]: type Header needs name (the header whose value "
        "tells buckets apart)",
        "mesh.yaml:8:30: spec.limits[0].keys[1]: type Route takes no name (only type Header does)",
        "mesh.yaml:9:7: spec.limits[0].requests: must be >= 1",
        "mesh.yaml:10:7: spec.limits[0].per: must be more than 0s: a zero duration is not "
        "allowed here",
        "mesh.yaml:11:7: spec.limits[1].per: required field is missing",
        "mesh.yaml:12:30: spec.limits[2].failureMode: is only used with scope Global (a Local "
        "limit needs no Redis)",
        "mesh.yaml:13:30: spec.limits[3].keys: [1]: the same key twice",
        "mesh.yaml:20:3: spec.limits: must not be empty",
        "mesh.yaml:27:3: spec.limits: duplicate limit name 'a'",
    ]


# --- across resources -----------------------------------------------------------------------------

CATALOG = """\
    apiVersion: gossamer.dev/v1alpha1
    kind: Service
    metadata: {name: catalog}
    spec: {subsets: [{name: v1}]}
    ---
    """


def test_mirror_and_fallback_services_must_exist() -> None:
    assert _cross(
        CATALOG,
        """\
    apiVersion: gossamer.dev/v1alpha1
    kind: HTTPRoute
    metadata: {name: catalog}
    spec:
      parentRefs: [{name: catalog}]
      rules:
        - filters:
            - type: RequestMirror
              requestMirror: {backendRef: {name: catalog, subset: v2}}
          fallback: {backendRef: {name: catalog-lte, port: 9}}
    """,
    ) == [
        "mesh.yaml:14:55: spec.rules[0].filters[0].requestMirror.backendRef.subset: service "
        "'catalog' has no subset 'v2' (its subsets: v1)",
        "mesh.yaml:15:31: spec.rules[0].fallback.backendRef.name: unknown service 'catalog-lte' "
        "(did you mean 'catalog'?)",
    ]


POLICIES = """\
    apiVersion: gossamer.dev/v1alpha1
    kind: RateLimitPolicy
    metadata: {name: rl}
    spec:
      targetRef: {kind: HTTPRoute, name: catalg, namespace: other}
      limits: [{requests: 1, per: 1s}]
    ---
    apiVersion: gossamer.dev/v1alpha1
    kind: RateLimitPolicy
    metadata: {name: rl2}
    spec:
      targetRef: {kind: HTTPRoute, name: catalg}
      limits:
        - {name: per-user, requests: 1, per: 1s, scope: Global}
        - {requests: 1, per: 1s, scope: Global}
    ---
    apiVersion: gossamer.dev/v1alpha1
    kind: RateLimitPolicy
    metadata: {name: rl3}
    spec:
      targetRef: {kind: Service, name: catalgo}
      limits: [{requests: 1, per: 1s}]
    ---
    apiVersion: gossamer.dev/v1alpha1
    kind: HTTPRoute
    metadata: {name: catalog}
    spec:
      parentRefs: [{name: catalog}]
    """


def test_rate_limit_targets_and_global_scope() -> None:
    assert _cross(CATALOG, POLICIES) == [
        "mesh.yaml:10:46: spec.targetRef.namespace: 'other': a RateLimitPolicy applies only in "
        "its own namespace ('default'); create it there",
        "mesh.yaml:17:32: spec.targetRef.name: unknown HTTPRoute 'catalg' (did you mean "
        "'catalog'?)",
        "mesh.yaml:19:46: spec.limits[0].scope: limit 'per-user' is Global, but the Mesh sets "
        "no spec.rateLimit.redis to share its counts in (add it, or use scope Local)",
        "mesh.yaml:20:30: spec.limits[1].scope: limit #1 is Global, but the Mesh sets no "
        "spec.rateLimit.redis to share its counts in (add it, or use scope Local)",
        "mesh.yaml:26:30: spec.targetRef.name: unknown service 'catalgo' (did you mean 'catalog'?)",
    ]


def test_a_mesh_with_redis_allows_global_limits() -> None:
    mesh = """\
    apiVersion: gossamer.dev/v1alpha1
    kind: Mesh
    metadata: {name: m}
    spec: {rateLimit: {redis: {address: "127.0.0.1:6379"}}}
    ---
    """
    problems = _cross(mesh, CATALOG, POLICIES)
    assert not [p for p in problems if "Global" in p]


def test_a_mesh_dropping_redis_names_the_stored_global_limits() -> None:
    stored = [r.resource for r in load_text(dedent(CATALOG) + dedent(POLICIES))]
    mesh = load_text(
        "apiVersion: gossamer.dev/v1alpha1\nkind: Mesh\nmetadata: {name: m}\n", "m.yaml"
    )
    assert [str(p) for p in check_against(mesh, stored)] == [
        "m.yaml:1:1: spec.rateLimit.redis: required by the Global limits of "
        "RateLimitPolicy/default/rl2 'per-user', RateLimitPolicy/default/rl2 #1",
    ]


def test_apply_accepts_the_new_kind() -> None:
    body = {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": "rl"},
        "spec": {
            "targetRef": {"kind": "Service", "name": "catalog"},
            "limits": [{"requests": 10, "per": "1s", "keys": [{"type": "ClientAddress"}]}],
        },
    }
    existing = [r.resource for r in load_text(dedent(CATALOG))]
    (loaded,) = validate_apply([body], existing)
    assert isinstance(loaded.resource, models.RateLimitPolicy)
    with pytest.raises(ConfigError) as info:
        validate_apply([{**body, "spec": {**body["spec"], "limits": [{"requests": 1}]}}], existing)
    assert [str(p) for p in info.value.problems] == [
        "request: resources[0].spec.limits[0].per: required field is missing"
    ]
    assert load_objects([body])[0].key == "RateLimitPolicy/default/rl"


def test_a_bodiless_status_cannot_have_a_fallback_body() -> None:
    errors = _problems(
        """
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata: {name: a}
spec:
  parentRefs: [{name: a}]
  rules:
    - backendRefs: [{name: a}]
      fallback:
        response: {status: 204, body: "x"}
"""
    )
    assert any("a 204 response has no body" in e for e in errors), errors
