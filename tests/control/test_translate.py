"""Translator tests: golden Snapshots from inline YAML, determinism, precedence and defaults."""

from __future__ import annotations

import difflib
import json
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest
from ruamel.yaml import YAML

from gossamer import snapshot as snap
from gossamer.config import models
from gossamer.config.loader import load_text
from gossamer.config.models import Resource
from gossamer.control.registry import Registration
from gossamer.control.translate import DEFAULT_RETRY, PUBLISH_LABEL, translate

GOLDEN = Path(__file__).parent / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("*.yaml"))


# --- helpers --------------------------------------------------------------------------------------


def parse_case(
    text: str, filename: str = "<inline>"
) -> tuple[list[Resource], list[Registration], snap.ProxyIdentity]:
    """Split a test input into resources, registrations and the asking proxy.

    The first YAML document has `kind: TestInput` with `proxy:` (a ProxyIdentity) and
    `registrations:` (Registrations, camelCase as on the wire); the rest are resources, loaded by
    the real config loader.
    """
    head, sep, rest = text.partition("\n---\n")
    assert sep, f"{filename}: needs a TestInput document, then '---', then resources"
    meta: dict[str, Any] = YAML(typ="safe").load(head)
    assert meta.get("kind") == "TestInput", f"{filename}: the first document must be a TestInput"
    proxy = msgspec.convert(meta["proxy"], snap.ProxyIdentity)
    regs = [msgspec.convert(r, Registration) for r in meta.get("registrations") or []]
    resources: list[Resource] = [loaded.resource for loaded in load_text(rest, filename)]
    return resources, regs, proxy


def render(s: snap.Snapshot) -> str:
    return json.dumps(snap.to_builtins(s), indent=2, sort_keys=True) + "\n"


def rules_of(s: snap.Snapshot, vhost: str) -> list[snap.RouteRule]:
    (host,) = [v for v in s.virtual_hosts if v.name == vhost]
    return host.rules


def cluster_of(s: snap.Snapshot, name: str) -> snap.Cluster:
    (cluster,) = [c for c in s.clusters if c.name == name]
    return cluster


PROXY = snap.ProxyIdentity(proxy_id="frontend-0", service="frontend")


def reg(proxy_id: str, service: str, inbound: str, **kw: Any) -> Registration:
    kw.setdefault("app_port", 8000)
    return Registration(proxy_id=proxy_id, service=service, inbound=inbound, **kw)


# --- golden ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str, request: pytest.FixtureRequest) -> None:
    """The Snapshot for each golden input equals the stored one (`--update-golden` rewrites it)."""
    source = GOLDEN / f"{case}.yaml"
    expected_path = GOLDEN / f"{case}.json"
    resources, regs, proxy = parse_case(source.read_text(), str(source))
    actual = render(translate(resources, regs, proxy))

    if request.config.getoption("--update-golden", default=False):
        expected_path.write_text(actual)
        return
    if not expected_path.exists():
        pytest.fail(f"{expected_path} is missing; run pytest with --update-golden to create it")
    expected = expected_path.read_text()
    if actual != expected:
        diff = difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=f"{expected_path.name} (expected)",
            tofile=f"{case} (translated)",
        )
        pytest.fail(
            "translated Snapshot differs from the golden file (if the change is intended, rerun"
            " with --update-golden and review the diff):\n" + "".join(diff)
        )
    # The golden file is itself a valid Snapshot, as the proxy would decode it.
    assert snap.decode(expected).version == json.loads(expected)["version"]


def test_golden_cases_present() -> None:
    """Every golden input has its expected output, and the brief's scenarios all exist."""
    assert {p.stem for p in GOLDEN.glob("*.json")} == set(CASES)
    assert len(CASES) >= 9


# --- determinism ----------------------------------------------------------------------------------

MIXED = """\
kind: TestInput
proxy: {proxyId: frontend-0, service: frontend}
registrations:
  - {proxyId: pricing-v1-0, service: pricing, subset: v1, inbound: "127.0.0.1:7001", healthy: true}
  - {proxyId: pricing-v1-1, service: pricing, subset: v1, inbound: "127.0.0.1:7002", healthy: true}
  - {proxyId: pricing-v2-0, service: pricing, subset: v2, inbound: "127.0.0.1:7003"}
  - {proxyId: frontend-0, service: frontend, inbound: "127.0.0.1:7000", appPort: 9000}
---
apiVersion: gossamer.dev/v1alpha1
kind: Mesh
metadata: {name: mesh}
spec: {defaults: {timeouts: {request: 3s}}}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: pricing}
spec:
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: frontend}
---
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata: {name: b-split}
spec:
  parentRefs: [{name: pricing}]
  rules:
    - backendRefs:
        - {name: pricing, subset: v1, weight: 90}
        - {name: pricing, subset: v2, weight: 10}
---
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata: {name: a-header}
spec:
  parentRefs: [{name: pricing}]
  rules:
    - matches: [{headers: [{name: X-Canary, value: "yes"}]}]
      backendRefs: [{name: pricing, subset: v2}]
---
apiVersion: gossamer.dev/v1alpha1
kind: DestinationPolicy
metadata: {name: pricing}
spec:
  targetRef: {name: pricing}
  loadBalancer: {policy: PEAK_EWMA}
"""


def test_same_input_same_version() -> None:
    """Translating the same input twice gives byte-identical Snapshots with one version."""
    resources, regs, proxy = parse_case(MIXED)
    first = translate(resources, regs, proxy)
    second = translate(resources, regs, proxy)
    assert first.version
    assert first.version == second.version
    assert snap.encode(first) == snap.encode(second)


def test_input_order_does_not_matter() -> None:
    """Shuffling resources and registrations changes nothing, version included."""
    resources, regs, proxy = parse_case(MIXED)
    baseline = snap.encode(translate(resources, regs, proxy))
    rand = random.Random(7)
    for _ in range(10):
        rand.shuffle(resources)
        rand.shuffle(regs)
        assert snap.encode(translate(resources, regs, proxy)) == baseline


def test_version_follows_content() -> None:
    """An endpoint turning healthy changes the version; the version is the sealed content hash."""
    resources, regs, proxy = parse_case(MIXED)
    before = translate(resources, regs, proxy)
    regs = [msgspec.structs.replace(r, healthy=True) for r in regs]
    after = translate(resources, regs, proxy)
    assert before.version != after.version
    assert snap.seal(after).version == after.version


# --- precedence -----------------------------------------------------------------------------------

PRECEDENCE = """\
kind: TestInput
proxy: {proxyId: frontend-0, service: frontend}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: api}
---
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata: {name: zeta}
spec:
  parentRefs: [{name: api}]
  rules:
    - name: catch-all
    - matches: [{path: {type: PathPrefix, value: /v1}}, {path: {type: Exact, value: /login}}]
    - matches: [{path: {type: PathPrefix, value: /v1}, headers: [{name: A, value: "1"}]}]
---
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata: {name: alpha}
spec:
  parentRefs: [{name: api}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /v1}, method: GET}]
    - matches: [{path: {type: PathPrefix, value: /v1/items}}]
    - matches: [{path: {type: RegularExpression, value: "^/v[0-9]+/x$"}}]
    - matches:
        - path: {type: PathPrefix, value: /v1}
          headers: [{name: A, value: "1"}]
          queryParams: [{name: q, value: "1"}]
    - matches: [{path: {type: PathPrefix, value: /v1}}]
"""


def test_precedence_across_routes() -> None:
    """Exact > regex > longer prefix > method > headers > query params > route name > rule order."""
    resources, regs, proxy = parse_case(PRECEDENCE)
    rules = rules_of(translate(resources, regs, proxy), "api.default")
    order = [
        (r.name, [(m.path.type, m.path.value) if m.path else None for m in r.matches])
        for r in rules
    ]
    assert order == [
        ("default/zeta#1", [("Exact", "/login")]),
        ("default/alpha#2", [("RegularExpression", "^/v[0-9]+/x$")]),
        ("default/alpha#1", [("PathPrefix", "/v1/items")]),
        ("default/alpha#0", [("PathPrefix", "/v1")]),  # method
        ("default/alpha#3", [("PathPrefix", "/v1")]),  # header + query param
        ("default/zeta#2", [("PathPrefix", "/v1")]),  # header, the later route by name
        ("default/alpha#4", [("PathPrefix", "/v1")]),  # plain: the earlier route by name ...
        ("default/zeta#1", [("PathPrefix", "/v1")]),  # ... before the same match in zeta
        ("default/zeta#0", []),  # no matches: everything, last
    ]


def test_adjacent_matches_of_one_rule_merge() -> None:
    """Matches of one rule that sort next to each other become one rule with both matches."""
    text = PRECEDENCE.split("---\napiVersion: gossamer.dev/v1alpha1\nkind: HTTPRoute")[0]
    text += """---
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata: {name: one}
spec:
  parentRefs: [{name: api}]
  rules:
    - matches: [{path: {type: Exact, value: /a}}, {path: {type: Exact, value: /b}}]
      backendRefs: [{name: api}]
"""
    resources, regs, proxy = parse_case(text)
    (rule,) = rules_of(translate(resources, regs, proxy), "api.default")
    assert [m.path.value for m in rule.matches if m.path] == ["/a", "/b"]


def test_no_catch_all_after_route_rules() -> None:
    """Routes that match only some paths leave the rest unmatched (the proxy answers no-route)."""
    resources, regs, proxy = parse_case(PRECEDENCE)
    resources = [r for r in resources if r.metadata.name != "zeta"]
    rules = rules_of(translate(resources, regs, proxy), "api.default")
    assert all(r.matches for r in rules)
    assert "default" not in {r.name for r in rules}


# --- defaults and edges ---------------------------------------------------------------------------


def test_service_without_route_gets_default_rule_with_mesh_defaults() -> None:
    """The implicit rule sends everything to the service's cluster, with mesh timeout and retry."""
    resources, regs, proxy = parse_case(MIXED)
    (rule,) = rules_of(translate(resources, regs, proxy), "frontend.default")
    assert rule.name == "default"
    assert rule.matches == []
    assert [b.cluster for b in rule.backends] == ["frontend.default"]
    assert rule.timeouts == snap.Timeouts(request=3.0)
    assert rule.retry == DEFAULT_RETRY
    assert DEFAULT_RETRY.retry_on == ["connect-failure"]


def test_subset_membership_by_registration_or_labels() -> None:
    """A replica is in a subset by its registered subset or by carrying all the subset's labels."""
    resources, _, proxy = parse_case(MIXED)
    regs = [
        reg("p-0", "pricing", "127.0.0.1:1", subset="v1"),
        reg("p-1", "pricing", "127.0.0.1:2", labels={"version": "v2", "zone": "a"}),
        reg("p-2", "pricing", "127.0.0.1:3", labels={"version": "v3"}),
        reg("p-3", "pricing", "127.0.0.1:4", namespace="other", subset="v1"),
    ]
    s = translate(resources, regs, proxy)
    assert [e.proxy_id for e in cluster_of(s, "pricing.default.v1").endpoints] == ["p-0"]
    assert [e.proxy_id for e in cluster_of(s, "pricing.default.v2").endpoints] == ["p-1"]
    assert [e.proxy_id for e in cluster_of(s, "pricing.default").endpoints] == [
        "p-0",
        "p-1",
        "p-2",
    ]


def test_backend_to_unknown_service_gets_an_empty_cluster() -> None:
    """Every backend names a cluster in the Snapshot, even when its service is not declared."""
    resources, regs, proxy = parse_case(
        PRECEDENCE.split("---\napiVersion: gossamer.dev/v1alpha1\nkind: HTTPRoute")[0]
        + """---
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata: {name: to-ghost}
spec:
  parentRefs: [{name: api}]
  rules: [{backendRefs: [{name: ghost, namespace: elsewhere}]}]
"""
    )
    s = translate(resources, regs, proxy)
    names = {c.name for c in s.clusters}
    assert all(b.cluster in names for v in s.virtual_hosts for r in v.rules for b in r.backends)
    assert cluster_of(s, "ghost.elsewhere").endpoints == []


def test_proxy_without_registration_has_no_inbound_listener() -> None:
    """A proxy that serves no app (publish-only) gets no inbound listener, yet all the routes."""
    resources, regs, _ = parse_case(MIXED)
    s = translate(resources, regs, snap.ProxyIdentity(proxy_id="frontend-publish", service="x"))
    assert s.listeners.inbound is None
    assert s.proxy.spiffe_id == "spiffe://gossamer.local/ns/default/sa/x"
    assert {v.name for v in s.virtual_hosts} == {"frontend.default", "pricing.default"}
    own = translate(resources, regs, PROXY)
    assert own.listeners.inbound == snap.InboundListener(app_port=9000)


def test_spelled_out_defaults_seal_like_implicit_ones() -> None:
    """`namespace: default` written out, or parsed rather than defaulted, gives the same version."""
    implicit, regs, proxy = parse_case(MIXED)
    explicit, _, _ = parse_case(
        MIXED.replace("metadata: {name: pricing}", "metadata: {name: pricing, namespace: default}")
    )
    fresh = "".join(["def", "ault"])  # equal to the default, but not the same object
    regs2 = [msgspec.structs.replace(r, namespace=fresh) for r in regs]
    proxy2 = msgspec.structs.replace(proxy, namespace=fresh)
    a = translate(implicit, regs, proxy)
    b = translate(explicit, regs2, proxy2)
    assert snap.encode(a) == snap.encode(b)
    # The default namespace is left out, as the Snapshot's own default would be.
    assert b'"namespace"' not in msgspec.json.encode(cluster_of(b, "pricing.default"))


def test_consumer_routes_apply_only_in_their_namespace() -> None:
    """GAMMA: a route in another namespace than its service binds only that namespace's proxies."""
    resources, regs, _ = parse_case((GOLDEN / "namespaces.yaml").read_text())
    in_shop = snap.ProxyIdentity(proxy_id="p", service="gateway", namespace="shop")
    in_finance = snap.ProxyIdentity(proxy_id="p", service="ledger", namespace="finance")
    in_a = snap.ProxyIdentity(proxy_id="p", service="cart", namespace="a")

    shop = rules_of(translate(resources, regs, in_shop), "ledger.finance")
    assert [r.name for r in shop] == ["shop/ledger-for-shop#0"]
    finance = rules_of(translate(resources, regs, in_finance), "ledger.finance")
    assert [r.name for r in finance] == ["finance/ledger-from-finance#0"]
    a = translate(resources, regs, in_a)
    assert [b.cluster for b in rules_of(a, "pricing.default")[0].backends] == ["cart.a"]
    assert [r.name for r in rules_of(translate(resources, regs, in_shop), "pricing.default")] == [
        "default"
    ]


def test_duplicate_keys_resolve_the_same_whatever_the_order() -> None:
    """Two resources with one kind/namespace/name (never in the store) give one fixed answer."""
    resources, regs, proxy = parse_case(MIXED)
    extra, _, _ = parse_case(
        MIXED.split("---\n")[0]
        + """---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: frontend}
spec: {ports: [{port: 9999}]}
"""
    )
    forward = translate([*resources, *extra], regs, proxy)
    backward = translate([*extra, *resources], regs, proxy)
    assert snap.encode(forward) == snap.encode(backward)


# --- against the real router ----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_golden_snapshot_compiles_in_the_proxy_router(case: str) -> None:
    """Every golden Snapshot is one the proxy's route table accepts (no NACK)."""
    from gossamer.proxy.router import RouteTable

    resources, regs, proxy = parse_case((GOLDEN / f"{case}.yaml").read_text())
    table = RouteTable.compile(translate(resources, regs, proxy))
    assert table.virtual_hosts


def _route(
    s: snap.Snapshot,
    host: str,
    path: str,
    method: str = "GET",
    query: str = "",
    default_host: str | None = None,
) -> tuple[str, str] | None:
    from gossamer.http.message import RequestHead
    from gossamer.proxy.router import RouteTable

    head = RequestHead(
        method.encode(),
        path.encode(),
        query.encode(),
        [(b"host", host.encode())],
        host=host.encode(),
    )
    found = RouteTable.compile(s, default_host).match(head)
    return None if found is None else (found.virtual_host.name, found.rule.name)


def test_precedence_as_the_router_applies_it() -> None:
    """Requests land on the rule Gateway API precedence picks, through the real route table."""
    resources, regs, proxy = parse_case((GOLDEN / "path_precedence.yaml").read_text())
    s = translate(resources, regs, proxy)
    assert _route(s, "catalog", "/search") == ("catalog.default", "default/catalog-search#0")
    assert _route(s, "catalog:8080", "/api/v2/items/42") == (
        "catalog.default",
        "default/catalog-main#2",
    )
    assert _route(s, "catalog", "/api/search/q") == ("catalog.default", "default/catalog-search#0")
    assert _route(s, "catalog", "/api/x", "POST") == ("catalog.default", "default/catalog-search#1")
    assert _route(s, "catalog", "/api/x", query="engine=v2") == (
        "catalog.default",
        "default/catalog-search#1",
    )
    assert _route(s, "catalog", "/api/x") == ("catalog.default", "default/catalog-main#1")
    assert _route(s, "catalog.default.svc.cluster.local", "/x") == (
        "catalog.default",
        "default/catalog-main#0",
    )


def test_host_names_as_the_router_applies_them() -> None:
    """Bare names resolve in the proxy's namespace first; ambiguous ones find no route."""
    resources, regs, proxy = parse_case((GOLDEN / "namespaces.yaml").read_text())
    s = translate(resources, regs, proxy)
    assert _route(s, "pricing", "/") == ("pricing.shop", "shop/pricing#1")
    assert _route(s, "Pricing.Default:8080", "/") == ("pricing.default", "default")
    assert _route(s, "ledger", "/") == ("ledger.finance", "shop/ledger-for-shop#0")
    assert _route(s, "prices.example.com", "/legacy") == ("pricing.shop", "shop/pricing#0")
    assert _route(s, "cart", "/") is None
    assert _route(s, "cart.b", "/") == ("cart.b", "default")


def test_a_proxy_without_an_app_is_never_an_endpoint() -> None:
    """A `publish` front door registers with appPort 0: calls to its service must not reach it."""
    resources = [
        models.Service.model_validate(
            {"apiVersion": "gossamer.dev/v1alpha1", "kind": "Service", "metadata": {"name": "web"}}
        )
    ]
    regs = [
        reg("web-0", "web", "127.0.0.1:1001"),
        reg("web-publish", "web", "127.0.0.1:1002", app_port=0),
    ]
    s = translate(resources, regs, PROXY)
    assert [e.proxy_id for e in cluster_of(s, "web.default").endpoints] == ["web-0"]


def test_a_front_door_reaches_its_service_and_nothing_else() -> None:
    """The published port's proxy (`--default-host frontend`) is no open proxy into the mesh.

    Any host that names no service (the published address itself) and frontend's own names reach
    frontend; a host naming another service, or one of its route hostnames, gets no-route.
    """
    resources, regs, proxy = parse_case((GOLDEN / "publish_front_door.yaml").read_text())
    s = translate(resources, regs, proxy)

    def route(host: str, path: str = "/") -> tuple[str, str] | None:
        return _route(s, host, path, default_host="frontend")

    assert route("127.0.0.1:34641") == ("frontend.default", "default/frontend-canary#1")
    assert route("localhost", "/beta/x") == ("frontend.default", "default/frontend-canary#0")
    assert route("frontend.default.svc:8080") == ("frontend.default", "default/frontend-canary#1")
    for other in ("pricing", "pricing.default:8080", "prices.example.com", "catalog.default.svc"):
        assert route(other) is None, other
    assert {c.name for c in s.clusters} == {"frontend.default", "frontend.default.canary"}
    assert s.listeners.inbound is None


def test_the_publish_label_only_narrows_the_proxy_that_carries_it() -> None:
    """Sidecars keep every service; a front door for a service that does not exist serves none."""
    resources, regs, _ = parse_case((GOLDEN / "publish_front_door.yaml").read_text())
    plain = snap.ProxyIdentity(proxy_id="frontend-0", service="frontend")
    sidecar = translate(resources, regs, plain)
    assert _route(sidecar, "pricing", "/") == ("pricing.default", "default/pricing-host#0")
    assert "pricing.default.v1" in {c.name for c in sidecar.clusters}

    ghost = snap.ProxyIdentity(
        proxy_id="ghost-publish", service="ghost", labels={PUBLISH_LABEL: "ghost"}
    )
    s = translate(resources, regs, ghost)
    assert all(not v.rules for v in s.virtual_hosts)
    assert s.clusters == []
    assert _route(s, "frontend", "/", default_host="ghost") is None
