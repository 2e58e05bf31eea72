"""Header modifier filter: set, add, remove on requests and responses."""

from __future__ import annotations

import pytest

from gossamer.filters import headers
from gossamer.http.message import RequestHead, ResponseHead
from gossamer.snapshot import HeaderModifier, HeaderValue


def modifier(
    set_: dict[str, str] | None = None,
    add: list[tuple[str, str]] | None = None,
    remove: list[str] | None = None,
) -> headers.HeaderModifierFilter:
    return headers.compile(
        HeaderModifier(
            set=[HeaderValue(name=k, value=v) for k, v in (set_ or {}).items()],
            add=[HeaderValue(name=k, value=v) for k, v in (add or [])],
            remove=remove or [],
        )
    )


def test_set_replaces_every_value_keeping_the_first_position() -> None:
    f = modifier(set_={"X-Env": "prod", "X-New": "1"})
    h = [(b"a", b"1"), (b"x-env", b"dev"), (b"b", b"2"), (b"x-env", b"test")]
    f.apply(h)
    assert h == [(b"a", b"1"), (b"x-env", b"prod"), (b"b", b"2"), (b"x-new", b"1")]


def test_add_appends_even_when_present() -> None:
    f = modifier(add=[("X-Tag", "a"), ("x-tag", "b")])
    h = [(b"x-tag", b"0")]
    f.apply(h)
    assert h == [(b"x-tag", b"0"), (b"x-tag", b"a"), (b"x-tag", b"b")]


def test_remove_is_case_insensitive_and_runs_before_add() -> None:
    f = modifier(remove=["X-Secret"], add=[("x-secret", "redacted")])
    h = [(b"x-secret", b"s1"), (b"keep", b"k"), (b"x-secret", b"s2")]
    f.apply(h)
    assert h == [(b"keep", b"k"), (b"x-secret", b"redacted")]


def test_request_and_response_heads() -> None:
    f = modifier(set_={"Host": "other"}, remove=["x-drop"])
    req = RequestHead(b"GET", b"/", headers=[(b"host", b"svc"), (b"x-drop", b"1")], host=b"svc")
    f.apply_request(req)
    assert req.headers == [(b"host", b"other")]
    assert req.host == b"other"
    resp = ResponseHead(200, [(b"x-drop", b"1"), (b"server", b"s")])
    f.apply_response(resp)
    assert resp.headers == [(b"server", b"s"), (b"host", b"other")]


def test_values_are_latin1_bytes_stripped() -> None:
    f = modifier(set_={"x-v": "  caf\u00e9 "})
    h: list[tuple[bytes, bytes]] = []
    f.apply(h)
    assert h == [(b"x-v", "caf\u00e9".encode("latin-1"))]


@pytest.mark.parametrize(
    ("mod", "fragment"),
    [
        (HeaderModifier(set=[HeaderValue(name="bad name", value="v")]), "invalid header name"),
        (HeaderModifier(add=[HeaderValue(name="x", value="a\nb")]), "CR, LF or NUL"),
        (HeaderModifier(add=[HeaderValue(name="x", value="\u2603")]), "not latin-1"),
        (HeaderModifier(remove=[""]), "invalid header name"),
        (
            HeaderModifier(
                set=[HeaderValue(name="X", value="1"), HeaderValue(name="x", value="2")]
            ),
            "set twice",
        ),
    ],
)
def test_bad_config_is_a_clear_error(mod: HeaderModifier, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as info:
        headers.compile(mod, where="rule r")
    assert str(info.value).startswith("rule r: ")
