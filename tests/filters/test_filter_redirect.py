"""RequestRedirect filter: status and Location per the Gateway API."""

from __future__ import annotations

import pytest

from gossamer.filters import redirect
from gossamer.http.message import RequestHead
from gossamer.snapshot import PathModifier, RequestRedirect


def head(host: bytes = b"shop:8080", path: bytes = b"/cart/1", query: bytes = b"") -> RequestHead:
    return RequestHead(b"GET", path, query, [(b"host", host)], host=host)


@pytest.mark.parametrize(
    ("cfg", "prefix", "req", "expected"),
    [
        (RequestRedirect(), b"/", head(), (302, b"http://shop:8080/cart/1")),
        (RequestRedirect(scheme="https"), b"/", head(), (302, b"https://shop/cart/1")),
        (
            RequestRedirect(scheme="https", port=8443, status_code=301),
            b"/",
            head(query=b"a=1"),
            (301, b"https://shop:8443/cart/1?a=1"),
        ),
        (
            RequestRedirect(hostname="new.example"),
            b"/",
            head(),
            (302, b"http://new.example:8080/cart/1"),
        ),
        (RequestRedirect(port=80), b"/", head(), (302, b"http://shop/cart/1")),
        (RequestRedirect(hostname="h"), b"/", head(host=b"shop"), (302, b"http://h/cart/1")),
        (
            RequestRedirect(path=PathModifier(type="ReplaceFullPath", value="/basket")),
            None,
            head(query=b"x=y"),
            (302, b"http://shop:8080/basket?x=y"),
        ),
        (
            RequestRedirect(
                path=PathModifier(type="ReplacePrefixMatch", value="/basket"), status_code=308
            ),
            b"/cart",
            head(),
            (308, b"http://shop:8080/basket/1"),
        ),
        (
            RequestRedirect(path=PathModifier(type="ReplacePrefixMatch", value="/")),
            b"/cart/",
            head(path=b"/cart"),
            (302, b"http://shop:8080/"),
        ),
        (
            RequestRedirect(scheme="http"),
            b"/",
            head(host=b"[::1]:9000"),
            (302, b"http://[::1]/cart/1"),
        ),
        (RequestRedirect(), b"/", head(host=b""), (302, b"/cart/1")),
    ],
)
def test_location(
    cfg: RequestRedirect, prefix: bytes | None, req: RequestHead, expected: tuple[int, bytes]
) -> None:
    assert redirect.compile(cfg, prefix).redirect(req) == expected


def test_https_request_keeps_scheme_and_drops_default_port() -> None:
    r = head(host=b"shop:443")
    r.scheme = b"https"
    assert redirect.compile(RequestRedirect(hostname="x"), b"/").redirect(r) == (
        302,
        b"https://x/cart/1",
    )


def test_redirect_does_not_modify_the_head() -> None:
    r = head()
    f = redirect.compile(
        RequestRedirect(hostname="x", path=PathModifier(type="ReplaceFullPath", value="/y")), None
    )
    f.redirect(r)
    assert (r.host, r.path) == (b"shop:8080", b"/cart/1")


@pytest.mark.parametrize(
    ("cfg", "fragment"),
    [
        (RequestRedirect(status_code=200), "statusCode 200"),
        (RequestRedirect(scheme="ftp"), "scheme 'ftp'"),
        (RequestRedirect(port=0), "port 0"),
        (RequestRedirect(hostname="a/b"), "invalid hostname"),
        (RequestRedirect(path=PathModifier(type="ReplacePrefixMatch", value="/x")), "PathPrefix"),
    ],
)
def test_bad_config(cfg: RequestRedirect, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        redirect.compile(cfg, None, "rule r")


def test_split_authority() -> None:
    assert redirect.split_authority(b"a:80") == (b"a", 80)
    assert redirect.split_authority(b"a") == (b"a", None)
    assert redirect.split_authority(b"[::1]") == (b"[::1]", None)
    assert redirect.split_authority(b"[::1]:1") == (b"[::1]", 1)
    assert redirect.split_authority(b"a:x") == (b"a", None)
