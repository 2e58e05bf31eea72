"""The resource models: a realistic shop loads with the values it says; bad values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gossamer.config import models
from gossamer.config.loader import load_files

SHOP = Path(__file__).parent / "fixtures" / "shop.yaml"


def _by_key() -> dict[str, models.AnyResource]:
    return {r.key: r.resource for r in load_files([SHOP])}


def test_shop_loads_every_resource() -> None:
    assert list(_by_key()) == [
        "Mesh/default/shop",
        "Service/default/frontend",
        "Service/default/catalog",
        "Service/default/pricing",
        "Service/default/inventory",
        "HTTPRoute/default/pricing",
        "DestinationPolicy/default/inventory",
    ]


def test_shop_mesh_defaults() -> None:
    mesh = _by_key()["Mesh/default/shop"]
    assert isinstance(mesh, models.Mesh)
    assert mesh.spec.trust_domain == "shop.local"
    assert mesh.spec.defaults.timeouts.connect == 1.0
    assert mesh.spec.defaults.timeouts.request == 10.0
    assert mesh.spec.defaults.timeouts.idle == 60.0  # not written: the default
    assert mesh.spec.defaults.retry_budget.min_per_second == 5
    assert mesh.spec.defaults.load_balancer == "LEAST_REQUEST"


def test_shop_services() -> None:
    res = _by_key()
    frontend = res["Service/default/frontend"]
    assert isinstance(frontend, models.Service)
    assert frontend.spec.command == ["python", "-m", "shop.frontend"]  # a string is split
    assert frontend.spec.publish == 0
    assert frontend.spec.env == {"SHOP_TITLE": "Gossamer Shop"}
    assert frontend.spec.readiness_probe is not None
    assert frontend.spec.readiness_probe.path == "/healthz"
    catalog = res["Service/default/catalog"]
    assert isinstance(catalog, models.Service)
    assert catalog.spec.replicas == 2
    assert catalog.spec.working_dir == "./services"
    assert catalog.spec.readiness_probe is not None
    assert catalog.spec.readiness_probe.interval == 0.5
    assert catalog.spec.ports == [models.ServicePort(name="http", port=8080, protocol="http")]
    pricing = res["Service/default/pricing"]
    assert isinstance(pricing, models.Service)
    assert [(s.name, s.labels, s.replicas) for s in pricing.spec.subsets] == [
        ("v1", {"version": "v1"}, 2),
        ("v2", {"version": "v2"}, 1),
    ]
    assert pricing.spec.subsets[1].env == {"PRICING_DISCOUNT": "0.1"}


def test_shop_route_split_with_retries_and_timeouts() -> None:
    route = _by_key()["HTTPRoute/default/pricing"]
    assert isinstance(route, models.HTTPRoute)
    assert route.spec.hostnames == ["prices.shop.local"]
    beta, split = route.spec.rules
    assert beta.matches[0].headers == [models.HTTPHeaderMatch(name="x-beta", value="true")]
    assert [(b.subset, b.weight) for b in split.backend_refs] == [("v1", 90), ("v2", 10)]
    assert split.matches[0].path == models.HTTPPathMatch(type="PathPrefix", value="/price")
    assert split.matches[0].method == "GET"
    assert split.filters[0].request_header_modifier is not None
    assert split.timeouts == models.HTTPRouteTimeouts(request=2.0, backend_request=0.5)
    assert split.retry is not None
    assert split.retry.attempts == 3
    assert split.retry.per_try_timeout == 0.25
    assert split.retry.retry_on == ["5xx", "connect-failure", "reset"]
    assert split.retry.backoff == models.HTTPBackoff(base_interval=0.025, max_interval=1.0)


def test_shop_destination_policy() -> None:
    policy = _by_key()["DestinationPolicy/default/inventory"]
    assert isinstance(policy, models.DestinationPolicy)
    lb = policy.spec.load_balancer
    assert lb is not None
    assert lb.policy == "RING_HASH"
    assert lb.consistent_hash == models.ConsistentHash(http_header_name="x-user")
    pool = policy.spec.connection_pool
    assert pool is not None
    assert (pool.max_connections, pool.max_pending_requests) == (100, 50)
    assert (pool.max_requests_per_connection, pool.idle_timeout) == (1000, 30.0)
    assert policy.spec.retry_budget == models.RetryBudgetSpec(ratio=0.1, min_per_second=3)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h2m3s4ms", 3723.004),
        ("1.5s", 1.5),
        (" 2s ", 2.0),
        (3, 3.0),
        (0.5, 0.5),
        ("0s", 0.0),
    ],
)
def test_duration_parsing(text: object, seconds: float) -> None:
    assert models.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5", "5x", "s", "-1s", "1 s", "ms5", True, None, [1], -1])
def test_duration_parsing_refuses(bad: object) -> None:
    with pytest.raises(ValueError, match=r"duration|negative"):
        models.parse_duration(bad)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (5.0, "5s"), (0.0, "0s"), (1.5, "1.5s"), (90.0, "90s"), (0.0005, "0.5ms")],
)
def test_duration_formatting_round_trips(seconds: float, text: str) -> None:
    assert models.format_duration(seconds) == text
    assert models.parse_duration(text) == seconds


def test_durations_serialize_back_to_text() -> None:
    timeouts = models.HTTPRouteTimeouts.model_validate({"request": "2s", "backendRequest": "250ms"})
    assert timeouts.model_dump(by_alias=True) == {"request": "2s", "backendRequest": "250ms"}


def _route_with_match(match: dict[str, object]) -> dict[str, object]:
    return {
        "apiVersion": models.API_VERSION,
        "kind": "HTTPRoute",
        "metadata": {"name": "r"},
        "spec": {"parentRefs": [{"name": "a"}], "rules": [{"matches": [match]}]},
    }


@pytest.mark.parametrize(
    "match",
    [
        {"path": {"type": "RegularExpression", "value": "/items/(\\d+"}},
        {"headers": [{"type": "RegularExpression", "name": "x-a", "value": "[a-"}]},
        {"queryParams": [{"type": "RegularExpression", "name": "q", "value": "*x"}]},
    ],
)
def test_invalid_regular_expressions_are_refused_by_the_model(match: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="invalid regular expression"):
        models.HTTPRoute.model_validate(_route_with_match(match))


def test_valid_regular_expressions_and_exact_values_pass() -> None:
    route = models.HTTPRoute.model_validate(
        _route_with_match(
            {
                "path": {"type": "RegularExpression", "value": "/items/\\d+"},
                "headers": [{"name": "x-a", "value": "[a-"}],  # Exact: not a regex
            }
        )
    )
    assert route.spec.rules[0].matches[0].headers[0].value == "[a-"


def test_prefix_path_must_be_absolute() -> None:
    with pytest.raises(ValidationError, match="a PathPrefix path must start with '/'"):
        models.HTTPRoute.model_validate(_route_with_match({"path": {"value": "api"}}))


def test_header_names_must_be_tokens() -> None:
    with pytest.raises(ValidationError, match="invalid header name 'x user'"):
        models.HTTPHeader(name="x user", value="1")


def test_subset_command_string_is_split() -> None:
    subset = models.Subset.model_validate({"name": "v2", "command": "python -m app --flag 'a b'"})
    assert subset.command == ["python", "-m", "app", "--flag", "a b"]


def test_unclosed_quote_in_command_is_an_error() -> None:
    with pytest.raises(ValidationError, match="cannot split command"):
        models.ServiceSpec.model_validate({"command": "python -c 'oops"})


def test_backoff_base_above_max_is_refused() -> None:
    with pytest.raises(ValidationError, match="baseInterval must not be greater than maxInterval"):
        models.HTTPBackoff.model_validate({"baseInterval": "2s", "maxInterval": "1s"})


def test_retriable_status_codes_go_with_retry_on() -> None:
    ok = models.HTTPRouteRetry.model_validate(
        {"retryOn": ["retriable-status-codes"], "retriableStatusCodes": [503]}
    )
    assert ok.retriable_status_codes == [503]
    with pytest.raises(ValidationError, match="needs retriableStatusCodes"):
        models.HTTPRouteRetry.model_validate({"retryOn": ["retriable-status-codes"]})
    with pytest.raises(ValidationError, match="only used when retryOn lists"):
        models.HTTPRouteRetry.model_validate({"retriableStatusCodes": [503]})


def test_duplicate_port_numbers_are_refused() -> None:
    with pytest.raises(ValidationError, match="duplicate port 8080"):
        models.ServiceSpec.model_validate(
            {"ports": [{"name": "a", "port": 8080}, {"name": "b", "port": 8080}]}
        )


def test_ring_hash_needs_exactly_one_key() -> None:
    with pytest.raises(ValidationError, match="set exactly one of httpHeaderName or httpCookie"):
        models.ConsistentHash.model_validate({"httpHeaderName": "x", "httpCookie": "c"})
    lb = models.LoadBalancerSpec.model_validate(
        {"policy": "RING_HASH", "consistentHash": {"httpCookie": "session"}}
    )
    assert lb.consistent_hash is not None
    assert lb.consistent_hash.http_cookie == "session"


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0, max_value=86_400 * 7, allow_nan=False))
def test_duration_text_round_trips(seconds: float) -> None:
    assert models.parse_duration(models.format_duration(seconds)) == pytest.approx(
        seconds, rel=1e-5, abs=1e-9
    )
