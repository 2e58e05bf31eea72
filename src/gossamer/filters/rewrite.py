"""URLRewrite: change a request's host and path before it goes upstream (Gateway API semantics).

`compile(rewrite, matched_prefix)` builds a `URLRewriteFilter` once per route match: a
`ReplacePrefixMatch` needs the `PathPrefix` the request matched, which the router knows at compile
time, so nothing is looked up per request. The query string is always kept.
"""

from __future__ import annotations

from gossamer.http import syntax
from gossamer.http.message import RequestHead, header_set
from gossamer.snapshot import PathModifier, URLRewrite


def encode_path(value: str, where: str) -> bytes:
    """A configured path as the bytes a request would carry (non-ASCII percent-encoded).

    Raises:
        ValueError: the path does not start with "/" or holds "?", "#" or control characters.
    """
    try:
        return syntax.encode_path(value)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def encode_hostname(value: str, where: str) -> bytes:
    """A configured hostname, lower-cased, as bytes; ValueError when it is not a hostname."""
    try:
        return syntax.encode_hostname(value)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def strip_prefix(prefix: bytes) -> bytes:
    """A PathPrefix value as it is compared: trailing "/" dropped, so "/" becomes b""."""
    return prefix.rstrip(b"/")


def replace_prefix(path: bytes, prefix: bytes, replacement: bytes) -> bytes:
    """Gateway API ReplacePrefixMatch: swap the matched path prefix for `replacement`.

    `prefix` and `replacement` come from `strip_prefix` (no trailing "/"). Examples with prefix
    "/foo": "/foo/bar" -> "/xyz/bar" for "/xyz" or "/xyz/"; "/foo" -> "/xyz"; "/foo/" -> "/xyz/";
    "/foo/bar" -> "/bar" and "/foo" -> "/" for an empty or "/" replacement. A path that does not
    start with the prefix (not matched by it) is returned unchanged.
    """
    if not path.startswith(prefix):
        return path
    return replacement + path[len(prefix) :] or b"/"


def compile_path(
    modifier: PathModifier, matched_prefix: bytes | None, where: str
) -> tuple[bytes | None, bytes | None, bytes]:
    """Compile a path modifier into (full_path, prefix, replacement); exactly one of the first two
    is set.

    Args:
        modifier: ReplaceFullPath or ReplacePrefixMatch.
        matched_prefix: the rule match's PathPrefix value (b"/" for a match without a path), or None
            when the match is Exact or RegularExpression.

    Raises:
        ValueError: ReplacePrefixMatch without a PathPrefix match, or an invalid path.
    """
    if modifier.type == "ReplaceFullPath":
        return encode_path(modifier.value, where), None, b""
    if matched_prefix is None:
        raise ValueError(f"{where}: ReplacePrefixMatch needs a PathPrefix match on the rule")
    replacement = b"" if modifier.value in ("", "/") else encode_path(modifier.value, where)
    return None, strip_prefix(matched_prefix), strip_prefix(replacement)


class URLRewriteFilter:
    """A compiled URLRewrite; `apply_request` mutates the head in place."""

    __slots__ = ("full_path", "hostname", "prefix", "replacement")

    def __init__(
        self,
        hostname: bytes | None,
        full_path: bytes | None,
        prefix: bytes | None,
        replacement: bytes,
    ) -> None:
        self.hostname = hostname
        self.full_path = full_path
        self.prefix = prefix
        self.replacement = replacement

    def apply_request(self, head: RequestHead) -> None:
        """Rewrite the head's host (and Host header) and path; the query is kept."""
        if self.hostname is not None:
            head.host = self.hostname
            header_set(head.headers, b"host", self.hostname)
        if self.full_path is not None:
            head.path = self.full_path
        elif self.prefix is not None:
            head.path = replace_prefix(head.path, self.prefix, self.replacement)

    def __repr__(self) -> str:
        return (
            f"URLRewriteFilter(hostname={self.hostname!r}, full_path={self.full_path!r}, "
            f"prefix={self.prefix!r}, replacement={self.replacement!r})"
        )


def compile(
    rewrite: URLRewrite, matched_prefix: bytes | None, where: str = "URLRewrite"
) -> URLRewriteFilter:
    """Compile a URLRewrite for one route match.

    Args:
        rewrite: the Snapshot's `URLRewrite`.
        matched_prefix: the match's PathPrefix value (b"/" when the match has no path condition),
            None when it is Exact or RegularExpression.
        where: names the filter in error messages.

    Raises:
        ValueError: bad hostname or path, or ReplacePrefixMatch without a PathPrefix match.
    """
    hostname = None if rewrite.hostname is None else encode_hostname(rewrite.hostname, where)
    full_path, prefix, replacement = None, None, b""
    if rewrite.path is not None:
        full_path, prefix, replacement = compile_path(rewrite.path, matched_prefix, where)
    return URLRewriteFilter(hostname, full_path, prefix, replacement)
