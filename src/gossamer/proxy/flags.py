"""Response flags (why the mesh answered a request itself) and the local responses that carry them.

A local response is a complete HTTP/1.1 message: status line, `x-gossamer-flags: <flag>`,
`content-type: application/json`, `content-length`, `connection`, `x-request-id`, and the body
`{"error": "<flag>", "message": "...", "requestId": "..."}` (a `denied` body also names the
`policy`; a redirect is not an error: its body is `{"redirect": "<location>", "status": N}`).
Everything that depends only on the flag is encoded once at import; a call joins a few byte
strings.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from gossamer.http import http1

NO_ROUTE = "no-route"
NO_HEALTHY_ENDPOINT = "no-healthy-endpoint"
OVERFLOW = "overflow"
TIMEOUT = "timeout"
CONNECT_FAILURE = "connect-failure"
UPSTREAM_RESET = "upstream-reset"
RETRY_BUDGET_EXHAUSTED = "retry-budget-exhausted"
BAD_REQUEST = "bad-request"
HEADERS_TOO_LARGE = "headers-too-large"
REDIRECT = "redirect"
DRAINING = "draining"
# Beyond the list in docs/internals.md: a matched rule with no backend to send to (none listed, or
# every weight 0; the Gateway API asks for a 500), and a failure inside the proxy itself.
NO_BACKEND = "no-backend"
INTERNAL_ERROR = "internal-error"
# An AuthorizationPolicy refused the request (inbound listener; filters/authz.py decides).
DENIED = "denied"
# The upstream's response head was over the header limit (it is not forwarded).
UPSTREAM_HEADERS_TOO_LARGE = "upstream-headers-too-large"
# A client did not finish its request head within the header timeout.
HEADER_TIMEOUT = "header-timeout"
# A plaintext client on an inbound listener whose mTLS mode is STRICT (sent in plaintext, then the
# connection closes; nothing reaches the app).
MTLS_REQUIRED = "mtls-required"
# A RateLimitPolicy's bucket is empty (429, with Retry-After and the IETF RateLimit headers).
RATE_LIMITED = "rate-limited"
# A Fault filter aborted the request on purpose (the status comes from the filter; 503 default).
FAULT_ABORT = "fault-abort"
# Not a local error: a route's fallback answered instead of the failed backend. It is sent as
# `x-gossamer-flags: fallback,<cause>` on the fallback's own response (cause: the flag the
# failure would have had, or `upstream-5xx`).
FALLBACK = "fallback"

# The status each flag answers with. A redirect's status comes from the filter
# (301/302/303/307/308); 302 is only the default.
STATUS: dict[str, int] = {
    NO_ROUTE: 404,
    NO_HEALTHY_ENDPOINT: 503,
    OVERFLOW: 503,
    TIMEOUT: 504,
    CONNECT_FAILURE: 503,
    UPSTREAM_RESET: 502,
    RETRY_BUDGET_EXHAUSTED: 503,
    BAD_REQUEST: 400,
    HEADERS_TOO_LARGE: 431,
    REDIRECT: 302,
    DRAINING: 503,
    NO_BACKEND: 500,
    INTERNAL_ERROR: 500,
    DENIED: 403,
    UPSTREAM_HEADERS_TOO_LARGE: 502,
    HEADER_TIMEOUT: 408,
    MTLS_REQUIRED: 400,
    RATE_LIMITED: 429,
    FAULT_ABORT: 503,
}

FLAGS: tuple[str, ...] = tuple(STATUS)

# Every status a local response can carry (the codec's table, which also has 403, 408, 501).
REASONS: dict[int, bytes] = http1.REASONS

_json = msgspec.json.Encoder()


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))


def _head_prefix(flag: str, status: int) -> bytes:
    return (
        _status_line(status)
        + b"x-gossamer-flags: "
        + flag.encode("ascii")
        + b"\r\ncontent-type: application/json\r\n"
    )


# Per flag: the head up to the varying headers, and the body up to the message.
_HEAD_PREFIX: dict[str, bytes] = {
    flag: _head_prefix(flag, status) for flag, status in STATUS.items()
}
_BODY_PREFIX: dict[str, bytes] = {
    flag: b'{"error":' + _json.encode(flag) + b',"message":' for flag in STATUS
}
_CONN_KEEP_ALIVE = b"connection: keep-alive\r\n"
_CONN_CLOSE = b"connection: close\r\n"


def status_of(flag: str) -> int:
    """The HTTP status a flag answers with; KeyError names the unknown flag."""
    try:
        return STATUS[flag]
    except KeyError:
        raise KeyError(f"unknown response flag {flag!r}; known: {', '.join(FLAGS)}") from None


def local_response(
    flag: str,
    message: str,
    request_id: str | bytes,
    *,
    keep_alive: bool = True,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
    status: int | None = None,
    fields: Iterable[tuple[str, str | None]] = (),
) -> bytes:
    """Build the complete HTTP/1.1 response the mesh sends on its own for `flag`.

    Args:
        flag: one of FLAGS.
        message: a one-line human explanation, put in the JSON body.
        request_id: the request's `x-request-id` (echoed as header and as `requestId`).
        keep_alive: whether the connection stays open after this response.
        extra_headers: more (name, value) header pairs, e.g. `location` for a redirect.
        status: overrides the flag's status (a redirect filter's 301/307/...).
        fields: more members of the JSON body, after `message` (`policy` for `denied`).

    Raises:
        KeyError: `flag` is not a known flag.
    """
    head = _HEAD_PREFIX.get(flag)
    if head is None:
        status_of(flag)  # raises with the list of known flags
        raise AssertionError("unreachable")
    if status is not None and status != STATUS[flag]:
        head = _head_prefix(flag, status)
    rid = request_id if isinstance(request_id, bytes) else request_id.encode("latin-1", "replace")
    rid_str = rid.decode("latin-1")
    if flag == REDIRECT:
        extra_headers = tuple(extra_headers)  # read twice: for the body and as headers
        body = _redirect_body(extra_headers, status or STATUS[flag])
    else:
        more = b"".join(b"," + _json.encode(k) + b":" + _json.encode(v) for k, v in fields)
        body = (
            _BODY_PREFIX[flag]
            + _json.encode(message)
            + more
            + b',"requestId":'
            + _json.encode(rid_str)
            + b"}"
        )
    parts = [
        head,
        b"content-length: %d\r\n" % len(body),
        _CONN_KEEP_ALIVE if keep_alive else _CONN_CLOSE,
    ]
    if rid:
        parts.append(b"x-request-id: " + _header_safe(rid) + b"\r\n")
    for name, value in extra_headers:
        parts.append(name + b": " + _header_safe(value) + b"\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


def _redirect_body(extra_headers: Iterable[tuple[bytes, bytes]], status: int) -> bytes:
    location = b""
    for name, value in extra_headers:
        if name.lower() == b"location":
            location = value
    return _json.encode({"redirect": location.decode("latin-1"), "status": status})


def _header_safe(value: bytes) -> bytes:
    # A header value echoed back must not let a client split the response.
    if b"\r" in value or b"\n" in value:
        return value.replace(b"\r", b"").replace(b"\n", b"")
    return value
