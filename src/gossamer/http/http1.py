"""HTTP/1.1 codec over httptools: sans-IO parsers emitting heads, body chunks and ends; serializers.

Theory of operation. A parser is fed bytes as they arrive (`feed`) and calls its handler: one
`on_*_head(head, body_length, keep_alive)`, zero or more `on_*_body(bytes)`, one `on_*_end()` per
message, several messages per feed when they are pipelined. The codec owns framing: it consumes
Content-Length, Transfer-Encoding and the other hop-by-hop fields (`headers.CONSUMED`), removes the
fields that Connection names, and reports the framing as `body_length`:

    >= 0            that many bytes follow (Content-Length; 0: no body)
    BODY_CHUNKED    chunked; the handler sees de-chunked data, extensions and trailers are dropped
    BODY_UNTIL_EOF  (responses) the body ends when the peer closes
    BODY_HEAD       (responses) no body follows, but the head keeps the Content-Length it had
                    (the answer to a HEAD request)

The serializers add the framing back from `body_length`, so a body can be re-framed on the way
through (an until-EOF response goes out chunked). Nothing here does I/O or knows about asyncio.

Pass-through. A Python call per header field and a re-serialised head cost more than the rest of
a small proxied response, so the response parser hands on a head that needs no change as the
bytes received (`ParsedResponseHead`: Connection line cut out, names in their case, fields
parsed only if someone reads them) and `serialize_response_head` writes those bytes back; see
`ResponseParser`. Request heads are still built field by field: routing reads them, and the
checks a spliced request head needs cost as much as serialising it (measured).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

import httptools

from gossamer.http.errors import ProtocolError, ResponseHeadTooLarge
from gossamer.http.headers import CONSUMED, connection_tokens, remove_connection_named
from gossamer.http.message import Headers, RequestHead, ResponseHead

BODY_CHUNKED = -1
BODY_UNTIL_EOF = -2
BODY_HEAD = -3

LAST_CHUNK = b"0\r\n\r\n"
CRLF = b"\r\n"

_VERSIONS = {"1.1": b"1.1", "1.0": b"1.0", "0.9": b"0.9"}

REASONS: dict[int, bytes] = {
    100: b"Continue",
    200: b"OK",
    201: b"Created",
    202: b"Accepted",
    204: b"No Content",
    206: b"Partial Content",
    301: b"Moved Permanently",
    302: b"Found",
    303: b"See Other",
    304: b"Not Modified",
    307: b"Temporary Redirect",
    308: b"Permanent Redirect",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
# Status lines are built once per status and then reused.
_STATUS_LINES: dict[int, bytes] = {s: b"HTTP/1.1 %d %s\r\n" % (s, r) for s, r in REASONS.items()}
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})
_CONNECTION_CLOSE = b"connection: close\r\n\r\n"
_NO_CONTENT_LENGTH_STATUSES = frozenset({204, 304})
_METHODS_WITH_BODY = frozenset({b"POST", b"PUT", b"PATCH"})


class RequestHandler(Protocol):
    def on_request_head(self, head: RequestHead, body_length: int, keep_alive: bool) -> None: ...
    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self) -> None: ...


class ResponseHandler(Protocol):
    def on_response_head(self, head: ResponseHead, body_length: int, keep_alive: bool) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...


def _content_length(value: bytes) -> int:
    # llhttp has already rejected non-digits and conflicting duplicates before we see the value.
    try:
        return int(value)
    except ValueError:
        raise ProtocolError(400, f"invalid Content-Length {value[:40]!r}") from None


def _protocol_error_from(exc: Exception, status: int, what: str) -> Exception:
    """Map an httptools error to a ProtocolError; an error a handler raised passes through."""
    ctx = exc.__context__
    if isinstance(exc, httptools.HttpParserCallbackError) and isinstance(ctx, Exception):
        return ctx
    detail = str(exc) or type(exc).__name__
    return ProtocolError(status, f"malformed {what}: {detail}")


class RequestParser:
    """Parses requests from a client; see the module docstring for the events."""

    __slots__ = (
        "_chunked",
        "_cl",
        "_conn_tokens",
        "_consumed",
        "_fed_in_head",
        "_handler",
        "_head_size",
        "_headers",
        "_host",
        "_in_head",
        "_max_header_bytes",
        "_max_headers",
        "_parser",
        "_upgrade",
        "_url",
        "in_message",
    )

    def __init__(
        self, handler: RequestHandler, max_header_bytes: int = 65536, max_headers: int = 100
    ) -> None:
        self._handler = handler
        self._max_header_bytes = max_header_bytes
        self._max_headers = max_headers  # header fields per request (Envoy's default: 100)
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: Headers = []
        self._host: bytes | None = None
        self._conn_tokens: list[bytes] | None = None
        self._consumed = 0  # fields taken out of the list (hop-by-hop, framing), for the count
        self._chunked = False
        self._cl = 0
        self._upgrade = False
        self._head_size = 0
        self._fed_in_head = 0
        self._in_head = False
        # True from the first byte of a request to its end: a caller uses it to tell an idle
        # connection from one with a request under way.
        self.in_message = False

    @property
    def head_pending(self) -> bool:
        """Some bytes of a request head arrived but not all of it."""
        return self._in_head

    def feed(self, data: bytes) -> None:
        """Parse `data`, calling the handler for every event it completes.

        Raises:
            ProtocolError: 400 for malformed input, 431 when the head exceeds the size or field
                count limit, 501 for CONNECT; after it the parser is unusable and the connection
                must close.
        """
        started_in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # llhttp stops after the head of a request carrying `Connection: upgrade` (or CONNECT).
            # The proxy drops Upgrade and forwards it as a plain request; the rest is the next one.
            offset = exc.args[0] if exc.args and isinstance(exc.args[0], int) else len(data)
            self._parser = httptools.HttpRequestParser(self)
            if offset < len(data):
                self.feed(data[offset:])
            return
        except httptools.HttpParserError as exc:
            raise _protocol_error_from(exc, 400, "request") from None
        if self._in_head and started_in_head:
            # httptools buffers a header field until it is complete, so count raw bytes too.
            self._fed_in_head += len(data)
            if self._fed_in_head > self._max_header_bytes:
                raise ProtocolError(431, "request header block exceeds the limit")

    # --- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._host = None
        self._conn_tokens = None
        self._consumed = 0
        self._chunked = False
        self._cl = 0
        self._upgrade = False
        self._head_size = 0
        self._fed_in_head = 0
        self._in_head = True
        self.in_message = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > self._max_header_bytes:
            raise ProtocolError(431, "request target exceeds the header limit")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            return  # a trailer field: not forwarded
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._max_header_bytes:
            raise ProtocolError(431, "request header block exceeds the limit")
        name = name.lower()
        if name in CONSUMED:
            self._consumed += 1
            if name == b"connection":
                if value.lower() in _PLAIN_CONNECTION:
                    return  # llhttp already reads close / keep-alive for should_keep_alive()
                tokens = connection_tokens(value)
                if self._conn_tokens is None:
                    self._conn_tokens = tokens
                else:
                    self._conn_tokens.extend(tokens)
            elif name == b"content-length":
                self._cl = _content_length(value)
            elif name == b"transfer-encoding":
                self._chunked = True  # llhttp rejects a request TE that does not end in chunked
            elif name == b"upgrade":
                self._upgrade = True
            return
        if name == b"host":
            if self._host is not None:
                raise ProtocolError(400, "request has more than one Host header")
            self._host = value
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        method: bytes = parser.get_method()
        if method == b"CONNECT":
            raise ProtocolError(501, "CONNECT tunnels are not supported")
        version = _VERSIONS.get(parser.get_http_version(), b"1.1")
        headers = self._headers
        count = len(headers) + self._consumed
        if count > self._max_headers:
            raise ProtocolError(
                431, f"request has {count} header fields, more than {self._max_headers} allowed"
            )
        if self._conn_tokens:
            remove_connection_named(headers, self._conn_tokens)
        url = self._url
        host = self._host
        if b"#" in url:
            # RFC 9112 3.2: a request target has no fragment. Apps disagree on what one means
            # (some drop it, some keep it in the path), so the path a policy checked could differ
            # from the path the app serves: refuse it, as Envoy does.
            raise ProtocolError(400, f"a request target must not contain '#': {url[:200]!r}")
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
        elif url == b"*":
            path, query = url, b""
        else:
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise ProtocolError(400, f"invalid request target {url[:200]!r}") from None
            if not parsed.host:
                raise ProtocolError(400, f"invalid request target {url[:200]!r}")
            if parsed.schema is not None and parsed.schema.lower() == b"https":
                # Served as plain http it would send in clear what the app meant to encrypt.
                name = parsed.host[:200].decode("latin-1")
                raise ProtocolError(
                    400,
                    "https:// through the mesh's forward proxy is not supported: call "
                    f"http://{name}; the mesh encrypts between sidecars",
                )
            # RFC 9112 3.2.2: the authority of an absolute-form target replaces Host.
            host = parsed.host if parsed.port is None else b"%s:%d" % (parsed.host, parsed.port)
            path = parsed.path or b"/"
            query = parsed.query or b""
            self._set_host(host)
        if host is None:
            if version == b"1.1":
                raise ProtocolError(400, "HTTP/1.1 request without a Host header")
            host = b""
        if self._upgrade and (self._chunked or self._cl > 0):
            raise ProtocolError(400, "an Upgrade request with a body is not supported")
        body_length = BODY_CHUNKED if self._chunked else self._cl
        head = RequestHead(method, path, query, headers, version, host)
        self._handler.on_request_head(head, body_length, parser.should_keep_alive())

    def _set_host(self, host: bytes) -> None:
        headers = self._headers
        for i, (k, _) in enumerate(headers):
            if k == b"host":
                headers[i] = (b"host", host)
                return
        headers.insert(0, (b"host", host))

    def on_body(self, body: bytes) -> None:
        self._handler.on_request_body(body)

    def on_message_complete(self) -> None:
        self.in_message = False
        self._handler.on_request_end()


class ParsedResponseHead(ResponseHead):
    """A response head kept as the bytes the upstream sent (`raw`), its fields parsed on demand.

    Reading `headers` (a filter, the retry logic) builds the field list once from `raw`; from
    then on the head is serialised from the list like any other. A head whose fields were never
    read goes downstream as `raw`, not re-serialised.
    """

    __slots__ = ("_fields", "raw", "raw_body_length")

    def __init__(self, status: int, raw: bytes, body_length: int) -> None:
        self.status = status
        self.reason = b""
        self.http_version = b"1.1"
        self._fields: Headers | None = None
        self.raw = raw  # status line and fields up to the blank line; Connection lines cut out
        self.raw_body_length = body_length

    @property
    def headers(self) -> Headers:
        fields = self._fields
        if fields is None:
            fields = self._fields = _fields_of(self.raw)
        return fields

    @headers.setter
    def headers(self, value: Headers) -> None:
        self._fields = value


def _fields_of(raw: bytes) -> Headers:
    """The field list of a raw response head, as the full parser would have built it."""
    # llhttp has checked the head: CRLF line ends, no obs-fold, no space before a colon; like
    # llhttp we drop the whitespace before a value and keep any after it.
    fields: Headers = []
    for line in raw.split(b"\r\n")[1:-1]:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name != b"content-length":  # framing: the serializer re-adds it
            fields.append((name, value.lstrip(b" \t")))
    return fields


class _Fallback(Exception):
    """Raised from the lean parser's callback: this head needs the full parser."""


class _LeanCallbacks:
    """The callbacks of the lean parser: no `on_header`, so httptools makes no call per field."""

    __slots__ = ("on_body", "on_headers_complete", "on_message_begin", "on_message_complete")

    def __init__(
        self,
        on_message_begin: Callable[[], None],
        on_headers_complete: Callable[[], None],
        on_body: Callable[[bytes], None],
        on_message_complete: Callable[[], None],
    ) -> None:
        self.on_message_begin = on_message_begin
        self.on_headers_complete = on_headers_complete
        self.on_body = on_body
        self.on_message_complete = on_message_complete


# Hop-by-hop fields a raw head may not carry downstream (a plain Connection line is cut out).
# llhttp rejects whitespace before the colon, so this finds every such field.
_LEAN_REFUSED = re.compile(
    rb"\n(?:keep-alive|proxy-(?:authenticate|authorization|connection)|te|trailer"
    rb"|transfer-encoding|upgrade):",
    re.IGNORECASE,
)


class ResponseParser:
    """Parses responses from an upstream; tell it each request's method first with `expect`.

    Interim 1xx responses are dropped (the proxy answers `Expect: 100-continue` itself).

    Two httptools parsers: the lean one, used for a response that starts a read, has no
    per-field callback and hands on the head as received (`ParsedResponseHead`) when it carries
    nothing the proxy must change; a head that does (another hop-by-hop field, chunked or
    HTTP/1.0 framing, a 503 whose flags the retry logic reads) aborts it, and the full parser
    parses the same response again from its first byte.
    """

    __slots__ = (
        "_after_interim",
        "_body_length",
        "_chunked",
        "_cl",
        "_cl_raw",
        "_conn_tokens",
        "_done_early",
        "_handler",
        "_headers",
        "_in_head",
        "_interim",
        "_is_head",
        "_lean",
        "_lean_callbacks",
        "_lean_parser",
        "_max_header_bytes",
        "_parser",
        "_src",
        "_start",
        "in_message",
    )

    def __init__(self, handler: ResponseHandler, max_header_bytes: int = 65536) -> None:
        self._handler = handler
        self._max_header_bytes = max_header_bytes
        self._parser = httptools.HttpResponseParser(self)
        self._lean_callbacks = _LeanCallbacks(
            self.on_message_begin,
            self._lean_headers_complete,
            self.on_body,
            self.on_message_complete,
        )
        self._lean_parser = httptools.HttpResponseParser(self._lean_callbacks)
        self._lean = False  # the current response is parsed by the lean parser
        self._src = b""  # the bytes of the current read (with the earlier ones of a split head)
        self._start = 0  # where in `_src` the current response began; -1: unknown
        self._headers: Headers = []
        self._conn_tokens: list[bytes] | None = None
        self._chunked = False
        self._cl = -1
        self._cl_raw = b""
        self._in_head = False
        self._interim = False
        self._after_interim = False
        self._is_head = False
        self._done_early = False
        self._body_length = 0
        self.in_message = False

    def expect(self, method: bytes) -> None:
        """Set the method of the request whose response comes next (a HEAD answer has no body)."""
        self._is_head = method == b"HEAD"

    def feed(self, data: bytes) -> None:
        """Parse `data`. Raises ProtocolError(502) when the upstream's bytes are not HTTP/1.1."""
        started_in_head = self._in_head
        if not self.in_message or self._after_interim:
            # A response starts at the first byte of this read: the lean parser may take it.
            self._src = data
            self._start = 0
            if not self.in_message:
                self._lean = not self._is_head
        elif started_in_head:
            # The head spans reads: keep its bytes, for the raw head and to measure it.
            self._src += data
        try:
            (self._lean_parser if self._lean else self._parser).feed_data(data)
        except httptools.HttpParserUpgrade:
            raise ProtocolError(502, "upstream switched protocols, which was not asked") from None
        except httptools.HttpParserError as exc:
            if not isinstance(exc.__context__, _Fallback):
                raise _protocol_error_from(exc, 502, "response") from None
            fallback = True
        else:
            fallback = False
        if fallback:
            # Outside the except block: an error a callback raises while the full parser runs
            # would otherwise become the context of this one and be lost.
            self._refeed()
        if self._done_early:
            # We ended a HEAD answer at its head; llhttp would wait for the body it announced.
            self._done_early = False
            self._parser = httptools.HttpResponseParser(self)
        elif self._in_head and len(self._src) - self._start > self._max_header_bytes:
            # An unfinished head already over the limit (a finished one is measured when it
            # completes, in `_lean_headers_complete` / `on_headers_complete`).
            raise ResponseHeadTooLarge(self._max_header_bytes)

    def _refeed(self) -> None:
        """Give the current response, from its first byte, to the full parser."""
        self._lean_parser = httptools.HttpResponseParser(self._lean_callbacks)  # it was aborted
        self._lean = False
        self.in_message = False
        try:
            self._parser.feed_data(self._src[self._start :])
        except httptools.HttpParserUpgrade:
            raise ProtocolError(502, "upstream switched protocols, which was not asked") from None
        except httptools.HttpParserError as exc:
            raise _protocol_error_from(exc, 502, "response") from None

    def feed_eof(self) -> None:
        """The upstream closed. Ends an until-EOF body; raises ProtocolError(502) mid-message."""
        if not self.in_message:
            return
        if not self._in_head and self._body_length == BODY_UNTIL_EOF:
            self.in_message = False
            self._handler.on_response_end()
            return
        raise ProtocolError(502, "upstream closed the connection before the response was complete")

    # --- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = []
        self._conn_tokens = None
        self._chunked = False
        self._cl = -1
        self._in_head = True
        self._interim = False
        self._after_interim = False
        self.in_message = True

    def _lean_headers_complete(self) -> None:
        self._in_head = False
        parser = self._lean_parser
        status: int = parser.get_status_code()
        start = self._start
        src = self._src
        if start < 0:
            # A second response in one read, and not after an interim one: nobody asked for it.
            raise ProtocolError(502, "upstream sent a response that was not asked for")
        end = src.find(b"\r\n\r\n", start)
        if status < 200:
            if status == 101:
                raise ProtocolError(502, "upstream switched protocols, which was not asked")
            if end < 0:
                raise _Fallback
            self._interim = True
            self._start = end + 4  # the final response follows the interim head
            return
        # (get_http_version formats a string; the status line says the same thing cheaper.)
        if end < 0 or status == 503 or not src.startswith(b"HTTP/1.1 ", start):
            raise _Fallback
        if end + 4 - start > self._max_header_bytes:
            raise ResponseHeadTooLarge(self._max_header_bytes)
        raw = src[start : end + 2]
        if _LEAN_REFUSED.search(raw) is not None:
            raise _Fallback
        low = raw.lower()
        keep_alive: bool = parser.should_keep_alive()
        i = low.find(b"\ncontent-length:")
        if i >= 0:
            j = low.find(b"\n", i + 16)
            if low.find(b"\ncontent-length:", j) >= 0 or status in _NO_CONTENT_LENGTH_STATUSES:
                raise _Fallback
            body_length = int(raw[i + 16 : j])  # llhttp has checked the digits
        elif status in _NO_CONTENT_LENGTH_STATUSES:
            body_length = 0
        else:
            body_length = BODY_UNTIL_EOF
            keep_alive = False
        i = low.find(b"\nconnection:")
        if i >= 0:
            j = low.find(b"\n", i + 12)
            if (
                low[i + 12 : j].strip() not in _PLAIN_CONNECTION
                or low.find(b"\nconnection:", j) >= 0
            ):
                raise _Fallback
            raw = raw[: i + 1] + raw[j + 1 :]  # hop-by-hop: the line goes, CRLF and all
        self._body_length = body_length
        self._handler.on_response_head(
            ParsedResponseHead(status, raw, body_length), body_length, keep_alive
        )

    def on_header(self, name: bytes, value: bytes) -> None:
        # No per-field size accounting here (it is a hot path): the head's bytes are kept in
        # `_src` from `_start`, so its size is measured once, in `on_headers_complete`.
        if not self._in_head:
            return
        name = name.lower()
        if name in CONSUMED:
            if name == b"connection":
                if value.lower() not in _PLAIN_CONNECTION:
                    tokens = connection_tokens(value)
                    if self._conn_tokens is None:
                        self._conn_tokens = tokens
                    else:
                        self._conn_tokens.extend(tokens)
            elif name == b"content-length":
                self._cl = _content_length(value)
                self._cl_raw = value
            elif name == b"transfer-encoding":
                self._chunked = value.rstrip().lower().endswith(b"chunked")
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        status: int = parser.get_status_code()
        start = self._start
        if start < 0:
            # A second response in one read, and not after an interim one: nobody asked for it.
            raise ProtocolError(502, "upstream sent a response that was not asked for")
        src = self._src
        end = src.find(b"\r\n\r\n", start)
        size = (end + 4 if end >= 0 else len(src)) - start
        if size > self._max_header_bytes:
            raise ResponseHeadTooLarge(self._max_header_bytes)
        if status < 200:
            if status == 101:
                raise ProtocolError(502, "upstream switched protocols, which was not asked")
            self._interim = True
            if end >= 0:
                self._start = end + 4  # the final response follows the interim head
            return
        headers = self._headers
        if self._conn_tokens:
            remove_connection_named(headers, self._conn_tokens)
        version = _VERSIONS.get(parser.get_http_version(), b"1.1")
        keep_alive: bool = parser.should_keep_alive()
        if self._is_head:
            if self._cl >= 0:
                headers.append((b"content-length", self._cl_raw))
            body_length = BODY_HEAD
        elif status in _NO_CONTENT_LENGTH_STATUSES:
            body_length = 0
        elif self._chunked:
            body_length = BODY_CHUNKED
        elif self._cl >= 0:
            body_length = self._cl
        else:
            body_length = BODY_UNTIL_EOF
            keep_alive = False
        self._body_length = body_length
        head = ResponseHead(status, headers, b"", version)
        self._handler.on_response_head(head, body_length, keep_alive)
        if body_length == BODY_HEAD:
            self._done_early = True
            self.in_message = False
            self._handler.on_response_end()

    def on_body(self, body: bytes) -> None:
        if not self._done_early:
            self._handler.on_response_body(body)

    def on_message_complete(self) -> None:
        if self._interim or self._done_early:
            if self._interim:
                self._interim = False
                self._after_interim = True  # the final response is still to come
            return
        self.in_message = False
        self._start = -1  # nothing more is expected in this read
        self._handler.on_response_end()


# --- serializers ----------------------------------------------------------------------------------


def serialize_request_head(head: RequestHead, body_length: int) -> bytes:
    """The request line and headers (origin-form target), framing added from `body_length`."""
    lines = [head.method + b" " + head.target + b" HTTP/1.1"]
    lines += [k + b": " + v for k, v in head.headers]
    if body_length > 0:
        lines.append(b"content-length: %d" % body_length)
    elif body_length == BODY_CHUNKED:
        lines.append(b"transfer-encoding: chunked")
    elif head.method in _METHODS_WITH_BODY:
        lines.append(b"content-length: 0")
    lines += (b"", b"")
    return b"\r\n".join(lines)


def serialize_response_head(head: ResponseHead, body_length: int, keep_alive: bool = True) -> bytes:
    """The status line and headers, framing added from `body_length`.

    BODY_UNTIL_EOF writes no framing: the sender must close after the body (keep_alive False).
    """
    if (
        type(head) is ParsedResponseHead
        and head._fields is None
        and body_length == head.raw_body_length
    ):
        # Nobody read or changed the fields: the head goes out as the upstream sent it, its
        # framing lines included.
        return head.raw + CRLF if keep_alive else head.raw + _CONNECTION_CLOSE
    status = head.status
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, head.reason or REASONS.get(status, b"Unknown"))
    lines = [k + b": " + v for k, v in head.headers]
    if body_length > 0:
        lines.append(b"content-length: %d" % body_length)
    elif body_length == BODY_CHUNKED:
        lines.append(b"transfer-encoding: chunked")
    elif body_length == 0 and status not in _NO_CONTENT_LENGTH_STATUSES:
        lines.append(b"content-length: 0")
    if not keep_alive:
        lines.append(b"connection: close")
    lines += (b"", b"")
    return line + b"\r\n".join(lines)


def chunk_prefix(size: int) -> bytes:
    """The size line of one chunk; the chunk data and CRLF follow it."""
    return b"%x\r\n" % size


def encode_chunk(data: bytes) -> bytes:
    """One whole chunk (size line, data, CRLF); empty data would end the body, so it is b""."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)
