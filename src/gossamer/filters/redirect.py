"""RequestRedirect: answer a request locally with a 3xx and a Location built per the Gateway API.

`compile(redirect, matched_prefix)` builds a `RedirectFilter` once per route match;
`filter.redirect(head)` returns `(status, location)` for the data plane's local response (flag
`redirect`). Location rules (Gateway API HTTPRequestRedirectFilter):
- scheme: the configured one, else the request's;
- hostname: the configured one, else the request's host without its port;
- port: the configured one; else the well-known port of a configured scheme; else the port the
  request named (the listener port a client used). It is left out when it is the scheme's default
  (http 80, https 443) or unknown;
- path: unchanged, ReplaceFullPath, or ReplacePrefixMatch of the rule's matched PathPrefix;
- the query string is kept.
"""

from __future__ import annotations

from gossamer.filters.rewrite import compile_path, encode_hostname, replace_prefix
from gossamer.http.message import RequestHead
from gossamer.snapshot import RequestRedirect

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {b"http": 80, b"https": 443}


def split_authority(authority: bytes) -> tuple[bytes, int | None]:
    """Split "host[:port]" (IPv6 as "[::1]:80") into the host and the port (None when absent or
    not a number)."""
    colon = authority.rfind(b":")
    if colon < 0 or authority.find(b"]", colon) >= 0:
        return authority, None
    port = authority[colon + 1 :]
    if not port.isdigit():
        return authority[:colon], None
    return authority[:colon], int(port)


class RedirectFilter:
    """A compiled RequestRedirect; `redirect(head)` builds the answer, the head is not changed."""

    __slots__ = ("full_path", "hostname", "port", "prefix", "replacement", "scheme", "status")

    def __init__(
        self,
        status: int,
        scheme: bytes | None,
        hostname: bytes | None,
        port: int | None,
        full_path: bytes | None,
        prefix: bytes | None,
        replacement: bytes,
    ) -> None:
        self.status = status
        self.scheme = scheme
        self.hostname = hostname
        self.port = port
        self.full_path = full_path
        self.prefix = prefix
        self.replacement = replacement

    def redirect(self, head: RequestHead) -> tuple[int, bytes]:
        """Return (status, Location) for `head`.

        A request without a host (and no configured hostname) gets a relative Location (path and
        query only), which RFC 9110 allows.
        """
        host, port = split_authority(head.host)
        scheme = self.scheme if self.scheme is not None else (head.scheme or b"http")
        if self.hostname is not None:
            host = self.hostname
        if self.port is not None:
            port = self.port
        elif self.scheme is not None:
            port = None  # the well-known port of the new scheme, left out of the Location
        if self.full_path is not None:
            path = self.full_path
        elif self.prefix is not None:
            path = replace_prefix(head.path, self.prefix, self.replacement)
        else:
            path = head.path or b"/"
        parts = [path]
        if head.query:
            parts += (b"?", head.query)
        if host:
            if port is not None and port != _DEFAULT_PORTS.get(scheme):
                host = host + b":" + str(port).encode()
            parts[:0] = (scheme, b"://", host)
        return self.status, b"".join(parts)

    def __repr__(self) -> str:
        return (
            f"RedirectFilter({self.status}, scheme={self.scheme!r}, hostname={self.hostname!r}, "
            f"port={self.port!r}, full_path={self.full_path!r}, prefix={self.prefix!r})"
        )


def compile(
    redirect: RequestRedirect, matched_prefix: bytes | None, where: str = "RequestRedirect"
) -> RedirectFilter:
    """Compile a RequestRedirect for one route match.

    Args:
        redirect: the Snapshot's `RequestRedirect`.
        matched_prefix: the match's PathPrefix value (b"/" when the match has no path condition),
            None when it is Exact or RegularExpression.
        where: names the filter in error messages.

    Raises:
        ValueError: an unsupported status or scheme, a bad hostname, port or path, or
            ReplacePrefixMatch without a PathPrefix match.
    """
    if redirect.status_code not in REDIRECT_STATUSES:
        raise ValueError(
            f"{where}: statusCode {redirect.status_code} is not one of 301, 302, 303, 307, 308"
        )
    scheme = None
    if redirect.scheme is not None:
        if redirect.scheme.lower() not in ("http", "https"):
            raise ValueError(f"{where}: scheme {redirect.scheme!r} is not http or https")
        scheme = redirect.scheme.lower().encode("ascii")
    if redirect.port is not None and not 1 <= redirect.port <= 65535:
        raise ValueError(f"{where}: port {redirect.port} is not in 1-65535")
    hostname = None if redirect.hostname is None else encode_hostname(redirect.hostname, where)
    full_path, prefix, replacement = None, None, b""
    if redirect.path is not None:
        full_path, prefix, replacement = compile_path(redirect.path, matched_prefix, where)
    return RedirectFilter(
        redirect.status_code, scheme, hostname, redirect.port, full_path, prefix, replacement
    )
