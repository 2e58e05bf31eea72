"""URLRewrite filter and the Gateway API prefix replacement table."""

from __future__ import annotations

import pytest

from gossamer.filters import rewrite
from gossamer.http.message import RequestHead, header_get
from gossamer.snapshot import PathModifier, URLRewrite


@pytest.mark.parametrize(
    ("path", "prefix", "replacement", "expected"),
    [
        # The Gateway API's table for ReplacePrefixMatch.
        (b"/foo/bar", b"/foo", "/xyz", b"/xyz/bar"),
        (b"/foo/bar", b"/foo", "/xyz/", b"/xyz/bar"),
        (b"/foo/bar", b"/foo/", "/xyz", b"/xyz/bar"),
        (b"/foo/bar", b"/foo/", "/xyz/", b"/xyz/bar"),
        (b"/foo", b"/foo", "/xyz", b"/xyz"),
        (b"/foo/", b"/foo", "/xyz", b"/xyz/"),
        (b"/foo/bar", b"/foo", "", b"/bar"),
        (b"/foo/", b"/foo", "", b"/"),
        (b"/foo", b"/foo", "", b"/"),
        (b"/foo/", b"/foo", "/", b"/"),
        (b"/foo", b"/foo", "/", b"/"),
        (b"/a/b", b"/", "/root", b"/root/a/b"),
    ],
)
def test_replace_prefix_match_table(
    path: bytes, prefix: bytes, replacement: str, expected: bytes
) -> None:
    f = rewrite.compile(
        URLRewrite(path=PathModifier(type="ReplacePrefixMatch", value=replacement)), prefix
    )
    head = RequestHead(b"GET", path, b"q=1")
    f.apply_request(head)
    assert head.path == expected
    assert head.query == b"q=1"


def test_full_path_and_hostname() -> None:
    f = rewrite.compile(
        URLRewrite(hostname="Internal.svc", path=PathModifier(type="ReplaceFullPath", value="/n")),
        None,
    )
    head = RequestHead(b"GET", b"/old/x", b"a=b", [(b"host", b"public:8080")], host=b"public:8080")
    f.apply_request(head)
    assert (head.path, head.query, head.host) == (b"/n", b"a=b", b"internal.svc")
    assert header_get(head.headers, b"host") == b"internal.svc"


def test_non_ascii_path_is_percent_encoded() -> None:
    assert rewrite.encode_path("/caf\u00e9 x", "w") == b"/caf%C3%A9%20x"


@pytest.mark.parametrize(
    ("cfg", "prefix", "fragment"),
    [
        (URLRewrite(path=PathModifier(type="ReplacePrefixMatch", value="/x")), None, "PathPrefix"),
        (URLRewrite(path=PathModifier(type="ReplaceFullPath", value="x")), None, "start with"),
        (URLRewrite(path=PathModifier(type="ReplaceFullPath", value="/a?b")), None, "'?'"),
        (URLRewrite(hostname="bad host"), None, "invalid hostname"),
    ],
)
def test_bad_config(cfg: URLRewrite, prefix: bytes | None, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        rewrite.compile(cfg, prefix, "rule r")
