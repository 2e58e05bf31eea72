"""Shadowing is never a guess: when analyze says an earlier match covers a later one, the proxy's
own matcher (filters/match.py) agrees on every request the later one takes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer.config import models
from gossamer.config.analyze import _covers
from gossamer.control.translate_routes import match_to_snapshot
from gossamer.filters.match import compile_condition
from gossamer.http.message import RequestHead

SEGMENTS = ("a", "b", "ab")
paths = st.lists(st.sampled_from(SEGMENTS), min_size=0, max_size=3).map(
    lambda parts: "/" + "/".join(parts)
)
path_matches = st.one_of(
    st.none(),
    st.builds(models.HTTPPathMatch, type=st.just("PathPrefix"), value=paths),
    st.builds(models.HTTPPathMatch, type=st.just("Exact"), value=paths),
    st.builds(
        models.HTTPPathMatch,
        type=st.just("RegularExpression"),
        value=st.sampled_from(["/a.*", "/a/b", "/.*", "/(a|b)"]),
    ),
)
header_matches = st.lists(
    st.builds(
        models.HTTPHeaderMatch,
        name=st.sampled_from(["x-a", "X-B"]),
        value=st.sampled_from(["1", "2"]),
    ),
    max_size=2,
    unique_by=lambda h: h.name.lower(),
)
route_matches = st.builds(
    models.HTTPRouteMatch,
    path=path_matches,
    method=st.sampled_from([None, "GET", "POST"]),
    headers=header_matches,
)
requests = st.builds(
    lambda path, method, headers: RequestHead(method.encode(), path.encode(), b"", headers),
    path=paths | st.sampled_from(["/a/", "/abc", "/b/a"]),
    method=st.sampled_from(["GET", "POST", "PUT"]),
    headers=st.lists(
        st.tuples(st.sampled_from([b"x-a", b"x-b"]), st.sampled_from([b"1", b"2"])), max_size=3
    ),
)


@settings(max_examples=400, deadline=None)
@given(earlier=route_matches, later=route_matches, request=requests)
def test_a_covered_match_takes_no_request_the_earlier_one_does_not(
    earlier: models.HTTPRouteMatch, later: models.HTTPRouteMatch, request: RequestHead
) -> None:
    if not _covers(earlier, later):
        return
    first = compile_condition(match_to_snapshot(earlier), "earlier")
    second = compile_condition(match_to_snapshot(later), "later")
    if second.matches(request):
        assert first.matches(request), (earlier, later, request)


def test_the_property_is_not_vacuous() -> None:
    """Covering pairs exist among the generated ones (a catch-all covers everything)."""
    catch_all = models.HTTPRouteMatch()
    specific = models.HTTPRouteMatch(
        path=models.HTTPPathMatch(type="Exact", value="/a/b"), method="GET"
    )
    assert _covers(catch_all, specific)
    assert not _covers(specific, catch_all)


# --- a DENY covering an ALLOW, against the proxy's authorization engine ---------------------------

PRINCIPALS = (
    "gossamer.local/ns/a/sa/x",
    "gossamer.local/ns/a/sa/y",
    "gossamer.local/ns/a/*",
    "*/sa/x",
    "*",
)
NAMESPACES = ("a", "b", "*")


def _some(values: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(values), max_size=2, unique=True)


def _rule(sources_: list[dict[str, object]], ops: list[dict[str, object]]) -> models.AuthzRule:
    return models.AuthzRule.model_validate({"from": sources_, "to": ops})


def _valid(model: type[models.AuthzSource] | type[models.AuthzOperation], data: object) -> bool:
    try:
        model.model_validate(data)
    except ValueError:
        return False
    return True


authz_rules = st.builds(
    lambda froms, tos: (froms, tos),
    st.lists(
        st.fixed_dictionaries(
            {
                "principals": _some(PRINCIPALS),
                "notPrincipals": _some(PRINCIPALS),
                "namespaces": _some(NAMESPACES),
            }
        ).filter(lambda d: _valid(models.AuthzSource, d)),
        max_size=2,
    ),
    st.lists(
        st.fixed_dictionaries(
            {
                "paths": _some(("/a", "/a/*", "*", "*/b", "/a/b")),
                "methods": _some(("GET", "POST")),
                "notMethods": _some(("GET", "POST")),
                "ports": st.lists(st.sampled_from([8080, 9090]), max_size=1),
            }
        ).filter(lambda d: _valid(models.AuthzOperation, d)),
        max_size=2,
    ),
).map(
    lambda ft: _rule(
        [{"source": s} for s in ft[0]],
        [{"operation": o} for o in ft[1]],
    )
)
authz_requests = st.tuples(
    st.sampled_from(
        [
            None,
            "spiffe://gossamer.local/ns/a/sa/x",
            "spiffe://gossamer.local/ns/a/sa/y",
            "spiffe://gossamer.local/ns/b/sa/x",
        ]
    ),
    st.sampled_from([b"GET", b"POST", b"PUT"]),
    st.sampled_from([b"/a", b"/a/b", b"/b", b"/c/b", b"/ab"]),
    st.sampled_from([8080, 9090]),
)


@settings(max_examples=400, deadline=None)
@given(deny=authz_rules, allow=authz_rules, request=authz_requests)
def test_a_covering_deny_denies_whatever_the_allow_rule_allows(
    deny: models.AuthzRule,
    allow: models.AuthzRule,
    request: tuple[str | None, bytes, bytes, int],
) -> None:
    from gossamer.config.analyze import _rule_covers
    from gossamer.control.translate import _authz_rule
    from gossamer.filters.authz import compile as compile_authz
    from gossamer.snapshot import AuthzConfig, AuthzPolicy

    if not _rule_covers(deny, allow):
        return
    allowing = compile_authz(
        AuthzConfig(policies=[AuthzPolicy(name="d/allow", rules=[_authz_rule(allow)])])
    )
    denying = compile_authz(
        AuthzConfig(policies=[AuthzPolicy(name="d/deny", action="DENY", rules=[_authz_rule(deny)])])
    )
    principal, method, path, port = request
    if allowing.check(principal, method, path, port).allowed:
        assert not denying.check(principal, method, path, port).allowed, (deny, allow, request)
