"""Request and response heads as the proxy's layers see them: bytes in, no I/O, no asyncio.

Header names are stored lower-cased (HTTP field names are case-insensitive) and values as the bytes
that arrived. The proxy's filters and router mutate these heads in place before the codec serializes
them for the upstream, so they are plain mutable objects with slots, not frozen models.
"""

from __future__ import annotations

Headers = list[tuple[bytes, bytes]]


def header_get(headers: Headers, name: bytes) -> bytes | None:
    """First value of a header (name lower-case), or None."""
    for k, v in headers:
        if k == name:
            return v
    return None


def header_remove(headers: Headers, name: bytes) -> None:
    headers[:] = [(k, v) for k, v in headers if k != name]


def header_set(headers: Headers, name: bytes, value: bytes) -> None:
    """Replace every value of `name` with one value, keeping its first position."""
    for i, (k, _) in enumerate(headers):
        if k == name:
            headers[i] = (name, value)
            headers[i + 1 :] = [(k2, v2) for k2, v2 in headers[i + 1 :] if k2 != name]
            return
    headers.append((name, value))


class RequestHead:
    """An HTTP request line and headers. `path` and `query` are split from the target."""

    __slots__ = ("headers", "host", "http_version", "method", "path", "query", "scheme")

    def __init__(
        self,
        method: bytes,
        path: bytes,
        query: bytes = b"",
        headers: Headers | None = None,
        http_version: bytes = b"1.1",
        host: bytes = b"",
        scheme: bytes = b"http",
    ) -> None:
        self.method = method
        self.path = path  # e.g. b"/prices/42", percent-encoding as received
        self.query = query  # without the "?"; b"" when absent
        self.headers: Headers = headers if headers is not None else []
        self.http_version = http_version
        self.host = host  # authority without port normalisation; from Host or an absolute target
        self.scheme = scheme

    @property
    def target(self) -> bytes:
        return self.path + b"?" + self.query if self.query else self.path

    def __repr__(self) -> str:
        return f"RequestHead({self.method!r}, {self.target!r}, host={self.host!r})"


class ResponseHead:
    """An HTTP status line and headers."""

    __slots__ = ("headers", "http_version", "reason", "status")

    def __init__(
        self,
        status: int,
        headers: Headers | None = None,
        reason: bytes = b"",
        http_version: bytes = b"1.1",
    ) -> None:
        self.status = status
        self.headers: Headers = headers if headers is not None else []
        self.reason = reason
        self.http_version = http_version

    def __repr__(self) -> str:
        return f"ResponseHead({self.status})"
