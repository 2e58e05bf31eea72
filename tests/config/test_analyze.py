"""`config.analyze`: each rule, on files (with file:line) and on a live mesh's endpoints."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent, indent

import pytest

from gossamer.config import models
from gossamer.config.analyze import (
    RULES,
    Endpoint,
    Finding,
    analyze,
    at_least,
    from_problems,
    worst,
)
from gossamer.config.loader import Loaded, collect_files, collect_objects, collect_text
from gossamer.config.validate import STORED

SERVICES = """\
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: pricing}
spec:
  subsets:
    - {name: v1, labels: {version: v1}, replicas: 2}
    - {name: v2, labels: {version: v2}, replicas: 0}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: web}
---
"""


def run(text: str, endpoints: list[Endpoint] | None = None) -> tuple[str, list[Finding]]:
    """Analyze SERVICES + `text` as the file mesh.yaml; the text is returned for line lookups."""
    full = SERVICES + dedent(text)
    loaded, problems = collect_text(full, "mesh.yaml")
    assert problems == [], [str(p) for p in problems]
    return full, analyze(loaded, endpoints)


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """The 1-based line of the nth line holding `needle`."""
    hits = [i for i, line in enumerate(text.splitlines(), start=1) if needle in line]
    assert len(hits) >= nth, f"{needle!r} is not in the text {nth} time(s)"
    return hits[nth - 1]


def only(findings: list[Finding], code: str) -> list[Finding]:
    return [f for f in findings if f.code == code]


def route(rules: str, name: str = "pricing", parent: str = "pricing") -> str:
    head = f"""\
    apiVersion: gossamer.dev/v1alpha1
    kind: HTTPRoute
    metadata: {{name: {name}}}
    spec:
      parentRefs: [{{name: {parent}}}]
      rules:
    """
    return dedent(head) + indent(dedent(rules), "    ")


# --- endpoints ------------------------------------------------------------------------------------


def test_a_weighted_backend_with_no_replicas_is_an_error_at_its_line() -> None:
    text, found = run(
        route("""\
          - backendRefs:
              - {name: pricing, subset: v1, weight: 90}
              - {name: pricing, subset: v2, weight: 10}
        """)
    )
    [f] = only(found, "GSM001")
    assert f.severity == "error"
    assert f.resource == "HTTPRoute/default/pricing"
    assert f.path == "spec.rules[0].backendRefs[1]"
    assert (f.file, f.line) == ("mesh.yaml", line_of(text, "subset: v2, weight: 10"))
    assert "10% of its requests" in f.message
    assert "subset 'v2'" in f.message
    assert "replicas" in f.hint
    assert f.where == f"mesh.yaml:{f.line} spec.rules[0].backendRefs[1]"


def test_a_backend_with_weight_zero_and_no_replicas_is_fine() -> None:
    _, found = run(
        route("""\
          - backendRefs:
              - {name: pricing, subset: v1, weight: 100}
              - {name: pricing, subset: v2, weight: 0}
        """)
    )
    assert only(found, "GSM001") == []
    assert only(found, "GSM002") == []


def test_a_rule_without_backends_goes_to_its_parent_and_is_checked() -> None:
    rules = "- matches: [{path: {type: PathPrefix, value: /api}}]\n"
    _, found = run(route(rules, name="web", parent="web"))
    assert only(found, "GSM001") == []  # web has 1 replica by default
    text = SERVICES.replace("metadata: {name: web}", "metadata: {name: web}\nspec: {replicas: 0}")
    loaded, problems = collect_text(text + route(rules, name="web", parent="web"), "mesh.yaml")
    assert problems == []
    [f] = only(analyze(loaded), "GSM001")
    assert f.path == "spec.rules[0]"
    assert "goes to its parent" in f.message


def test_only_zero_weight_backends_have_endpoints() -> None:
    _, found = run(
        route("""\
          - backendRefs:
              - {name: pricing, subset: v1, weight: 0}
              - {name: pricing, subset: v2, weight: 5}
        """)
    )
    [f] = only(found, "GSM002")
    assert f.path == "spec.rules[0].backendRefs"
    assert "pricing/v1" in f.message
    assert "weight 0" in f.message
    assert only(found, "GSM001")[0].path == "spec.rules[0].backendRefs[1]"


def test_weights_summing_to_zero_in_stored_data_are_reported() -> None:
    """The models refuse all-zero weights now; a resource stored before that still gets told."""
    loaded, _ = collect_text(SERVICES, "mesh.yaml")
    route_loaded, problems = collect_text(
        route("- backendRefs: [{name: pricing, subset: v1, weight: 1}]\n"), "route.yaml"
    )
    assert problems == []
    resource = route_loaded[0].resource
    assert isinstance(resource, models.HTTPRoute)
    rule = resource.spec.rules[0]
    zero = rule.backend_refs[0].model_copy(update={"weight": 0})
    spec = resource.spec.model_copy(
        update={"rules": [rule.model_copy(update={"backend_refs": [zero]})]}
    )
    forged = Loaded(resource.model_copy(update={"spec": spec}), "route.yaml")
    [f] = only(analyze([*loaded, forged]), "GSM002")
    assert "every backendRef has weight 0" in f.message


def test_a_service_with_no_replicas_and_no_route_warns() -> None:
    text = SERVICES.replace("metadata: {name: web}", "metadata: {name: web}\nspec: {replicas: 0}")
    loaded, problems = collect_text(text, "mesh.yaml")
    assert problems == []
    [f] = only(analyze(loaded), "GSM004")
    assert f.resource == "Service/default/web"
    assert f.severity == "warning"
    # pricing has subsets with replicas: no finding for it.
    _, found = run("")
    assert only(found, "GSM004") == []


def test_a_virtual_service_with_a_route_elsewhere_is_fine() -> None:
    text = SERVICES.replace("metadata: {name: web}", "metadata: {name: web}\nspec: {replicas: 0}")
    text += dedent(route("- backendRefs: [{name: pricing}]\n", name="web", parent="web"))
    loaded, problems = collect_text(text, "mesh.yaml")
    assert problems == [], [str(p) for p in problems]
    found = analyze(loaded)
    assert only(found, "GSM004") == []
    assert only(found, "GSM001") == []


def test_live_endpoints_replace_replicas() -> None:
    """On a live mesh a backend's endpoints are the registry's: none, or none healthy."""
    rules = """\
      - backendRefs:
          - {name: pricing, subset: v1, weight: 1}
    """
    _, found = run(route(rules), endpoints=[])
    [f] = only(found, "GSM001")
    assert "no registered endpoint" in f.message
    assert f.path == "spec.rules[0].backendRefs[0]"
    sick = [Endpoint("pricing", labels={"version": "v1"}, healthy=False)]
    _, found = run(route(rules), endpoints=sick)
    assert only(found, "GSM001") == []
    warned = {(f.resource, f.path) for f in only(found, "GSM003")}
    assert ("Service/default/pricing", "spec.subsets[0]") in warned
    assert ("Service/default/pricing", "metadata.name") in warned
    fine = [Endpoint("pricing", subset="v1"), Endpoint("web")]
    _, found = run(route(rules), endpoints=fine)
    assert [f.code for f in found] == []


def test_endpoint_from_api_reads_the_registry_item() -> None:
    item = {
        "proxyId": "pricing-v1-0",
        "service": "pricing",
        "namespace": "shop",
        "subset": "v1",
        "labels": {"version": "v1"},
        "ready": False,
        "healthy": True,
    }
    e = Endpoint.from_api(item)
    assert (e.service, e.namespace, e.subset, dict(e.labels)) == (
        "pricing",
        "shop",
        "v1",
        {"version": "v1"},
    )
    assert e.healthy is False  # not ready: it gets no traffic


def test_a_mirror_or_fallback_without_endpoints_and_to_the_same_backend() -> None:
    text, found = run(
        route("""\
          - backendRefs: [{name: pricing, subset: v1}]
            filters:
              - type: RequestMirror
                requestMirror: {backendRef: {name: pricing, subset: v1}}
              - type: RequestMirror
                requestMirror: {backendRef: {name: pricing, subset: v2}}
            fallback: {backendRef: {name: pricing, subset: v1}}
        """)
    )
    [same] = only(found, "GSM024")
    assert same.path == "spec.rules[0].filters[0].requestMirror.backendRef"
    assert same.line == line_of(text, "backendRef: {name: pricing, subset: v1}}")
    [empty] = only(found, "GSM005")
    assert empty.path == "spec.rules[0].filters[1].requestMirror.backendRef"
    [fallback] = only(found, "GSM025")
    assert fallback.path == "spec.rules[0].fallback.backendRef"
    assert fallback.line == line_of(text, "fallback:")


def test_a_fallback_to_another_backend_is_fine() -> None:
    _, found = run(
        route("""\
          - backendRefs: [{name: pricing, subset: v1}]
            fallback: {backendRef: {name: web}}
        """)
    )
    assert not {"GSM005", "GSM024", "GSM025"} & {f.code for f in found}


# --- shadowed rules -------------------------------------------------------------------------------


def test_a_second_catch_all_is_shadowed_but_a_longer_prefix_is_not() -> None:
    """Precedence, not the order written: /api after "/" still wins; a second "/" never does."""
    text, found = run(
        route("""\
          - matches: [{path: {type: PathPrefix, value: /}}]
            backendRefs: [{name: pricing, subset: v1}]
          - matches: [{path: {type: PathPrefix, value: /api}}]
            backendRefs: [{name: pricing, subset: v1}]
          - backendRefs: [{name: web}]
        """)
    )
    [f] = only(found, "GSM010")
    assert f.path == "spec.rules[2]"
    assert f.line == line_of(text, "- backendRefs: [{name: web}]")
    assert "HTTPRoute/default/pricing spec.rules[0]" in f.message
    assert only(found, "GSM011") == []


def test_shadowing_across_routes_of_one_service() -> None:
    text = (
        route("- matches: [{path: {type: Exact, value: /a}}]\n", name="a")
        + "---\n"
        + route(
            "- matches: [{path: {type: Exact, value: /a}}, {path: {type: Exact, value: /b}}]\n",
            name="b",
        )
    )
    _, found = run(text)
    [f] = only(found, "GSM011")
    assert f.resource == "HTTPRoute/default/b"
    assert f.path == "spec.rules[0].matches[0]"
    assert "HTTPRoute/default/a spec.rules[0].matches[0]" in f.message
    assert only(found, "GSM010") == []


def test_a_method_or_header_match_is_not_shadowed_by_a_broader_rule_after_it() -> None:
    _, found = run(
        route("""\
          - matches: [{path: {type: PathPrefix, value: /api}}]
          - matches: [{path: {type: PathPrefix, value: /api}, method: POST}]
          - matches: [{path: {value: /api}, headers: [{name: x-canary, value: "1"}]}]
          - matches: [{path: {type: PathPrefix, value: /apiv2}}]
          - matches: [{path: {type: RegularExpression, value: "/api/.*"}}]
        """)
    )
    assert only(found, "GSM010") == []
    assert only(found, "GSM011") == []


def test_an_exact_path_is_shadowed_by_an_earlier_identical_match_with_a_header() -> None:
    _, found = run(
        route("""\
          - matches: [{path: {type: Exact, value: /x}, method: GET}]
          - matches: [{path: {type: Exact, value: /x}, method: GET, headers: [{name: a, value: b}]}]
          - matches: [{path: {type: Exact, value: /x}, method: GET}]
        """)
    )
    # The header match sorts first (more conditions); the second plain GET /x is shadowed.
    [f] = only(found, "GSM010")
    assert f.path == "spec.rules[2]"


def test_a_consumer_route_is_its_own_group() -> None:
    """A route in another namespace replaces the producer's there: no shadowing between them."""
    text = route("- backendRefs: [{name: pricing, subset: v1}]\n")
    consumer = text.replace("metadata: {name: pricing}", "metadata: {name: p, namespace: shop}")
    consumer = consumer.replace("[{name: pricing}]", "[{name: pricing, namespace: default}]")
    consumer = consumer.replace(
        "{name: pricing, subset: v1}", "{name: pricing, namespace: default, subset: v1}"
    )
    _, found = run(text + "---\n" + consumer)
    assert only(found, "GSM010") == []


def test_a_hostname_taken_by_another_service() -> None:
    _text, found = run(
        route(
            """\
          - backendRefs: [{name: pricing, subset: v1}]
        """
        ).replace("  parentRefs:", "  hostnames: [web.default.svc, pricing.example]\n  parentRefs:")
    )
    [f] = only(found, "GSM012")
    assert f.path == "spec.hostnames[0]"
    assert "default/web" in f.message


# --- retries and timeouts -------------------------------------------------------------------------


def test_retrying_post_on_5xx_warns_and_any_method_is_info() -> None:
    text, found = run(
        route("""\
          - matches: [{method: POST, path: {value: /orders}}]
            retry: {attempts: 2, retryOn: [5xx]}
          - retry: {attempts: 2, retryOn: [reset]}
          - matches: [{method: GET, path: {value: /orders}}]
            retry: {attempts: 2, retryOn: [5xx]}
          - matches: [{method: POST, path: {value: /pay}}]
            retry: {attempts: 2, retryOn: [connect-failure]}
        """)
    )
    [post] = only(found, "GSM020")
    assert post.path == "spec.rules[0].retry.retryOn"
    assert post.line == line_of(text, "retryOn: [5xx]")
    assert "POST" in post.message
    [anything] = only(found, "GSM021")
    assert anything.path == "spec.rules[1].retry.retryOn"


def test_a_per_try_timeout_as_long_as_the_request_timeout() -> None:
    _text, found = run(
        route("""\
          - timeouts: {request: 2s}
            retry: {attempts: 2, perTryTimeout: 2s, retryOn: [connect-failure]}
          - matches: [{path: {value: /b}}]
            retry: {attempts: 2, perTryTimeout: 20s, retryOn: [connect-failure]}
          - matches: [{path: {value: /c}}]
            timeouts: {request: 3s}
            retry: {attempts: 2, perTryTimeout: 1s, retryOn: [connect-failure]}
          - matches: [{path: {value: /d}}]
            timeouts: {request: 0s}
            retry: {attempts: 2, perTryTimeout: 20s, retryOn: [connect-failure]}
        """)
    )
    paths = sorted(f.path for f in only(found, "GSM022"))
    # rules[1] against the Mesh's default 15s; rules[3] has no request timeout at all.
    assert paths == ["spec.rules[0].retry.perTryTimeout", "spec.rules[1].retry.perTryTimeout"]


def test_retries_with_a_policy_that_allows_none() -> None:
    _text, found = run(
        route("""\
          - backendRefs: [{name: pricing, subset: v1}]
            retry: {attempts: 3, retryOn: [connect-failure]}
        """)
        + dedent("""\
        ---
        apiVersion: gossamer.dev/v1alpha1
        kind: DestinationPolicy
        metadata: {name: no-retries}
        spec:
          targetRef: {name: pricing}
          connectionPool: {maxRetries: 0}
        """)
    )
    [f] = only(found, "GSM023")
    assert "no-retries" in f.message
    assert f.path == "spec.rules[0].retry.attempts"
    _, found = run(
        route("""\
          - backendRefs: [{name: pricing, subset: v1}]
            retry: {attempts: 3, retryOn: [connect-failure]}
        """)
    )
    assert only(found, "GSM023") == []


def test_a_fault_aborting_everything() -> None:
    _, found = run(
        route("""\
          - filters:
              - type: Fault
                fault: {abort: {httpStatus: 503}}
          - matches: [{path: {value: /test}}]
            filters:
              - type: Fault
                fault: {abort: {httpStatus: 503}, headers: [{name: x-chaos, value: "1"}]}
          - matches: [{path: {value: /some}}]
            filters:
              - type: Fault
                fault: {abort: {httpStatus: 503, percentage: 10}}
        """)
    )
    [f] = only(found, "GSM026")
    assert f.path == "spec.rules[0].filters[0].fault.abort"


# --- policies -------------------------------------------------------------------------------------

DP = """\
---
apiVersion: gossamer.dev/v1alpha1
kind: DestinationPolicy
metadata: {{name: {name}}}
spec:
{spec}
"""


def dp(name: str, spec: str) -> str:
    return DP.format(name=name, spec=indent(dedent(spec).rstrip("\n"), "  "))


def test_a_policy_for_a_missing_subset_selects_nothing() -> None:
    """Stale data on a live mesh: the subset went away after the policy was applied."""
    objs = [
        {
            "apiVersion": "gossamer.dev/v1alpha1",
            "kind": "Service",
            "metadata": {"name": "pricing"},
        },
        {
            "apiVersion": "gossamer.dev/v1alpha1",
            "kind": "DestinationPolicy",
            "metadata": {"name": "v3"},
            "spec": {"targetRef": {"name": "pricing", "subset": "v3"}},
        },
    ]
    loaded, problems = collect_objects(objs, STORED)
    assert problems == []
    found = analyze(loaded, [Endpoint("pricing")])
    [f] = only(found, "GSM030")
    assert f.resource == "DestinationPolicy/default/v3"
    assert f.path == "spec.targetRef.subset"
    assert f.file is None
    assert f.line is None
    assert "no subsets" in f.message


def test_a_route_to_an_unknown_service_is_gsm000_at_its_line() -> None:
    full = SERVICES + route("- backendRefs: [{name: pricng}]\n")
    loaded, problems = collect_text(full, "mesh.yaml")
    assert problems == []  # loading is fine: the reference is checked across resources
    [f] = only(analyze(loaded), "GSM000")
    assert f.resource == "HTTPRoute/default/pricing"
    assert f.path == "spec.rules[0].backendRefs[0].name"
    assert f.line == line_of(full, "name: pricng")
    assert "did you mean 'pricing'" in f.message


def test_from_problems_keeps_documents_that_did_not_load() -> None:
    text = (
        "apiVersion: gossamer.dev/v1alpha1\nkind: Service\nmetadata: {name: x}\nspec: {nope: 1}\n"
    )
    loaded, problems = collect_text(text, "bad.yaml")
    [f] = from_problems(problems, loaded)
    assert (f.code, f.resource, f.file, f.line) == ("GSM000", "", "bad.yaml", 4)


def test_destination_policy_rules() -> None:
    text, found = run(
        dp("a-first", "  targetRef: {name: pricing}\n  loadBalancer: {policy: ROUND_ROBIN}")
        + dp("b-second", "  targetRef: {name: pricing}\n  loadBalancer: {policy: PEAK_EWMA}")
        + dp("empty", "  targetRef: {name: pricing}")
        + dp(
            "v2",
            "  targetRef: {name: pricing, subset: v2}\n  loadBalancer: {policy: RING_HASH,"
            " consistentHash: {httpHeaderName: x-user}}",
        )
    )
    [over] = only(found, "GSM033")
    assert over.resource == "DestinationPolicy/default/b-second"
    assert over.path == "spec.loadBalancer"
    assert over.line == line_of(text, "policy: PEAK_EWMA")
    assert "a-first" in over.message
    [nothing] = only(found, "GSM034")
    assert nothing.resource == "DestinationPolicy/default/empty"
    [idle] = only(found, "GSM031")
    assert idle.resource == "DestinationPolicy/default/v2"


def test_outlier_detection_that_contradicts_itself() -> None:
    text, found = run(
        dp(
            "open",
            "  targetRef: {name: pricing}\n  outlierDetection: {maxEjectionPercent: 100}",
        )
        + dp(
            "circuit",
            "  targetRef: {name: web}\n"
            "  outlierDetection: {maxEjectionPercent: 100, minHealthPercent: 0}",
        )
        + dp(
            "never",
            "  targetRef: {name: pricing, subset: v1}\n  outlierDetection: {maxEjectionPercent: 0}",
        )
        + dp(
            "off",
            "  targetRef: {name: pricing, subset: v2}\n"
            "  outlierDetection: {consecutiveGatewayErrors: 0, maxEjectionPercent: 0}",
        )
    )
    [f] = only(found, "GSM040")
    assert f.resource == "DestinationPolicy/default/open"
    assert f.path == "spec.outlierDetection.maxEjectionPercent"
    assert f.line == line_of(text, "maxEjectionPercent: 100}")
    [never] = only(found, "GSM041")
    assert never.resource == "DestinationPolicy/default/never"


def test_a_mesh_default_with_the_same_contradiction() -> None:
    mesh = dedent("""\
    apiVersion: gossamer.dev/v1alpha1
    kind: Mesh
    metadata: {name: mesh}
    spec:
      defaults:
        outlierDetection: {maxEjectionPercent: 100}
    """)
    _, found = run(mesh)
    [f] = only(found, "GSM040")
    assert f.resource == "Mesh/default/mesh"
    assert f.path == "spec.defaults.outlierDetection.maxEjectionPercent"


def test_a_health_check_timeout_not_below_its_interval() -> None:
    _, found = run(
        dp("hc", "  targetRef: {name: web}\n  healthCheck: {interval: 1s, timeout: 1s}")
        + dp("ok", "  targetRef: {name: pricing}\n  healthCheck: {interval: 5s, timeout: 1s}")
    )
    [f] = only(found, "GSM042")
    assert f.resource == "DestinationPolicy/default/hc"


# --- authorization --------------------------------------------------------------------------------

AUTHZ = """\
---
apiVersion: gossamer.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
{spec}
"""


def authz(name: str, spec: str, ns: str = "default") -> str:
    return AUTHZ.format(name=name, ns=ns, spec=indent(dedent(spec).rstrip("\n"), "  "))


def test_a_deny_everything_makes_every_allow_rule_unreachable() -> None:
    text, found = run(
        authz(
            "allow-web",
            """\
              targetRef: {name: pricing}
              action: ALLOW
              rules:
                - from: [{source: {principals: [gossamer.local/ns/default/sa/web]}}]
                  to: [{operation: {methods: [GET], paths: [/prices/*]}}]
            """,
        )
        + authz(
            "lockdown",
            """\
              action: DENY
              rules:
                - to: [{operation: {paths: ["/prices/*"]}}]
            """,
        )
    )
    [f] = only(found, "GSM052")
    assert f.resource == "AuthorizationPolicy/default/allow-web"
    assert f.path == "spec.rules[0]"
    assert f.line == line_of(text, "- from: [{source: {principals")
    assert "AuthorizationPolicy/default/lockdown spec.rules[0]" in f.message
    assert "none of the policy's rules" in f.message


def test_a_narrower_deny_leaves_the_allow_reachable() -> None:
    _, found = run(
        authz(
            "allow-web",
            """\
              targetRef: {name: pricing}
              rules:
                - from: [{source: {principals: [gossamer.local/ns/default/sa/web]}}]
                  to: [{operation: {methods: [GET, POST]}}]
            """,
        )
        + authz(
            "no-post",
            """\
              targetRef: {name: pricing}
              action: DENY
              rules:
                - to: [{operation: {methods: [POST]}}]
                - from: [{source: {principals: [gossamer.local/ns/default/sa/other]}}]
                - to: [{operation: {notMethods: [GET, POST]}}]
            """,
        )
        + authz(
            "deny-other-service",
            """\
              targetRef: {name: web}
              action: DENY
              rules: [{}]
            """,
        )
    )
    assert only(found, "GSM052") == []


def test_a_deny_by_principal_prefix_covers_an_allow_of_one_principal() -> None:
    _, found = run(
        authz(
            "allow",
            """\
              targetRef: {name: pricing}
              rules:
                - from: [{source: {principals: [gossamer.local/ns/default/sa/web]}}]
                - to: [{operation: {paths: [/health]}}]
            """,
        )
        + authz(
            "deny-default-ns",
            """\
              targetRef: {name: pricing}
              action: DENY
              rules:
                - from: [{source: {principals: ["gossamer.local/ns/default/*"]}}]
            """,
        )
    )
    [f] = only(found, "GSM052")
    assert f.path == "spec.rules[0]"
    assert "none of the policy's rules" not in f.message


def test_empty_policies_and_a_namespace_without_services() -> None:
    _, found = run(
        authz("allow-none", "  targetRef: {name: pricing}\n  action: ALLOW")
        + authz("deny-none", "  targetRef: {name: pricing}\n  action: DENY")
        + authz("elsewhere", "  action: DENY\n  rules: [{}]", ns="empty")
    )
    [allow] = only(found, "GSM050")
    assert allow.resource == "AuthorizationPolicy/default/allow-none"
    assert "service pricing is denied" in allow.message
    [deny] = only(found, "GSM051")
    assert deny.resource == "AuthorizationPolicy/default/deny-none"
    [ns] = only(found, "GSM032")
    assert ns.resource == "AuthorizationPolicy/empty/elsewhere"


def test_principals_on_a_service_without_mtls() -> None:
    services = SERVICES.replace(
        "metadata: {name: web}", "metadata: {name: web}\nspec: {mtls: {mode: DISABLE}}"
    )
    policy = authz(
        "from-pricing",
        """\
          targetRef: {name: web}
          rules:
            - from: [{source: {principals: [gossamer.local/ns/default/sa/pricing]}}]
            - to: [{operation: {methods: [GET]}}]
        """,
    )
    loaded, problems = collect_text(services + policy, "mesh.yaml")
    assert problems == []
    found = analyze(loaded)
    [f] = only(found, "GSM053")
    assert f.severity == "error"
    assert f.resource == "AuthorizationPolicy/default/from-pricing"
    assert f.path == "spec.rules[0]"
    assert "mTLS DISABLE" in f.message
    assert "the callers it names are denied" in f.message
    [disabled] = only(found, "GSM070")
    assert disabled.resource == "Service/default/web"
    # STRICT (the default): nothing to say.
    _, found = run(policy)
    assert only(found, "GSM053") == []
    assert only(found, "GSM070") == []


def test_a_deny_by_principal_on_a_permissive_service() -> None:
    mesh = dedent("""\
    apiVersion: gossamer.dev/v1alpha1
    kind: Mesh
    metadata: {name: mesh}
    spec: {mtls: {mode: PERMISSIVE}}
    """)
    _, found = run(
        mesh
        + authz(
            "deny-web",
            """\
              targetRef: {name: pricing}
              action: DENY
              rules:
                - from: [{source: {principals: [gossamer.local/ns/default/sa/web]}}]
                - from: [{source: {notPrincipals: ["*"]}}]
            """,
        )
    )
    [f] = only(found, "GSM054")
    assert f.path == "spec.rules[0]"
    assert only(found, "GSM053") == []


# --- rate limits ----------------------------------------------------------------------------------


def test_rate_limit_rules() -> None:
    mesh = dedent("""\
    apiVersion: gossamer.dev/v1alpha1
    kind: Mesh
    metadata: {name: mesh}
    spec: {rateLimit: {redis: {address: "127.0.0.1:6379"}}}
    ---
    apiVersion: gossamer.dev/v1alpha1
    kind: RateLimitPolicy
    metadata: {name: limits}
    spec:
      targetRef: {kind: Service, name: pricing}
      limits:
        - {name: global, requests: 100, per: 1s, scope: Global, failureMode: FailClosed}
        - {name: open, requests: 100, per: 1s, scope: Global}
        - {name: local, requests: 10, per: 1s}
    ---
    apiVersion: gossamer.dev/v1alpha1
    kind: RateLimitPolicy
    metadata: {name: web-limits}
    spec:
      targetRef: {kind: Service, name: web}
      limits:
        - {requests: 10, per: 1s}
    """)
    text, found = run(mesh)
    [closed] = only(found, "GSM060")
    assert closed.path == "spec.limits[0].failureMode"
    assert closed.line == line_of(text, "failureMode: FailClosed")
    [local] = only(found, "GSM061")  # pricing has 2 replicas; web only 1
    assert local.path == "spec.limits[2].scope"
    assert "up to 20 requests per 1s" in local.message


# --- the whole -----------------------------------------------------------------------------------


def test_every_code_has_a_fixed_severity_and_the_helpers_rank_them() -> None:
    assert all(code.startswith("GSM") and len(code) == 6 for code in RULES)
    a = Finding("GSM021", "r", "p", "m", "h")
    b = Finding("GSM010", "r", "p", "m", "h")
    assert worst([a, b]) == "warning"
    assert worst([]) is None
    assert at_least([a, b], "warning") == [b]
    assert at_least([a, b], "info") == [a, b]
    assert a.to_dict()["severity"] == "info"


@pytest.mark.parametrize(
    "path",
    [
        Path(__file__).parent / "fixtures" / "shop.yaml",
        Path(__file__).parent / "fixtures" / "resilience.yaml",
    ],
)
def test_the_fixtures_have_no_errors(path: Path) -> None:
    loaded, problems = collect_files([path])
    assert problems == []
    errors = at_least(analyze(loaded), "error")
    assert errors == [], [f"{f.code} {f.where}: {f.message}" for f in errors]


def test_a_deny_of_everyone_without_an_identity_on_a_service_without_mtls() -> None:
    """notPrincipals holds for a request with no identity: under DISABLE it denies everyone."""
    services = SERVICES.replace(
        "metadata: {name: web}", "metadata: {name: web}\nspec: {mtls: {mode: DISABLE}}"
    )
    policy = authz(
        "only-mesh",
        """\
          targetRef: {name: web}
          action: DENY
          rules:
            - from: [{source: {notPrincipals: ["*"]}}]
        """,
    )
    loaded, problems = collect_text(services + policy, "mesh.yaml")
    assert problems == []
    [f] = only(analyze(loaded), "GSM053")
    assert "the rule denies callers it meant to let through" in f.message
