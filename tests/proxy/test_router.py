"""Route table: host lookup, matching tables, precedence, weighted backends and compile errors."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer import snapshot as snap
from gossamer.filters.headers import HeaderModifierFilter
from gossamer.filters.rewrite import URLRewriteFilter
from gossamer.http.message import RequestHead, ResponseHead, header_get
from gossamer.proxy.router import NO_BACKEND, NO_BACKEND_STATUS, RouteCompileError, RouteTable

PROXY = snap.ProxyIdentity(proxy_id="p-0", service="frontend")
CLUSTERS = [snap.Cluster(name=n, service=n.split(".")[0]) for n in ("a.default", "b.default")]


def rule(name: str, *matches: snap.RouteMatch, **kw: object) -> snap.RouteRule:
    kw.setdefault("backends", [snap.WeightedCluster(cluster="a.default")])
    return snap.RouteRule(name=name, matches=list(matches), **kw)  # type: ignore[arg-type]


def vhost(
    *rules: snap.RouteRule,
    name: str = "svc.default",
    domains: list[str] | None = None,
    **kw: object,
) -> snap.VirtualHost:
    return snap.VirtualHost(
        name=name,
        domains=domains if domains is not None else ["svc", "svc.default"],
        rules=list(rules),
        **kw,  # type: ignore[arg-type]
    )


def table(*vhosts: snap.VirtualHost, default_host: str | None = None) -> RouteTable:
    s = snap.Snapshot(proxy=PROXY, virtual_hosts=list(vhosts), clusters=CLUSTERS)
    return RouteTable.compile(s, default_host=default_host)


def path(type_: str, value: str) -> snap.RouteMatch:
    return snap.RouteMatch(path=snap.PathMatch(type=type_, value=value))  # type: ignore[arg-type]


def req(
    p: bytes = b"/",
    host: bytes = b"svc",
    method: bytes = b"GET",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> RequestHead:
    return RequestHead(method, p, query, headers or [(b"host", host)], host=host)


def matched(t: RouteTable, head: RequestHead) -> str | None:
    m = t.match(head)
    return None if m is None else m.rule.name


# --- paths ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("type_", "value", "request_path", "expected"),
    [
        ("Exact", "/foo", b"/foo", True),
        ("Exact", "/foo", b"/foo/", False),
        ("Exact", "/foo", b"/foobar", False),
        ("PathPrefix", "/foo", b"/foo", True),
        ("PathPrefix", "/foo", b"/foo/", True),
        ("PathPrefix", "/foo", b"/foo/bar", True),
        ("PathPrefix", "/foo", b"/foobar", False),
        ("PathPrefix", "/foo", b"/fo", False),
        ("PathPrefix", "/foo/", b"/foo", True),  # a trailing "/" in the prefix is ignored
        ("PathPrefix", "/foo/", b"/foo/bar", True),
        ("PathPrefix", "/foo/", b"/foobar", False),
        ("PathPrefix", "/", b"/anything/at/all", True),
        ("PathPrefix", "/a/b", b"/a/b/c", True),
        ("PathPrefix", "/a/b", b"/a/bc", False),
        ("RegularExpression", r"/items/\d+", b"/items/42", True),
        ("RegularExpression", r"/items/\d+", b"/items/42/x", False),  # whole path must match
        ("RegularExpression", r"/items/\d+", b"/x/items/42", False),
    ],
)
def test_path_matching(type_: str, value: str, request_path: bytes, expected: bool) -> None:
    """Exact is exact, PathPrefix matches whole segments, regexes match the whole path."""
    t = table(vhost(rule("r", path(type_, value))))
    assert (t.match(req(request_path)) is not None) is expected


def test_path_compare_as_received_and_query_is_not_part_of_path() -> None:
    t = table(vhost(rule("r", path("Exact", "/a b"))))  # configured unencoded
    assert t.match(req(b"/a%20b", query=b"x=1")) is not None


# --- headers, query, method -----------------------------------------------------------------------


def test_header_conditions_case_insensitive_names_and_and_semantics() -> None:
    m = snap.RouteMatch(
        headers=[
            snap.HeaderMatch(name="X-Version", value="v2"),
            snap.HeaderMatch(name="x-user", value=r"[a-z]+-\d", type="RegularExpression"),
        ]
    )
    t = table(vhost(rule("hdr", m), rule("rest")))
    ok = [(b"host", b"svc"), (b"x-version", b"v2"), (b"x-user", b"bob-1")]
    assert matched(t, req(headers=ok)) == "hdr"
    assert matched(t, req(headers=ok[:2])) == "rest"  # one condition missing
    assert matched(t, req(headers=[ok[0], (b"x-version", b"V2"), ok[2]])) == "rest"  # values exact
    assert matched(t, req(headers=[ok[0], ok[1], (b"x-user", b"bob-1x")])) == "rest"  # full match
    # the first value of a repeated header counts
    first = [ok[0], (b"x-version", b"v1"), (b"x-version", b"v2"), ok[2]]
    assert matched(t, req(headers=first)) == "rest"


def test_query_conditions_are_percent_decoded() -> None:
    m = snap.RouteMatch(
        query_params=[
            snap.QueryParamMatch(name="q", value="a b/c"),
            snap.QueryParamMatch(name="page", value=r"\d+", type="RegularExpression"),
        ]
    )
    t = table(vhost(rule("qs", m), rule("rest")))
    assert matched(t, req(query=b"q=a%20b%2Fc&page=3")) == "qs"
    assert matched(t, req(query=b"page=12&q=a+b/c")) == "qs"  # "+" is a space
    assert matched(t, req(query=b"q=a%20b%2Fc&page=x")) == "rest"
    assert matched(t, req(query=b"q=a%20b%2Fc")) == "rest"
    assert matched(t, req(query=b"q=zzz&q=a%20b%2Fc&page=1")) == "rest"  # first occurrence wins
    assert matched(t, req()) == "rest"


def test_method_condition() -> None:
    t = table(vhost(rule("post", snap.RouteMatch(method="POST")), rule("rest")))
    assert matched(t, req(method=b"POST")) == "post"
    assert matched(t, req(method=b"GET")) == "rest"


# --- precedence -----------------------------------------------------------------------------------


def test_rules_in_order_first_match_wins_and_matches_are_ored() -> None:
    t = table(
        vhost(
            rule("api", path("PathPrefix", "/api"), path("Exact", "/health")),
            rule("api-v2", path("PathPrefix", "/api/v2")),  # shadowed by "api"
            rule("catch-all"),
        )
    )
    assert matched(t, req(b"/api/v2/x")) == "api"
    assert matched(t, req(b"/health")) == "api"
    assert t.match(req(b"/health")).match_index == 1  # type: ignore[union-attr]
    assert matched(t, req(b"/other")) == "catch-all"


def test_no_rule_matches_gives_none() -> None:
    t = table(vhost(rule("only", path("Exact", "/x"))))
    assert t.match(req(b"/y")) is None


def test_empty_match_matches_everything() -> None:
    t = table(vhost(rule("all", snap.RouteMatch())))
    assert matched(t, req(b"/x/y", method=b"DELETE")) == "all"


# --- hosts ----------------------------------------------------------------------------------------


def test_host_lookup_case_port_and_trailing_dot() -> None:
    t = table(
        vhost(rule("a"), name="a.default", domains=["a", "a.default"]),
        vhost(rule("b"), name="b.default", domains=["B.Default.svc"]),
    )
    assert matched(t, req(host=b"a")) == "a"
    assert matched(t, req(host=b"A.DEFAULT")) == "a"
    assert matched(t, req(host=b"a:8080")) == "a"  # port None: any port
    assert matched(t, req(host=b"b.default.svc.:9000")) == "b"
    assert matched(t, req(host=b"c")) is None
    assert matched(t, req(host=b"")) is None


def test_virtual_host_with_port_only_matches_that_port() -> None:
    t = table(
        vhost(rule("p8080"), name="a-8080", domains=["a"], port=8080),
        vhost(rule("p80"), name="a-80", domains=["web"], port=80),
        vhost(rule("explicit"), name="x", domains=["x:9000"]),
    )
    assert matched(t, req(host=b"a:8080")) == "p8080"
    assert matched(t, req(host=b"a:9090")) is None
    assert matched(t, req(host=b"a")) is None
    assert matched(t, req(host=b"web")) == "p80"  # no port in the request means 80
    assert matched(t, req(host=b"web:80")) == "p80"
    assert matched(t, req(host=b"x:9000")) == "explicit"
    assert matched(t, req(host=b"x")) is None


def test_first_virtual_host_wins_a_shared_domain() -> None:
    t = table(
        vhost(rule("first"), name="one", domains=["shared"]),
        vhost(rule("second"), name="two", domains=["shared"]),
    )
    assert matched(t, req(host=b"shared")) == "first"


def test_wildcard_domains() -> None:
    t = table(
        vhost(rule("wide"), name="w", domains=["*.example.com"]),
        vhost(rule("narrow"), name="n", domains=["*.api.example.com"]),
        vhost(rule("exact"), name="e", domains=["www.example.com"]),
    )
    assert matched(t, req(host=b"www.example.com")) == "exact"
    assert matched(t, req(host=b"shop.example.com:8080")) == "wide"
    assert matched(t, req(host=b"v1.api.example.com")) == "narrow"
    assert matched(t, req(host=b"example.com")) is None


def test_ipv6_host() -> None:
    t = table(vhost(rule("v6"), name="v6", domains=["[::1]"]))
    assert matched(t, req(host=b"[::1]:8080")) == "v6"


def test_default_host_fallback() -> None:
    vhs = (
        vhost(rule("front"), name="frontend.default", domains=["frontend", "frontend.default"]),
        vhost(rule("svc")),
    )
    t = table(*vhs, default_host="frontend")
    assert matched(t, req(host=b"svc")) == "svc"
    assert matched(t, req(host=b"localhost:8000")) == "front"
    assert matched(t, req(host=b"")) == "front"
    # a default host the snapshot does not have: no fallback rather than a NACK
    assert matched(table(*vhs, default_host="missing"), req(host=b"nope")) is None


# --- backends -------------------------------------------------------------------------------------


def weighted(*pairs: tuple[str, int]) -> list[snap.WeightedCluster]:
    return [snap.WeightedCluster(cluster=c, weight=w) for c, w in pairs]


def test_single_backend_and_no_backend() -> None:
    t = table(
        vhost(
            rule("one", path("Exact", "/one")),
            rule("zero", path("Exact", "/zero"), backends=weighted(("a.default", 0))),
            rule("none", path("Exact", "/none"), backends=[]),
        )
    )
    one = t.match(req(b"/one"))
    assert one is not None
    assert one.has_backend
    backend = one.pick_backend(0.999)
    assert backend is not None
    assert backend.cluster == "a.default"
    for p in (b"/zero", b"/none"):
        m = t.match(req(p))
        assert m is not None
        assert not m.has_backend
        assert m.pick_backend(0.5) is None
    assert (NO_BACKEND, NO_BACKEND_STATUS) == ("no-backend", 500)


def test_zero_weight_backend_never_chosen() -> None:
    t = table(vhost(rule("r", backends=weighted(("a.default", 0), ("b.default", 3)))))
    m = t.match(req())
    assert m is not None
    picks = {m.pick_backend(x / 100).cluster for x in range(100)}  # type: ignore[union-attr]
    assert picks == {"b.default"}


@settings(max_examples=25, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=0, max_value=50), min_size=2, max_size=2).filter(
        lambda w: sum(w) > 0
    ),
    seed=st.integers(0, 2**32),
)
def test_pick_backend_honours_weights(weights: list[int], seed: int) -> None:
    """Over many picks each backend's share is its weight's share, within a few percent."""
    t = table(
        vhost(rule("r", backends=weighted(*zip(("a.default", "b.default"), weights, strict=True))))
    )
    m = t.match(req())
    assert m is not None
    rng = random.Random(seed)
    n = 4000
    counts = Counter(m.pick_backend(rng.random()).cluster for _ in range(n))  # type: ignore[union-attr]
    total = sum(weights)
    for cluster, w in zip(("a.default", "b.default"), weights, strict=True):
        assert abs(counts[cluster] / n - w / total) < 0.04
        if w == 0:
            assert counts[cluster] == 0


def test_pick_backend_edges_of_unit_interval() -> None:
    t = table(vhost(rule("r", backends=weighted(("a.default", 1), ("b.default", 1)))))
    m = t.match(req())
    assert m is not None
    assert m.pick_backend(0.0).cluster == "a.default"  # type: ignore[union-attr]
    assert m.pick_backend(0.5).cluster == "b.default"  # type: ignore[union-attr]
    assert m.pick_backend(1.0).cluster == "b.default"  # type: ignore[union-attr]


# --- filters through the router -------------------------------------------------------------------


def test_rule_and_backend_filters_compiled_with_matched_prefix() -> None:
    rewrite = snap.URLRewriteFilter(
        url_rewrite=snap.URLRewrite(
            path=snap.PathModifier(type="ReplacePrefixMatch", value="/v2"),
        )
    )
    add_header = snap.RequestHeaderModifierFilter(
        request_header_modifier=snap.HeaderModifier(add=[snap.HeaderValue(name="X-B", value="1")])
    )
    resp_header = snap.ResponseHeaderModifierFilter(
        response_header_modifier=snap.HeaderModifier(
            set=[snap.HeaderValue(name="x-route", value="r")]
        )
    )
    backend = snap.WeightedCluster(cluster="b.default", filters=[add_header])
    t = table(
        vhost(
            rule(
                "r",
                path("PathPrefix", "/v1"),
                path("PathPrefix", "/old/"),
                filters=[rewrite, resp_header],
                backends=[backend],
            )
        )
    )
    head = req(b"/old/x", query=b"a=1")
    m = t.match(head)
    assert m is not None
    assert m.matched_prefix == b"/old/"
    assert m.redirect is None
    assert isinstance(m.request_filters[0], URLRewriteFilter)
    m.apply_request(head)
    assert head.path == b"/v2/x"
    assert head.query == b"a=1"
    b = m.pick_backend(0.3)
    assert b is not None
    assert isinstance(b.request_filters[0], HeaderModifierFilter)
    b.apply_request(head)
    assert header_get(head.headers, b"x-b") == b"1"
    resp = ResponseHead(200, [(b"x-route", b"old")])
    b.apply_response(resp)
    m.apply_response(resp)
    assert resp.headers == [(b"x-route", b"r")]
    head2 = req(b"/v1")
    m2 = t.match(head2)
    assert m2 is not None
    assert m2.matched_prefix == b"/v1"
    m2.apply_request(head2)
    assert head2.path == b"/v2"


def test_redirect_rule() -> None:
    redirect = snap.RequestRedirectFilter(
        request_redirect=snap.RequestRedirect(scheme="https", status_code=301)
    )
    t = table(vhost(rule("r", filters=[redirect], backends=[])))
    head = req(b"/x", host=b"svc:8080")
    m = t.match(head)
    assert m is not None
    assert m.redirect is not None
    assert m.redirect.redirect(head) == (301, b"https://svc/x")


# --- compile errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vh", "fragment"),
    [
        (vhost(rule("bad-re", path("RegularExpression", "/(unclosed"))), "invalid regular"),
        (
            vhost(
                rule(
                    "bad-hdr-re",
                    snap.RouteMatch(
                        headers=[snap.HeaderMatch(name="x", value="[", type="RegularExpression")]
                    ),
                )
            ),
            "header 'x'",
        ),
        (vhost(rule("bad-path", path("Exact", "no-slash"))), "must start with '/'"),
        (vhost(rule("bad-method", snap.RouteMatch(method="GE T"))), "invalid method"),
        (
            vhost(rule("ghost", backends=[snap.WeightedCluster(cluster="nope.default")])),
            "cluster 'nope.default' is not in the snapshot",
        ),
        (vhost(rule("neg", backends=weighted(("a.default", -1)))), "negative"),
        (
            vhost(
                rule(
                    "prefix-on-exact",
                    path("Exact", "/x"),
                    filters=[
                        snap.URLRewriteFilter(
                            url_rewrite=snap.URLRewrite(
                                path=snap.PathModifier(type="ReplacePrefixMatch", value="/y")
                            )
                        )
                    ],
                )
            ),
            "ReplacePrefixMatch needs a PathPrefix",
        ),
        (
            vhost(
                rule(
                    "both",
                    filters=[
                        snap.RequestRedirectFilter(request_redirect=snap.RequestRedirect()),
                        snap.URLRewriteFilter(url_rewrite=snap.URLRewrite(hostname="x")),
                    ],
                )
            ),
            "cannot both be set",
        ),
        (
            vhost(
                rule(
                    "bad-status",
                    filters=[
                        snap.RequestRedirectFilter(
                            request_redirect=snap.RequestRedirect(status_code=200)
                        )
                    ],
                )
            ),
            "statusCode 200",
        ),
        (
            vhost(
                rule(
                    "bad-header",
                    filters=[
                        snap.RequestHeaderModifierFilter(
                            request_header_modifier=snap.HeaderModifier(
                                set=[snap.HeaderValue(name="x", value="a\r\nb")]
                            )
                        )
                    ],
                )
            ),
            "CR, LF",
        ),
        (vhost(rule("r"), domains=["bad domain"]), "invalid domain"),
        (vhost(rule("r"), port=70000), "port 70000"),
    ],
)
def test_compile_errors_name_the_virtual_host_and_rule(vh: snap.VirtualHost, fragment: str) -> None:
    with pytest.raises(RouteCompileError) as info:
        table(vh)
    assert "svc.default" in info.value.reason
    assert fragment in info.value.reason
    if vh.rules[0].name != "r":
        assert vh.rules[0].name in info.value.reason


# --- property: prefix matching agrees with a segment model ----------------------------------------

segment = st.text(alphabet="abc", min_size=1, max_size=3)


@settings(max_examples=80, deadline=None)
@given(
    prefix=st.lists(segment, min_size=1, max_size=3),
    trailing=st.booleans(),
    request_path=st.lists(segment, min_size=0, max_size=4),
    request_trailing=st.booleans(),
)
def test_prefix_match_is_segment_prefix(
    prefix: list[str], trailing: bool, request_path: list[str], request_trailing: bool
) -> None:
    """PathPrefix holds exactly when the prefix's segments begin the path's segments."""
    value = "/" + "/".join(prefix) + ("/" if trailing else "")
    p = "/" + "/".join(request_path) + ("/" if request_trailing and request_path else "")
    t = table(vhost(rule("r", path("PathPrefix", value))))
    expected = request_path[: len(prefix)] == prefix
    assert (t.match(req(p.encode())) is not None) is expected
