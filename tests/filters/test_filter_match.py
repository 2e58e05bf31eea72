"""Request conditions (filters/match.py): compile errors name where, and HTTPRoute's semantics.

The router inlines `Condition.matches` on its hot path; a property test checks that the two agree
on generated matches and requests, so they cannot drift apart.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer import snapshot as snap
from gossamer.filters import headers as header_filter
from gossamer.filters import match
from gossamer.http.message import RequestHead
from gossamer.proxy.router import RouteTable


def head(
    path: bytes = b"/",
    method: bytes = b"GET",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> RequestHead:
    return RequestHead(method, path, query, headers or [(b"host", b"svc")], host=b"svc")


def cond(**kw: object) -> match.Condition:
    return match.compile_condition(snap.RouteMatch(**kw), "rule r, match #0")  # type: ignore[arg-type]


def path(type_: str, value: str) -> snap.PathMatch:
    return snap.PathMatch(type=type_, value=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("type_", "value", "request_path", "expected"),
    [
        ("Exact", "/foo", b"/foo", True),
        ("Exact", "/foo", b"/foo/", False),
        ("PathPrefix", "/foo", b"/foo", True),
        ("PathPrefix", "/foo", b"/foo/bar", True),
        ("PathPrefix", "/foo", b"/foobar", False),
        ("PathPrefix", "/foo/", b"/foo", True),
        ("PathPrefix", "/", b"/anything", True),
        ("PathPrefix", "/a%20b", b"/a%20b/c", True),  # compared as received, not decoded
        ("PathPrefix", "/a%20b", b"/a b/c", False),
        ("RegularExpression", "/v[0-9]+", b"/v12", True),
        ("RegularExpression", "/v[0-9]+", b"/v12/x", False),  # the whole path must match
    ],
)
def test_paths(type_: str, value: str, request_path: bytes, expected: bool) -> None:
    assert cond(path=path(type_, value)).matches(head(request_path)) is expected


def test_the_prefix_a_rewrite_replaces_is_the_path_prefix_as_written() -> None:
    assert cond().prefix == b"/"
    assert cond(path=path("PathPrefix", "/foo/")).prefix == b"/foo/"
    assert cond(path=path("Exact", "/foo")).prefix is None
    assert cond(path=path("RegularExpression", "/f.*")).prefix is None


def test_only_a_match_without_conditions_is_any() -> None:
    assert cond().is_any
    assert cond(path=path("PathPrefix", "/")).is_any
    assert not cond(path=path("PathPrefix", "/a")).is_any
    assert not cond(method="GET").is_any
    assert not cond(headers=[snap.HeaderMatch(name="x", value="1")]).is_any
    assert not cond(query_params=[snap.QueryParamMatch(name="x", value="1")]).is_any


def test_method_header_and_query_conditions_are_anded() -> None:
    c = cond(
        method="POST",
        headers=[
            snap.HeaderMatch(name="X-Canary", value="on"),
            snap.HeaderMatch(name="x-user", value="u-[0-9]+", type="RegularExpression"),
        ],
        query_params=[snap.QueryParamMatch(name="a b", value="1+2")],
    )
    hs = [(b"x-canary", b"on"), (b"x-user", b"u-7")]
    assert c.matches(head(method=b"POST", query=b"a+b=1%2B2", headers=hs))
    assert not c.matches(head(method=b"GET", query=b"a+b=1%2B2", headers=hs))
    assert not c.matches(head(method=b"POST", query=b"a+b=1+2", headers=hs))  # "1 2"
    assert not c.matches(head(method=b"POST", query=b"a+b=1%2B2", headers=hs[:1]))
    assert not c.matches(head(method=b"POST", query=b"", headers=hs))


def test_the_first_header_value_and_the_first_query_value_count() -> None:
    c = cond(
        headers=[snap.HeaderMatch(name="x", value="1")],
        query_params=[snap.QueryParamMatch(name="q", value="1")],
    )
    assert c.matches(head(query=b"q=1&q=2", headers=[(b"x", b"1"), (b"x", b"2")]))
    assert not c.matches(head(query=b"q=2&q=1", headers=[(b"x", b"1")]))
    assert not c.matches(head(query=b"q=1", headers=[(b"x", b"2"), (b"x", b"1")]))


def test_parse_query_decodes_and_keeps_the_first_occurrence() -> None:
    assert match.parse_query(b"a=1&&b=%41+c&a=2&flag&c%3D=x") == {
        b"a": b"1",
        b"b": b"A c",
        b"flag": b"",
        b"c=": b"x",
    }


def test_first_value() -> None:
    hs = [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]
    assert match.first_value(hs, b"a") == b"1"
    assert match.first_value(hs, b"c") is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"method": "GE T"}, "rule r, match #0: invalid method 'GE T'"),
        ({"path": snap.PathMatch(type="Exact", value="foo")}, "rule r, match #0, path"),
        (
            {"path": snap.PathMatch(type="RegularExpression", value="(")},
            "rule r, match #0, path: ",
        ),
        ({"headers": [snap.HeaderMatch(name="a b", value="1")]}, "rule r, match #0, header match"),
        (
            {"headers": [snap.HeaderMatch(name="x", value="(", type="RegularExpression")]},
            "rule r, match #0, header 'x': ",
        ),
        (
            {"query_params": [snap.QueryParamMatch(name="", value="1")]},
            "rule r, match #0: query parameter match without a name",
        ),
        (
            {"query_params": [snap.QueryParamMatch(name="q", value="[", type="RegularExpression")]},
            "rule r, match #0, query parameter 'q': ",
        ),
    ],
)
def test_bad_conditions_raise_value_error_naming_where(
    spec: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        cond(**spec)


def test_header_values_are_utf8_unless_the_caller_encodes_them() -> None:
    hm = [snap.HeaderMatch(name="x", value=" é ")]
    assert match.compile_headers(hm, "w") == ((b"x", " é ".encode(), None),)
    strict = match.compile_headers(
        hm, "w", field="headers", encode_value=header_filter.encode_value
    )
    assert strict == ((b"x", "é".encode("latin-1"), None),)
    with pytest.raises(ValueError, match=r"^w, headers: "):
        match.compile_headers(
            [snap.HeaderMatch(name="x", value="a\r\nb")],
            "w",
            field="headers",
            encode_value=header_filter.encode_value,
        )


# --- the router's inlined copy agrees with Condition.matches --------------------------------------

_SEGMENTS = st.sampled_from(["a", "b", "ab", "a%20"])
_PATHS = st.lists(_SEGMENTS, max_size=3).map(lambda s: "/" + "/".join(s))
_VALUES = st.sampled_from(["1", "2", "x y"])
_PATH_MATCHES = st.one_of(
    st.none(),
    st.builds(snap.PathMatch, type=st.sampled_from(["Exact", "PathPrefix"]), value=_PATHS),
    st.builds(snap.PathMatch, type=st.just("RegularExpression"), value=st.just("/a.*")),
)
_ROUTE_MATCHES = st.builds(
    snap.RouteMatch,
    path=_PATH_MATCHES,
    method=st.sampled_from([None, "GET", "POST"]),
    headers=st.lists(
        st.builds(snap.HeaderMatch, name=st.sampled_from(["x", "y"]), value=_VALUES), max_size=2
    ),
    query_params=st.lists(
        st.builds(snap.QueryParamMatch, name=st.sampled_from(["p", "q"]), value=_VALUES),
        max_size=2,
    ),
)
_PAIRS = st.lists(st.tuples(st.sampled_from(["x", "y", "p", "q"]), _VALUES), max_size=3)


@settings(max_examples=200, deadline=None)
@given(
    m=_ROUTE_MATCHES,
    p=_PATHS,
    method=st.sampled_from(["GET", "POST"]),
    hs=_PAIRS,
    qs=_PAIRS,
)
def test_router_inlined_matching_agrees_with_condition_matches(
    m: snap.RouteMatch, p: str, method: str, hs: list[tuple[str, str]], qs: list[tuple[str, str]]
) -> None:
    """The router's inlined loop and Condition.matches take the same requests."""
    proxy = snap.ProxyIdentity(proxy_id="p-0", service="frontend")
    rule = snap.RouteRule(
        name="r", matches=[m], backends=[snap.WeightedCluster(cluster="a.default")]
    )
    vh = snap.VirtualHost(name="svc.default", domains=["svc"], rules=[rule])
    clusters = [snap.Cluster(name="a.default", service="a")]
    table = RouteTable.compile(snap.Snapshot(proxy=proxy, virtual_hosts=[vh], clusters=clusters))
    request = head(
        p.encode(),
        method.encode(),
        "&".join(f"{k}={v}".replace(" ", "+") for k, v in qs).encode(),
        [(k.encode(), v.encode()) for k, v in hs],
    )
    expected = match.compile_condition(m, "match").matches(request)
    assert (table.match(request) is not None) is expected
