"""AuthorizationPolicy: the model's forms and normalization, its errors with line:col, and
validate's reference checks (an unknown target service with a suggestion, unknown ports)."""

from __future__ import annotations

from textwrap import dedent

import pytest

from gossamer.config import models
from gossamer.config.loader import collect_text, load_text
from gossamer.config.validate import check

HEAD = """\
apiVersion: gossamer.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
"""  # the spec starts on line 4


def _policy(spec: str) -> models.AuthorizationPolicy:
    (loaded,) = load_text(HEAD + dedent(spec), "authz.yaml")
    assert isinstance(loaded.resource, models.AuthorizationPolicy)
    return loaded.resource


def _errors(spec: str) -> list[str]:
    loaded, problems = collect_text(HEAD + dedent(spec), "authz.yaml")
    assert loaded == []
    return [str(p) for p in problems]


def test_defaults_allow_with_no_rules_and_no_target() -> None:
    """An empty spec is an ALLOW policy with no rules for the whole namespace (Istio: deny all)."""
    policy = _policy("spec: {}\n")
    assert policy.key == "AuthorizationPolicy/shop/p"
    assert policy.spec.action == "ALLOW"
    assert policy.spec.rules == []
    assert policy.spec.target_ref is None


def test_istio_forms_are_normalized() -> None:
    """Short principals get `spiffe://`; path strings become typed matches; ports may be strings."""
    policy = _policy(
        """\
        spec:
          targetRef: {kind: Service, name: pricing}
          action: DENY
          rules:
            - from:
                - source:
                    principals:
                      [shop.local/ns/shop/sa/web, "spiffe://shop.local/ns/ops/*", "*/sa/cron", "*"]
                    notNamespaces: ["prod-*", "*-test", dev]
              to:
                - operation:
                    paths: [/exact, /api/*, "*.png", "*", {type: PathPrefix, value: /v1}]
                    notMethods: [DELETE]
                    ports: ["8080", 9090]
        """
    )
    (rule,) = policy.spec.rules
    source = rule.from_[0].source
    assert source.principals == [
        "spiffe://shop.local/ns/shop/sa/web",
        "spiffe://shop.local/ns/ops/*",
        "*/sa/cron",
        "*",
    ]
    assert source.not_namespaces == ["prod-*", "*-test", "dev"]
    op = rule.to[0].operation
    assert [(p.type, p.value) for p in op.paths] == [
        ("Exact", "/exact"),
        ("Prefix", "/api/"),
        ("Suffix", ".png"),
        ("Prefix", ""),
        ("PathPrefix", "/v1"),
    ]
    assert op.ports == [8080, 9090]
    assert op.not_methods == ["DELETE"]
    # `from` on the wire, in both directions.
    dumped = policy.model_dump(by_alias=True)
    assert "from" in dumped["spec"]["rules"][0]


ERRORS = {
    "bad principal": (
        """\
        spec:
          rules:
            - from:
                - source: {principals: ["spiffe://Shop.local/ns/a/sa/b"]}
        """,
        "authz.yaml:7:33: spec.rules[0].from[0].source.principals[0]: principal "
        "'spiffe://Shop.local/ns/a/sa/b' is not a SPIFFE ID: SPIFFE ID "
        "'spiffe://Shop.local/ns/a/sa/b': trust domain 'Shop.local' has 'S': only lower-case "
        "letters, digits, '.', '-' and '_' are allowed",
    ),
    "wildcard in the middle": (
        """\
        spec:
          rules:
            - from:
                - source: {principals: ["spiffe://td/ns/*/sa/web"]}
        """,
        "authz.yaml:7:33: spec.rules[0].from[0].source.principals[0]: principal "
        "'spiffe://td/ns/*/sa/web': '*' is only allowed alone, as the first or as the last "
        "character",
    ),
    "lower-case method": (
        """\
        spec:
          rules:
            - to:
                - operation: {methods: [GET, post]}
        """,
        "authz.yaml:7:38: spec.rules[0].to[0].operation.methods[1]: method 'post': HTTP "
        "methods are upper-case, write 'POST'",
    ),
    "not a method": (
        """\
        spec:
          rules:
            - to:
                - operation: {methods: ["GET /"]}
        """,
        "authz.yaml:7:33: spec.rules[0].to[0].operation.methods[0]: method 'GET /' is not an "
        "HTTP method such as GET or POST",
    ),
    "unknown action": (
        """\
        spec:
          action: REJECT
        """,
        "authz.yaml:5:3: spec.action: must be one of: ALLOW, DENY, AUDIT",
    ),
    "unsupported field": (
        """\
        spec:
          rules:
            - to:
                - operation: {paths: [/a]}
              when:
                - key: request.headers[x]
                  values: ["1"]
        """,
        "authz.yaml:8:7: spec.rules[0].when: unknown field 'when'",
    ),
    "misspelt field": (
        """\
        spec:
          rules:
            - from:
                - source: {notPrincipal: ["*"]}
        """,
        "authz.yaml:7:20: spec.rules[0].from[0].source.notPrincipal: unknown field "
        "'notPrincipal' (did you mean 'notPrincipals'?)",
    ),
    "bad path": (
        """\
        spec:
          rules:
            - to:
                - operation: {notPaths: [api/v1]}
        """,
        "authz.yaml:7:34: spec.rules[0].to[0].operation.notPaths[0].value: Exact paths must "
        "start with '/' (or '*' for a suffix)",
    ),
    "bad port": (
        """\
        spec:
          rules:
            - to:
                - operation: {ports: [0]}
        """,
        "authz.yaml:7:31: spec.rules[0].to[0].operation.ports[0]: must be >= 1",
    ),
    "empty source": (
        """\
        spec:
          rules:
            - from: [{source: {}}]
        """,
        "authz.yaml:6:15: spec.rules[0].from[0].source: source must set at least one of "
        "principals, notPrincipals, namespaces, notNamespaces (leave out `from` to match every "
        "source)",
    ),
    "target in another namespace": (
        """\
        spec:
          targetRef: {name: pricing, namespace: other}
        """,
        "authz.yaml:4:1: spec: targetRef.namespace 'other': an AuthorizationPolicy applies only "
        "in its own namespace ('shop'); create it there",
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_config_errors_name_the_place(case: str) -> None:
    """Each bad value is refused by the loader with file:line:col, its path and a clear reason."""
    spec, expected = ERRORS[case]
    assert _errors(spec) == [expected]


MESH = """\
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: pricing, namespace: shop}
spec:
  ports: [{port: 8080}, {name: admin, port: 9090}]
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: catalog, namespace: shop}
---
"""  # 10 lines: the policy starts on line 11


def _check(policy: str) -> list[str]:
    return [str(p) for p in check(load_text(MESH + dedent(policy), "mesh.yaml"))]


def test_unknown_target_with_suggestion() -> None:
    """A targetRef to a service nobody defined is reported, with the near name in its namespace."""
    problems = _check(
        """\
        apiVersion: gossamer.dev/v1alpha1
        kind: AuthorizationPolicy
        metadata: {name: p, namespace: shop}
        spec:
          targetRef: {name: pricng}
        """
    )
    assert problems == [
        "mesh.yaml:15:15: spec.targetRef.name: unknown service 'pricng' (did you mean 'pricing'?)"
    ]


def test_target_in_other_namespace_is_unknown() -> None:
    """A policy applies in its own namespace: a service of that name elsewhere does not count."""
    problems = _check(
        """\
        apiVersion: gossamer.dev/v1alpha1
        kind: AuthorizationPolicy
        metadata: {name: p, namespace: default}
        spec:
          targetRef: {name: pricing}
        """
    )
    assert problems == ["mesh.yaml:15:15: spec.targetRef.name: unknown service 'pricing'"]


def test_ports_must_be_the_targets() -> None:
    """ports and notPorts of a targeted policy must be ports of the service."""
    problems = _check(
        """\
        apiVersion: gossamer.dev/v1alpha1
        kind: AuthorizationPolicy
        metadata: {name: p, namespace: shop}
        spec:
          targetRef: {name: pricing}
          rules:
            - to:
                - operation: {ports: [8080, 8081], notPorts: [9090]}
        """
    )
    assert problems == [
        "mesh.yaml:18:37: spec.rules[0].to[0].operation.ports[1]: service 'pricing' has no "
        "port 8081 (its ports: 8080, 9090)"
    ]


def test_namespace_wide_and_known_targets_are_fine() -> None:
    """No targetRef, or a targetRef to a defined service: nothing to report."""
    problems = _check(
        """\
        apiVersion: gossamer.dev/v1alpha1
        kind: AuthorizationPolicy
        metadata: {name: all, namespace: shop}
        spec:
          action: DENY
          rules: [{from: [{source: {notPrincipals: ["*"]}}]}]
        ---
        apiVersion: gossamer.dev/v1alpha1
        kind: AuthorizationPolicy
        metadata: {name: catalog, namespace: shop}
        spec:
          targetRef: {name: catalog}
          rules: [{to: [{operation: {ports: [8080]}}]}]
        """
    )
    assert problems == []
