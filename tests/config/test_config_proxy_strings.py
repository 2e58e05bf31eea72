"""Every config string that reaches the proxy is checked by the models with the router's own rules.

A resource the control plane accepts but every proxy NACKs freezes config for the whole mesh, so:
bad values are refused by the loader at their field path, and whatever the loader accepts compiles
in the router.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gossamer import snapshot as snap
from gossamer.config.errors import ConfigError
from gossamer.config.loader import load_objects
from gossamer.control.translate import translate
from gossamer.http import syntax
from gossamer.proxy.router import RouteTable

API = "gossamer.dev/v1alpha1"
SERVICE = {"apiVersion": API, "kind": "Service", "metadata": {"name": "pricing"}}
PROXY = snap.ProxyIdentity(proxy_id="p-0", service="pricing")


def route(**spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"parentRefs": [{"name": "pricing"}], **spec}
    return {"apiVersion": API, "kind": "HTTPRoute", "metadata": {"name": "r"}, "spec": body}


def rule_filter(kind: str, config: dict[str, Any]) -> dict[str, Any]:
    key = "urlRewrite" if kind == "URLRewrite" else kind[0].lower() + kind[1:]
    return route(rules=[{"filters": [{"type": kind, key: config}], "backendRefs": []}])


def headers(kind: str, op: str, value: Any) -> dict[str, Any]:
    return rule_filter(kind, {op: value})


def path_match(kind: str, value: str) -> dict[str, Any]:
    return route(rules=[{"matches": [{"path": {"type": kind, "value": value}}]}])


def header_match(name: str, value: str, kind: str = "Exact") -> dict[str, Any]:
    match = {"headers": [{"type": kind, "name": name, "value": value}]}
    return route(rules=[{"matches": [match]}])


def modifier(kind: str, value: str) -> dict[str, Any]:
    field = "replaceFullPath" if kind == "ReplaceFullPath" else "replacePrefixMatch"
    return {"type": kind, field: value}


def retry(per_try: str) -> dict[str, Any]:
    return route(rules=[{"retry": {"perTryTimeout": per_try}}])


R = "resources[0].spec"
F = f"{R}.rules[0].filters[0]"
# (resource, the path the problem must be reported at, a fragment of its message)
BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("hostname with space", route(hostnames=["a b"]), f"{R}.hostnames[0]", "invalid hostname"),
    ("hostname with port", route(hostnames=["a.example:80"]), f"{R}.hostnames[0]", "no port"),
    ("hostname with slash", route(hostnames=["a/b"]), f"{R}.hostnames[0]", "invalid hostname"),
    ("empty hostname", route(hostnames=[""]), f"{R}.hostnames[0]", "invalid hostname"),
    ("bad wildcard", route(hostnames=["a.*.b"]), f"{R}.hostnames[0]", "invalid hostname"),
    ("long label", route(hostnames=["a" * 64 + ".b"]), f"{R}.hostnames[0]", "invalid hostname"),
    (
        "request header value CRLF",
        headers("RequestHeaderModifier", "set", [{"name": "x", "value": "v\r\nx-injected: 1"}]),
        f"{F}.requestHeaderModifier.set[0].value",
        "CR, LF or NUL",
    ),
    (
        "response header value LF",
        headers("ResponseHeaderModifier", "add", [{"name": "x", "value": "a\nb"}]),
        f"{F}.responseHeaderModifier.add[0].value",
        "CR, LF or NUL",
    ),
    (
        "header value NUL",
        headers("RequestHeaderModifier", "add", [{"name": "x", "value": "a\0b"}]),
        f"{F}.requestHeaderModifier.add[0].value",
        "CR, LF or NUL",
    ),
    (
        "header value not latin-1",
        headers("RequestHeaderModifier", "add", [{"name": "x", "value": "\u2603"}]),
        f"{F}.requestHeaderModifier.add[0].value",
        "not latin-1",
    ),
    (
        "header name with space",
        headers("RequestHeaderModifier", "set", [{"name": "x y", "value": "1"}]),
        f"{F}.requestHeaderModifier.set[0].name",
        "invalid header name",
    ),
    (
        "header name to remove",
        headers("ResponseHeaderModifier", "remove", ["bad:name"]),
        f"{F}.responseHeaderModifier.remove[0]",
        "invalid header name",
    ),
    (
        "header set twice",
        headers(
            "RequestHeaderModifier",
            "set",
            [{"name": "X-A", "value": "1"}, {"name": "x-a", "value": "2"}],
        ),
        f"{F}.requestHeaderModifier.set",
        "set twice",
    ),
    (
        "URLRewrite hostname",
        rule_filter("URLRewrite", {"hostname": "a b"}),
        f"{F}.urlRewrite.hostname",
        "invalid hostname",
    ),
    (
        "URLRewrite full path CRLF",
        rule_filter("URLRewrite", {"path": modifier("ReplaceFullPath", "x\r\ny")}),
        f"{F}.urlRewrite.path.replaceFullPath",
        "must start with '/'",
    ),
    (
        "URLRewrite full path control",
        rule_filter("URLRewrite", {"path": modifier("ReplaceFullPath", "/x\ty")}),
        f"{F}.urlRewrite.path.replaceFullPath",
        "control characters",
    ),
    (
        "URLRewrite prefix with query",
        rule_filter("URLRewrite", {"path": modifier("ReplacePrefixMatch", "/a?b")}),
        f"{F}.urlRewrite.path.replacePrefixMatch",
        "'?'",
    ),
    (
        "RequestRedirect hostname",
        rule_filter("RequestRedirect", {"hostname": "a/b"}),
        f"{F}.requestRedirect.hostname",
        "invalid hostname",
    ),
    (
        "RequestRedirect hostname with port",
        rule_filter("RequestRedirect", {"hostname": "a:80"}),
        f"{F}.requestRedirect.hostname",
        "invalid hostname",
    ),
    (
        "RequestRedirect full path",
        rule_filter("RequestRedirect", {"path": modifier("ReplaceFullPath", "x\r\ny")}),
        f"{F}.requestRedirect.path.replaceFullPath",
        "must start with '/'",
    ),
    (
        "RequestRedirect prefix",
        rule_filter("RequestRedirect", {"path": modifier("ReplacePrefixMatch", "/a#b")}),
        f"{F}.requestRedirect.path.replacePrefixMatch",
        "'#'",
    ),
    ("Exact path", path_match("Exact", "/a\nb"), f"{R}.rules[0].matches[0].path.value", "control"),
    (
        "PathPrefix query",
        path_match("PathPrefix", "/a?b=1"),
        f"{R}.rules[0].matches[0].path.value",
        "'?'",
    ),
    (
        "regex path bad",
        path_match("RegularExpression", "/(a"),
        f"{R}.rules[0].matches[0].path.value",
        "invalid regular expression",
    ),
    (
        # Valid for str patterns, refused for the bytes patterns the router compiles.
        "regex unicode flag",
        path_match("RegularExpression", "(?u)/a"),
        f"{R}.rules[0].matches[0].path.value",
        "invalid regular expression",
    ),
    (
        "header match name",
        header_match("x y", "1"),
        f"{R}.rules[0].matches[0].headers[0].name",
        "invalid header name",
    ),
    (
        "header match regex",
        header_match("x", "[", "RegularExpression"),
        f"{R}.rules[0].matches[0].headers[0].value",
        "invalid regular expression",
    ),
    (
        "two redirects",
        route(
            rules=[
                {
                    "filters": [
                        {"type": "RequestRedirect", "requestRedirect": {"port": 8443}},
                        {"type": "RequestRedirect", "requestRedirect": {"port": 9443}},
                    ]
                }
            ]
        ),
        f"{R}.rules[0].filters",
        "only one RequestRedirect",
    ),
    (
        "redirect and rewrite",
        route(
            rules=[
                {
                    "filters": [
                        {"type": "RequestRedirect", "requestRedirect": {"port": 8443}},
                        {"type": "URLRewrite", "urlRewrite": {"hostname": "a"}},
                    ]
                }
            ]
        ),
        f"{R}.rules[0].filters",
        "cannot both be set",
    ),
    (
        "redirect on a backend",
        route(
            rules=[
                {
                    "backendRefs": [
                        {
                            "name": "pricing",
                            "filters": [
                                {"type": "RequestRedirect", "requestRedirect": {"port": 8443}}
                            ],
                        }
                    ]
                }
            ]
        ),
        f"{R}.rules[0].backendRefs[0].filters",
        "not supported on a backendRef",
    ),
    (
        "prefix rewrite with an Exact match",
        route(
            rules=[
                {
                    "matches": [{"path": {"type": "Exact", "value": "/a"}}],
                    "filters": [
                        {
                            "type": "URLRewrite",
                            "urlRewrite": {"path": modifier("ReplacePrefixMatch", "/b")},
                        }
                    ],
                }
            ]
        ),
        f"{R}.rules[0].filters",
        "needs every match of the rule to use a PathPrefix",
    ),
    (
        "prefix rewrite on a backend with a regex match",
        route(
            rules=[
                {
                    "matches": [{"path": {"type": "RegularExpression", "value": "/a.*"}}],
                    "backendRefs": [
                        {
                            "name": "pricing",
                            "filters": [
                                {
                                    "type": "URLRewrite",
                                    "urlRewrite": {"path": modifier("ReplacePrefixMatch", "/")},
                                }
                            ],
                        }
                    ],
                }
            ]
        ),
        f"{R}.rules[0].backendRefs",
        "PathPrefix",
    ),
    (
        "all weights zero",
        route(rules=[{"backendRefs": [{"name": "pricing", "weight": 0}]}]),
        f"{R}.rules[0].backendRefs",
        "all backendRefs have weight 0",
    ),
    ("zero perTryTimeout", retry("0s"), f"{R}.rules[0].retry.perTryTimeout", "more than 0s"),
    (
        "backendRequest over request",
        route(rules=[{"timeouts": {"request": "1s", "backendRequest": "2s"}}]),
        f"{R}.rules[0].timeouts.backendRequest",
        "must not be longer than request (1s)",
    ),
]


@pytest.mark.parametrize(
    ("resource", "path", "fragment"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_strings_are_refused_at_their_field(
    resource: dict[str, Any], path: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_objects([resource])
    problems = info.value.problems
    assert [p.path for p in problems] == [path], problems
    assert fragment in problems[0].message


def _router_accepts(resource: dict[str, Any]) -> None:
    """Translate what the loader accepted and compile it the way a proxy does."""
    loaded = load_objects([SERVICE, resource])
    snapshot = translate([item.resource for item in loaded], [], PROXY)
    RouteTable.compile(snapshot)


def _with_backend(resource: dict[str, Any]) -> dict[str, Any]:
    """A BAD case made valid: every string in it replaced by a harmless one."""
    fixed = copy.deepcopy(resource)
    spec = fixed["spec"]
    spec["hostnames"] = ["prices.example", "*.shop.example", "Upper.Example"]
    spec["rules"] = [
        {
            "matches": [
                {"path": {"type": "PathPrefix", "value": "/caf\u00e9 x"}},
                {"path": {"type": "PathPrefix", "value": "/"}},
            ],
            "filters": [
                {
                    "type": "RequestHeaderModifier",
                    "requestHeaderModifier": {
                        "set": [{"name": "X-A", "value": " padded\t"}],
                        "add": [{"name": "x-b", "value": "caf\u00e9"}],
                        "remove": ["x-c"],
                    },
                },
                {
                    "type": "URLRewrite",
                    "urlRewrite": {
                        "hostname": "Internal.Example",
                        "path": modifier("ReplacePrefixMatch", ""),
                    },
                },
            ],
            "backendRefs": [{"name": "pricing", "weight": 0}, {"name": "pricing", "weight": 2}],
            "timeouts": {"request": "0s", "backendRequest": "5s"},
        },
        {
            "matches": [{"path": {"type": "Exact", "value": "/old"}}],
            "filters": [
                {
                    "type": "RequestRedirect",
                    "requestRedirect": {
                        "hostname": "[::1]",
                        "path": modifier("ReplaceFullPath", "/new path"),
                    },
                }
            ],
        },
    ]
    return fixed


def test_what_the_loader_accepts_the_router_compiles() -> None:
    _router_accepts(_with_backend(route()))


@pytest.mark.parametrize(
    "value",
    ["a", "a.b", "*.a.b", "A-1.example", "x" * 63, ".".join(["a" * 63] * 3) + ".abc"],
)
def test_route_hostnames_accepted(value: str) -> None:
    syntax.check_route_hostname(value)
    _router_accepts(route(hostnames=[value]))


@pytest.mark.parametrize(
    "value", ["a b", "-a", "a-", "a..b", "*", "*.", "a.*", "\u00e9.example", "a_b", "a.b.", "a:1"]
)
def test_route_hostnames_refused(value: str) -> None:
    with pytest.raises(ValueError, match="invalid hostname"):
        syntax.check_route_hostname(value)


def test_syntax_checks_raise_value_errors_naming_the_value() -> None:
    with pytest.raises(ValueError, match=r"invalid header name 'a b'"):
        syntax.check_header_name("a b")
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        syntax.check_header_value("a\r\nb")
    assert syntax.encode_header_value(" v\t") == b"v"
    with pytest.raises(ValueError, match="must start with '/'"):
        syntax.check_path("x")
    syntax.check_prefix_replacement("")
    assert syntax.encode_path("/a b") == b"/a%20b"
    assert syntax.encode_hostname("Shop.Example") == b"shop.example"
    assert syntax.encode_domain("Shop.Example.:8080") == b"shop.example.:8080"
    with pytest.raises(ValueError, match="invalid domain"):
        syntax.encode_domain("a\tb")
    assert syntax.compile_regex("/a+").fullmatch(b"/aa")


def test_stored_route_with_a_bad_value_is_refused_by_the_router_too() -> None:
    """The rules really are shared: the router refuses what the model refuses."""
    bad = snap.Snapshot(
        proxy=PROXY,
        virtual_hosts=[snap.VirtualHost(name="v", domains=["a b"], rules=[])],
    )
    with pytest.raises(Exception, match="invalid domain 'a b'"):
        RouteTable.compile(bad)


def test_error_lists_each_problem_once() -> None:
    resource = route(hostnames=["a b", "ok.example", "c d"])
    with pytest.raises(ConfigError) as info:
        load_objects([resource])
    assert [p.path for p in info.value.problems] == [f"{R}.hostnames[0]", f"{R}.hostnames[2]"]
