"""Header rules of a proxy hop: which fields are hop-by-hop and never forwarded."""

from __future__ import annotations

from gossamer.http.message import Headers

# RFC 9110 7.6.1 plus the legacy ones every proxy drops, and the proxy credentials (RFC 9110
# 11.7: Proxy-Authorization is consumed by the proxy it is meant for, Proxy-Authenticate comes
# from one; neither may pass a hop). Content-Length is not hop-by-hop, but the codec owns
# framing: it consumes it and re-emits it from the body length it forwards.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Names the codec takes out of the header list while parsing (hop-by-hop plus framing).
CONSUMED: frozenset[bytes] = HOP_BY_HOP | {b"content-length"}


def connection_tokens(value: bytes) -> list[bytes]:
    """The lower-cased tokens of a Connection header value (`close`, `keep-alive`, names)."""
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


def remove_connection_named(headers: Headers, tokens: list[bytes]) -> None:
    """Remove the fields a Connection header names (RFC 9110 7.6.1), in place."""
    named = {t for t in tokens if t not in (b"close", b"keep-alive")}
    if named:
        headers[:] = [(k, v) for k, v in headers if k not in named]
