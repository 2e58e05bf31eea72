"""SPIFFE IDs: parsing, formatting, validation and principal wildcards."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossamer.security.spiffe import SpiffeId, SpiffeIdError, matches, validate_trust_domain

_td = st.from_regex(r"[a-z0-9._-]{1,40}", fullmatch=True)
_segment = st.from_regex(r"[a-zA-Z0-9._-]{1,20}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)


def test_parse_workload_id() -> None:
    sid = SpiffeId.parse("spiffe://gossamer.local/ns/shop/sa/pricing")
    assert sid.trust_domain == "gossamer.local"
    assert sid.path == "/ns/shop/sa/pricing"
    assert sid.is_workload
    assert (sid.namespace, sid.service_account) == ("shop", "pricing")
    assert str(sid) == "spiffe://gossamer.local/ns/shop/sa/pricing"
    assert sid == SpiffeId.workload("gossamer.local", "shop", "pricing")
    assert str(sid.trust_domain_id) == "spiffe://gossamer.local"


def test_non_workload_id_has_no_namespace() -> None:
    sid = SpiffeId.parse("spiffe://example.org/control-plane")
    assert not sid.is_workload
    assert sid.namespace is None
    assert sid.service_account is None
    assert SpiffeId.parse("spiffe://example.org").path == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("https://gossamer.local/ns/a/sa/b", "must start with 'spiffe://'"),
        ("SPIFFE://gossamer.local/ns/a/sa/b", "must start with 'spiffe://'"),
        ("spiffe://", "trust domain is empty"),
        ("spiffe:///ns/a", "trust domain is empty"),
        ("spiffe://Gossamer.local/ns/a", "has 'G'"),
        ("spiffe://gossamer.local:8080/ns/a", "must not have a port"),
        ("spiffe://user@gossamer.local/ns/a", "must not have userinfo"),
        ("spiffe://gossamer.local/ns/a?x=1", "must not have a query"),
        ("spiffe://gossamer.local/ns/a#frag", "must not have a query or a fragment"),
        ("spiffe://gossamer.local/ns//sa/b", "empty segment"),
        ("spiffe://gossamer.local/ns/a/", "empty segment"),
        ("spiffe://gossamer.local/ns/../sa/b", "'..' segment"),
        ("spiffe://gossamer.local/./sa/b", "'.' segment"),
        ("spiffe://gossamer.local/ns/a%20b", "may only hold letters"),
        ("spiffe://gossamer.local/" + "a" * 2100, "longer than 2048 bytes"),
    ],
)
def test_invalid_ids_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(SpiffeIdError, match=r"^[^\n]+$") as info:
        SpiffeId.parse(text)
    assert message in str(info.value)


def test_trust_domain_rules() -> None:
    assert validate_trust_domain("prod.example-1_x") == "prod.example-1_x"
    with pytest.raises(SpiffeIdError, match="longer than 255"):
        validate_trust_domain("a" * 256)
    with pytest.raises(SpiffeIdError, match="trust domain is empty"):
        SpiffeId.workload("", "ns", "sa")


def test_ids_are_frozen_and_hashable() -> None:
    sid = SpiffeId.workload("td", "ns", "sa")
    with pytest.raises(AttributeError):
        sid.path = "/x"  # type: ignore[misc]
    assert {sid, SpiffeId.parse(str(sid))} == {sid}


@given(td=_td, segments=st.lists(_segment, min_size=0, max_size=5))
def test_round_trip(td: str, segments: list[str]) -> None:
    path = "".join("/" + s for s in segments)
    sid = SpiffeId(td, path)
    assert SpiffeId.parse(str(sid)) == sid


@given(text=st.text(max_size=60))
def test_parse_never_raises_anything_else(text: str) -> None:
    try:
        sid = SpiffeId.parse("spiffe://" + text)
    except SpiffeIdError:
        return
    assert str(sid) == "spiffe://" + text


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*", True),
        ("spiffe://gossamer.local/ns/shop/sa/frontend", True),
        ("gossamer.local/ns/shop/sa/frontend", True),  # Istio's form, without the scheme
        ("spiffe://gossamer.local/ns/shop/*", True),
        ("gossamer.local/ns/shop/*", True),
        ("*/sa/frontend", True),
        ("*/sa/pricing", False),
        ("spiffe://gossamer.local/ns/prod/*", False),
        ("spiffe://other.local/ns/shop/sa/frontend", False),
        ("spiffe://gossamer.local/ns/*/sa/frontend", False),  # no infix wildcards, as in Istio
    ],
)
def test_matches(pattern: str, expected: bool) -> None:
    sid = SpiffeId.workload("gossamer.local", "shop", "frontend")
    assert matches(pattern, sid) is expected
    assert matches(pattern, str(sid)) is expected


@given(td=_td, ns=_segment, sa=_segment)
def test_wildcards_match_their_parts(td: str, ns: str, sa: str) -> None:
    sid = SpiffeId.workload(td, ns, sa)
    assert matches(str(sid), sid)
    assert matches(f"spiffe://{td}/ns/{ns}/*", sid)
    assert matches(f"*/sa/{sa}", sid)
