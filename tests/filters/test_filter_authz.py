"""The authorization engine: Istio's matrix, from YAML policies through the translator to a
Decision."""

from __future__ import annotations

import re
from pathlib import Path
from textwrap import dedent

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer import snapshot as snap
from gossamer.config.loader import load_text
from gossamer.control.translate import translate
from gossamer.filters import authz
from gossamer.filters.authz import AuthzCompileError, AuthzEngine, Decision

WEB = "spiffe://shop.local/ns/shop/sa/web"
CRON = "spiffe://shop.local/ns/shop/sa/cron"
OPS = "spiffe://shop.local/ns/ops/sa/admin"
OTHER_TD = "spiffe://other.local/ns/shop/sa/web"
NIGHTLY = "spiffe://shop.local/job/nightly"  # not a workload ID: it has no namespace

SERVICES = """\
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: pricing, namespace: shop}
spec: {ports: [{port: 8080}, {name: admin, port: 9090}]}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: catalog, namespace: shop}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: pricing, namespace: ops}
"""


def _engine(policies: str, service: str = "pricing", namespace: str = "shop") -> AuthzEngine:
    """The engine the `service` proxy in `namespace` would build from these policies."""
    docs = [dedent(d) for d in re.split(r"^\s*---\s*\n", policies, flags=re.M) if d.strip()]
    text = SERVICES + "".join(
        "---\napiVersion: gossamer.dev/v1alpha1\nkind: AuthorizationPolicy\n" + d for d in docs
    )
    resources = [loaded.resource for loaded in load_text(text, "authz.yaml")]
    proxy = snap.ProxyIdentity(proxy_id=f"{service}-0", service=service, namespace=namespace)
    return authz.compile(translate(resources, [], proxy).authz)


def _check(
    engine: AuthzEngine,
    principal: str | None = WEB,
    method: str = "GET",
    path: str = "/",
    port: int = 8080,
) -> Decision:
    return engine.check(principal, method.encode(), path.encode(), port)


ALLOW_WEB = """\
metadata: {name: allow-web, namespace: shop}
spec:
  targetRef: {name: pricing}
  rules: [{from: [{source: {principals: [shop.local/ns/shop/sa/web]}}]}]
"""
NO_DELETE = """\
metadata: {name: no-delete, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
"""
NO_ADMIN = """\
metadata: {name: no-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin/*]}}]}]
"""


def _allow(rules: str, name: str = "p") -> str:
    """An ALLOW policy `shop/<name>` for the whole namespace with these (flow-style) rules."""
    return f"metadata: {{name: {name}, namespace: shop}}\nspec:\n  rules: {rules}\n"


def _from(source: str) -> str:
    return _allow(f"[{{from: [{{source: {source}}}]}}]")


def _to(operation: str) -> str:
    return _allow(f"[{{to: [{{operation: {operation}}}]}}]")


POLICIES: dict[str, str] = {
    "allow-web": ALLOW_WEB,
    "principal-prefix": _from('{principals: ["spiffe://shop.local/ns/shop/*"]}'),
    "principal-suffix": _from('{principals: ["*/sa/web"]}'),
    "principal-any": _from('{principals: ["*"]}'),
    "namespace": _from("{namespaces: [ops]}"),
    "namespace-any": _from('{namespaces: ["*"]}'),
    "namespace-prefix": _from('{namespaces: ["op*"]}'),
    "not-cron": _from('{notPrincipals: ["*/sa/cron"]}'),
    "require-mtls": NO_DELETE.replace("no-delete", "require-mtls").replace(
        "to: [{operation: {methods: [DELETE]}}]", 'from: [{source: {notPrincipals: ["*"]}}]'
    ),
    "not-ops": _from("{notNamespaces: [ops]}"),
    "shop-not-cron": _from('{namespaces: [shop], notPrincipals: ["*/sa/cron"]}'),
    "web-or-ops": _allow(
        '[{from: [{source: {principals: ["*/sa/web"]}}, {source: {namespaces: [ops]}}]}]'
    ),
    "exact-path": _to("{paths: [/health]}"),
    "istio-prefix": _to("{paths: [/api*]}"),
    "istio-prefix-slash": _to("{paths: [/api/*]}"),
    "suffix-path": _to('{paths: ["*.png"]}'),
    "path-prefix-slash": _to("{paths: [{type: PathPrefix, value: /api/}]}"),
    "path-prefix": _to("{paths: [{type: PathPrefix, value: /api}]}"),
    "regex-path": _to('{paths: [{type: RegularExpression, value: "/v[0-9]+/.*"}]}'),
    "not-admin-paths": _to("{notPaths: [/admin*]}"),
    "no-admin": NO_ADMIN,
    "reads": _to("{methods: [GET, HEAD]}"),
    "get": _to("{methods: [GET]}"),
    "not-delete": _to("{notMethods: [DELETE]}"),
    "admin-port": _to('{ports: ["9090"]}'),
    "not-admin-port": _to("{notPorts: [9090]}"),
    "get-a": _to("{methods: [GET], paths: [/a]}"),
    "get-a-or-b": _allow(
        "[{to: [{operation: {methods: [GET], paths: [/a]}}, {operation: {paths: [/b]}}]}]"
    ),
    "web-and-get": _allow(
        '[{from: [{source: {principals: ["*/sa/web"]}}], to: [{operation: {methods: [GET]}}]}]'
    ),
    "web-or-get": _allow(
        '[{from: [{source: {principals: ["*/sa/web"]}}]}, {to: [{operation: {methods: [GET]}}]}]'
    ),
    "empty-rule": _allow("[{}]"),
    "allow-web+no-delete": ALLOW_WEB + "---\n" + NO_DELETE,
    "allow-web+cron-reads": ALLOW_WEB
    + "---\n"
    + _allow(
        '[{from: [{source: {principals: ["*/sa/cron"]}}], to: [{operation: {methods: [GET]}}]}]',
        "allow-cron-reads",
    ),
    "allow-no-rules": "metadata: {name: deny-all, namespace: shop}\nspec: {}\n",
    "deny-no-rules": "metadata: {name: nothing, namespace: shop}\nspec: {action: DENY}\n",
    "other-service": (
        "metadata: {name: catalog-only, namespace: shop}\n"
        "spec: {targetRef: {name: catalog}, rules: [{}]}\n"
    ),
    "other-namespace": (
        "metadata: {name: deny-all, namespace: ops}\nspec: {}\n---\n"
        "metadata: {name: deny-pricing, namespace: ops}\nspec: {targetRef: {name: pricing}}\n"
    ),
}

# (case, policies, principal, "METHOD /path", port, expected: "allow" | "deny", then the
# deciding policy if one decided)
MATRIX: list[tuple[str, str, str | None, str, int, str]] = [
    # principals: exact (written in Istio's short form), wildcards, `*`; an identity is required
    ("exact principal", "allow-web", WEB, "GET /", 8080, "allow shop/allow-web"),
    ("other principal", "allow-web", CRON, "GET /", 8080, "deny"),
    ("other trust domain", "allow-web", OTHER_TD, "GET /", 8080, "deny"),
    ("no identity", "allow-web", None, "GET /", 8080, "deny"),
    ("prefix wildcard", "principal-prefix", CRON, "GET /", 8080, "allow shop/p"),
    ("prefix wildcard misses", "principal-prefix", OPS, "GET /", 8080, "deny"),
    ("suffix wildcard", "principal-suffix", OTHER_TD, "GET /", 8080, "allow shop/p"),
    ("star needs an identity", "principal-any", None, "GET /", 8080, "deny"),
    ("star takes any identity", "principal-any", OTHER_TD, "GET /", 8080, "allow shop/p"),
    # namespaces come from the SPIFFE ID
    ("namespace", "namespace", OPS, "GET /", 8080, "allow shop/p"),
    ("other namespace", "namespace", WEB, "GET /", 8080, "deny"),
    ("namespace needs a workload ID", "namespace-any", NIGHTLY, "GET /", 8080, "deny"),
    ("namespace wildcard", "namespace-prefix", OPS, "GET /", 8080, "allow shop/p"),
    # not-fields hold when no value matches, and (as in Istio) without an identity
    ("notPrincipals excludes", "not-cron", CRON, "GET /", 8080, "deny"),
    ("notPrincipals lets others in", "not-cron", WEB, "GET /", 8080, "allow shop/p"),
    ("notPrincipals holds without identity", "not-cron", None, "GET /", 8080, "allow shop/p"),
    ("deny plaintext (Istio idiom)", "require-mtls", None, "GET /", 8080, "deny shop/require-mtls"),
    ("deny plaintext spares identities", "require-mtls", WEB, "GET /", 8080, "allow"),
    ("notNamespaces", "not-ops", OPS, "GET /", 8080, "deny"),
    ("source fields are AND-ed", "shop-not-cron", CRON, "GET /", 8080, "deny"),
    ("from entries are OR-ed", "web-or-ops", OPS, "GET /", 8080, "allow shop/p"),
    # paths: exact, Istio's plain prefix and suffix, HTTPRoute's PathPrefix, regex; no query
    ("exact path, query ignored", "exact-path", None, "GET /health?full=1", 8080, "allow shop/p"),
    ("exact path is exact", "exact-path", None, "GET /health/x", 8080, "deny"),
    ("istio prefix is a plain prefix", "istio-prefix", None, "GET /apix", 8080, "allow shop/p"),
    ("istio prefix misses bare path", "istio-prefix-slash", None, "GET /api", 8080, "deny"),
    ("suffix path", "suffix-path", None, "GET /img/logo.png", 8080, "allow shop/p"),
    ("PathPrefix is segment-aware", "path-prefix-slash", None, "GET /api", 8080, "allow shop/p"),
    ("PathPrefix not a longer segment", "path-prefix", None, "GET /apix", 8080, "deny"),
    ("regex, whole path", "regex-path", None, "GET /v2/items", 8080, "allow shop/p"),
    ("regex misses", "regex-path", None, "GET /x/v2/items", 8080, "deny"),
    ("notPaths", "not-admin-paths", None, "GET /admin/users", 8080, "deny"),
    ("dot segments", "no-admin", WEB, "GET /public/../admin/u", 8080, "deny shop/no-admin"),
    ("escapes", "no-admin", WEB, "GET /%61dmin/./users", 8080, "deny shop/no-admin"),
    # methods and ports
    ("method", "reads", None, "HEAD /", 8080, "allow shop/p"),
    ("other method", "reads", None, "POST /", 8080, "deny"),
    ("methods are case-sensitive", "get", None, "get /", 8080, "deny"),
    ("notMethods", "not-delete", None, "DELETE /", 8080, "deny"),
    ("port", "admin-port", None, "GET /", 9090, "allow shop/p"),
    ("other port", "admin-port", None, "GET /", 8080, "deny"),
    ("notPorts", "not-admin-port", None, "GET /", 9090, "deny"),
    # how rules combine
    ("operation fields are AND-ed", "get-a", None, "GET /b", 8080, "deny"),
    ("to entries are OR-ed", "get-a-or-b", None, "POST /b", 8080, "allow shop/p"),
    ("from AND to", "web-and-get", CRON, "GET /", 8080, "deny"),
    ("rules are OR-ed", "web-or-get", CRON, "GET /", 8080, "allow shop/p"),
    ("empty rule allows all", "empty-rule", None, "DELETE /x", 9090, "allow shop/p"),
    # how policies combine
    ("DENY over ALLOW", "allow-web+no-delete", WEB, "DELETE /", 8080, "deny shop/no-delete"),
    ("ALLOW when DENY misses", "allow-web+no-delete", WEB, "GET /", 8080, "allow shop/allow-web"),
    ("default deny", "allow-web+no-delete", CRON, "GET /", 8080, "deny"),
    (
        "any ALLOW suffices",
        "allow-web+cron-reads",
        CRON,
        "GET /",
        8080,
        "allow shop/allow-cron-reads",
    ),
    ("ALLOW with no rules denies all", "allow-no-rules", WEB, "GET /", 8080, "deny"),
    ("DENY with no rules denies nothing", "deny-no-rules", WEB, "GET /", 8080, "allow"),
    ("other service's policy", "other-service", WEB, "GET /", 8080, "allow"),
    ("other namespace's policies", "other-namespace", WEB, "GET /", 8080, "allow"),
]


@pytest.mark.parametrize(
    ("policies", "principal", "request_line", "port", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in MATRIX],
)
def test_authorization_matrix(
    policies: str, principal: str | None, request_line: str, port: int, expected: str
) -> None:
    """Each request gets Istio's decision, and the decision names the policy that made it."""
    method, path = request_line.split(" ")
    decision = _check(_engine(POLICIES[policies]), principal, method, path, port)
    verdict, _, policy = expected.partition(" ")
    assert (decision.allowed, decision.policy) == (verdict == "allow", policy or None), (
        decision.reason
    )
    assert decision.audit == ()


def test_no_policy_allows_everything() -> None:
    """Without any policy for the service, the Snapshot has no authz and everything passes."""
    engine = _engine("")
    decision = _check(engine, None, "DELETE", "/admin")
    assert decision == authz.NO_POLICY
    assert decision.allowed


def test_default_deny_names_the_allow_policies() -> None:
    """Once any ALLOW selects the service, an unmatched request is denied, listing them all."""
    engine = _engine(
        ALLOW_WEB
        + """\
        ---
        metadata: {name: allow-health, namespace: shop}
        spec:
          rules: [{to: [{operation: {paths: [/health]}}]}]
        """
    )
    decision = _check(engine, CRON, "GET", "/orders")
    assert not decision.allowed
    assert decision.policy is None
    assert decision.reason == (
        "default deny: no ALLOW policy matched (shop/allow-health, shop/allow-web)"
    )
    assert _check(engine, CRON, "GET", "/health").policy == "shop/allow-health"


def test_deny_reason_names_the_policy() -> None:
    engine = _engine(
        """\
        metadata: {name: no-delete, namespace: shop}
        spec:
          action: DENY
          rules: [{to: [{operation: {methods: [DELETE]}}]}]
        """
    )
    denied = _check(engine, WEB, "DELETE")
    assert denied == Decision(False, "shop/no-delete", "denied by DENY policy shop/no-delete")
    assert _check(engine, WEB, "GET").allowed


def test_audit_is_reported_but_never_decides() -> None:
    """AUDIT policies that match are listed; allowed stays allowed and denied stays denied."""
    engine = _engine(
        ALLOW_WEB
        + """\
        ---
        metadata: {name: audit-writes, namespace: shop}
        spec:
          action: AUDIT
          rules: [{to: [{operation: {notMethods: [GET, HEAD]}}]}]
        ---
        metadata: {name: audit-all, namespace: shop}
        spec:
          action: AUDIT
          rules: [{}]
        ---
        metadata: {name: audit-none, namespace: shop}
        spec: {action: AUDIT}
        """
    )
    allowed = _check(engine, WEB, "POST")
    assert (allowed.allowed, allowed.policy) == (True, "shop/allow-web")
    assert allowed.audit == ("shop/audit-all", "shop/audit-writes")
    denied = _check(engine, CRON, "GET")
    assert (denied.allowed, denied.audit) == (False, ("shop/audit-all",))


def test_audit_alone_allows() -> None:
    """A service with only AUDIT policies has no ALLOW: requests pass, and are reported."""
    engine = _engine(
        """\
        metadata: {name: audit, namespace: shop}
        spec: {action: AUDIT, rules: [{}]}
        """
    )
    decision = _check(engine, None)
    assert decision.allowed
    assert decision.audit == ("shop/audit",)


def test_namespace_wide_policy_applies_to_every_service() -> None:
    """A policy without targetRef selects each service of its namespace, and only those."""
    deny_all = """\
        metadata: {name: deny-all, namespace: shop}
        spec: {}
        """
    assert not _check(_engine(deny_all, service="pricing")).allowed
    assert not _check(_engine(deny_all, service="catalog")).allowed
    assert _check(_engine(deny_all, service="pricing", namespace="ops")).allowed


def test_principal_without_scheme_is_the_same_id() -> None:
    """A caller passing `td/ns/x/sa/y` (no scheme) gets the same answer as with `spiffe://`."""
    engine = _engine(ALLOW_WEB)
    assert _check(engine, WEB.removeprefix("spiffe://")).allowed


def test_decisions_are_shared_on_the_common_path() -> None:
    """Without a matching AUDIT policy, deciding allocates no new Decision."""
    engine = _engine(ALLOW_WEB)
    first = _check(engine, WEB, "GET", "/a")
    assert _check(engine, WEB, "POST", "/b?x=1") is first
    assert _check(engine, CRON) is _check(engine, None)


def _raw(**operation: object) -> snap.AuthzConfig:
    op = snap.AuthzOperation(**operation)  # type: ignore[arg-type]
    rule = snap.AuthzRule(to=[op])
    return snap.AuthzConfig(policies=[snap.AuthzPolicy(name="shop/raw", rules=[rule])])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            _raw(paths=[snap.AuthzPath(type="RegularExpression", value="(")]),
            "policy shop/raw, rules[0].to[0].paths[0]: invalid regular expression '('",
        ),
        (
            _raw(methods=["GET /"]),
            "policy shop/raw, rules[0].to[0].methods[0]: invalid method 'GET /'",
        ),
        (_raw(ports=[70000]), "policy shop/raw, rules[0].to[0].ports[0]: port 70000"),
        (
            snap.AuthzConfig(
                policies=[
                    snap.AuthzPolicy(
                        name="shop/raw",
                        rules=[snap.AuthzRule(from_=[snap.AuthzSource(principals=["a*b*"])])],
                    )
                ]
            ),
            "policy shop/raw, rules[0].from[0].principals[0]: 'a*b*'",
        ),
    ],
)
def test_bad_snapshot_is_refused_naming_where(config: snap.AuthzConfig, message: str) -> None:
    """A hand-written Snapshot the models would have refused fails to compile, saying where."""
    with pytest.raises(AuthzCompileError) as err:
        authz.compile(config)
    assert str(err.value).startswith(message)


def test_snapshot_round_trip_keeps_from() -> None:
    """`from` survives JSON (it is `from_` in Python) and compiles to the same decisions."""
    engine_snapshot = translate(
        [
            loaded.resource
            for loaded in load_text(
                SERVICES
                + "---\napiVersion: gossamer.dev/v1alpha1\nkind: AuthorizationPolicy\n"
                + ALLOW_WEB,
                "authz.yaml",
            )
        ],
        [],
        snap.ProxyIdentity(proxy_id="pricing-0", service="pricing", namespace="shop"),
    )
    decoded = snap.decode(snap.encode(engine_snapshot))
    assert decoded == engine_snapshot
    assert b'"from":[{"principals":["spiffe://shop.local/ns/shop/sa/web"]}]' in snap.encode(decoded)
    engine = authz.compile(decoded.authz)
    assert _check(engine, WEB).allowed
    assert not _check(engine, CRON).allowed


@settings(max_examples=200, deadline=None)
@given(
    path=st.lists(
        st.sampled_from(["a", "admin", ".", "..", "%2e", "%61dmin", "%2F", "x.png"]), max_size=6
    ).map(lambda parts: "/" + "/".join(parts))
)
def test_normalized_paths_have_no_dot_segments(path: str) -> None:
    """Whatever the request writes, the path rules see has no "." or ".." segment left."""
    normalized = authz._normalize(path.encode())
    assert normalized.startswith(b"/")
    segments = normalized.split(b"/")
    assert b"." not in segments
    assert b".." not in segments
    assert authz._normalize(normalized) == normalized


def test_golden_snapshot_compiles_and_decides() -> None:
    """The translator's golden Snapshot for a policy-rich proxy is what the engine enforces."""
    golden = Path(__file__).parents[1] / "control" / "golden" / "authz_policies.json"
    engine = authz.compile(snap.decode(golden.read_bytes()).authz)
    frontend = "spiffe://shop.local/ns/shop/sa/frontend"
    ops_user = "spiffe://shop.local/ns/ops/sa/dash"
    assert engine.policies == ("shop/require-mtls", "shop/pricing-readers", "shop/audit-writes")
    assert _check(engine, None, "GET", "/public/x").policy == "shop/require-mtls"
    assert _check(engine, frontend, "GET", "/prices/eu").policy == "shop/pricing-readers"
    assert _check(engine, ops_user, "HEAD", "/a/b.json").allowed
    assert not _check(engine, "spiffe://shop.local/ns/ops/sa/intern", "GET", "/health").allowed
    assert not _check(engine, frontend, "GET", "/public/x", port=9090).allowed
    write = _check(engine, frontend, "POST", "/public")
    assert (write.allowed, write.audit) == (True, ("shop/audit-writes",))
