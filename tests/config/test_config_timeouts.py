"""Timeouts and durations: zero where zero means nothing sensible is refused, and the Gateway API
rule backendRequest <= request."""

from __future__ import annotations

from typing import Any

import pytest

from gossamer.config.errors import ConfigError
from gossamer.config.loader import load_objects
from gossamer.config.validate import validate_apply

API = "gossamer.dev/v1alpha1"


def resource(kind: str, spec: dict[str, Any], name: str = "x") -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": spec}


def route_rule(**rule: Any) -> dict[str, Any]:
    return resource("HTTPRoute", {"parentRefs": [{"name": "pricing"}], "rules": [rule]})


def problems(obj: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        load_objects([obj])
    return [(p.path, p.message) for p in info.value.problems]


ZERO = "must be more than 0s: a zero duration is not allowed here"


@pytest.mark.parametrize(
    ("obj", "path"),
    [
        (route_rule(retry={"perTryTimeout": "0s"}), "spec.rules[0].retry.perTryTimeout"),
        (route_rule(retry={"perTryTimeout": 0}), "spec.rules[0].retry.perTryTimeout"),
        (
            resource("Mesh", {"defaults": {"timeouts": {"connect": "0ms"}}}),
            "spec.defaults.timeouts.connect",
        ),
        (
            resource("Mesh", {"defaults": {"timeouts": {"idle": "0s"}}}),
            "spec.defaults.timeouts.idle",
        ),
        (
            resource("Mesh", {"defaults": {"retryBudget": {"ttl": "0s"}}}),
            "spec.defaults.retryBudget.ttl",
        ),
        (
            resource("Service", {"readinessProbe": {"interval": "0s"}}),
            "spec.readinessProbe.interval",
        ),
        (
            resource("Service", {"readinessProbe": {"timeout": "0s"}}),
            "spec.readinessProbe.timeout",
        ),
        (
            resource(
                "DestinationPolicy",
                {"targetRef": {"name": "p"}, "connectionPool": {"connectTimeout": "0s"}},
            ),
            "spec.connectionPool.connectTimeout",
        ),
        (
            resource(
                "DestinationPolicy",
                {"targetRef": {"name": "p"}, "connectionPool": {"idleTimeout": "0s"}},
            ),
            "spec.connectionPool.idleTimeout",
        ),
    ],
)
def test_zero_is_refused_where_it_makes_no_sense(obj: dict[str, Any], path: str) -> None:
    assert problems(obj) == [(f"resources[0].{path}", ZERO)]


def test_zero_request_timeouts_still_mean_none() -> None:
    """Gateway API: 0s turns a request or backendRequest timeout off; the Mesh default too."""
    mesh = resource("Mesh", {"defaults": {"timeouts": {"request": "0s"}}})
    rule = route_rule(timeouts={"request": "0s", "backendRequest": "0s"})
    loaded = load_objects([mesh, rule])
    assert len(loaded) == 2


def test_backend_request_must_fit_in_request() -> None:
    assert problems(route_rule(timeouts={"request": "500ms", "backendRequest": "1s"})) == [
        (
            "resources[0].spec.rules[0].timeouts.backendRequest",
            "backendRequest (1s) must not be longer than request (500ms), which covers every try",
        )
    ]
    # Equal is fine, and so is any backendRequest under a disabled (0s) request timeout.
    load_objects([route_rule(timeouts={"request": "1s", "backendRequest": "1s"})])
    load_objects([route_rule(timeouts={"request": "0s", "backendRequest": "10s"})])
    load_objects([route_rule(timeouts={"backendRequest": "10s"})])


def test_apply_reports_document_and_reference_problems_at_once() -> None:
    """validate_apply: a failed document takes no part, the others are still cross-checked."""
    objs = [
        resource("Service", {"replicas": -1}, name="pricing"),
        route_rule(backendRefs=[{"name": "pricng"}]),
        resource("HTTPRoute", {"parentRefs": [{"name": "pricing"}]}, name="y"),
        resource("HTTPRoute", {"parentRefs": [{"name": "nope"}], "hostnames": ["a b"]}, name="z"),
    ]
    objs[1]["spec"]["parentRefs"] = [{"name": "catalog"}]
    with pytest.raises(ConfigError) as info:
        validate_apply(objs, [])
    assert [(p.path, p.message) for p in info.value.problems] == [
        ("resources[0].spec.replicas", "must be >= 0"),
        ("resources[1].spec.parentRefs[0].name", "unknown service 'catalog'"),
        (
            "resources[1].spec.rules[0].backendRefs[0].name",
            "unknown service 'pricng' (did you mean 'pricing'?)",
        ),
        (
            "resources[3].spec.hostnames[0]",
            "invalid hostname 'a b': use DNS labels of letters, digits and '-' separated by '.', "
            "optionally starting with '*.' (no port, no spaces)",
        ),
    ]
