"""Byte-level tests of the HTTP/1.1 codec: every input also fed split at every byte position."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gossamer.http.errors import ProtocolError
from gossamer.http.http1 import (
    BODY_CHUNKED,
    BODY_HEAD,
    BODY_UNTIL_EOF,
    RequestParser,
    ResponseParser,
    encode_chunk,
    serialize_request_head,
    serialize_response_head,
)
from gossamer.http.message import RequestHead, ResponseHead

Event = tuple[object, ...]


class Recorder:
    """Collects parser events, merging adjacent body chunks (their split is not part of the API)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def _body(self, data: bytes) -> None:
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", bytes(self.events[-1][1]) + data)  # type: ignore[arg-type]
        else:
            self.events.append(("body", data))

    def on_request_head(self, head: RequestHead, body_length: int, keep_alive: bool) -> None:
        self.events.append(
            (
                "head",
                head.method,
                head.path,
                head.query,
                head.host,
                head.headers,
                body_length,
                keep_alive,
            )
        )

    def on_request_body(self, data: bytes) -> None:
        self._body(data)

    def on_request_end(self) -> None:
        self.events.append(("end",))

    def on_response_head(self, head: ResponseHead, body_length: int, keep_alive: bool) -> None:
        self.events.append(("head", head.status, head.headers, body_length, keep_alive))

    def on_response_body(self, data: bytes) -> None:
        self._body(data)

    def on_response_end(self) -> None:
        self.events.append(("end",))


def request_events(chunks: list[bytes], limit: int = 65536) -> list[Event]:
    rec = Recorder()
    parser = RequestParser(rec, limit)
    for c in chunks:
        parser.feed(c)
    return rec.events


def response_events(chunks: list[bytes], method: bytes = b"GET", eof: bool = False) -> list[Event]:
    rec = Recorder()
    parser = ResponseParser(rec)
    parser.expect(method)
    for c in chunks:
        parser.feed(c)
    if eof:
        parser.feed_eof()
    return rec.events


def check_all_splits(data: bytes, run: Callable[[list[bytes]], list[Event]]) -> list[Event]:
    """Events for the whole buffer, asserting that every two-way and byte-by-byte split agrees."""
    whole = run([data])
    for i in range(1, len(data)):
        assert run([data[:i], data[i:]]) == whole, f"split at byte {i} changed the events"
    assert run([data[i : i + 1] for i in range(len(data))]) == whole
    return whole


def test_simple_get_with_query_and_keep_alive() -> None:
    """A GET yields one head (path and query split, names lower-cased), no body, one end."""
    data = b"GET /prices/42?currency=eur HTTP/1.1\r\nHost: pricing\r\nX-Trace: a\r\n\r\n"
    events = check_all_splits(data, request_events)
    assert events == [
        (
            "head",
            b"GET",
            b"/prices/42",
            b"currency=eur",
            b"pricing",
            [(b"host", b"pricing"), (b"x-trace", b"a")],
            0,
            True,
        ),
        ("end",),
    ]


def test_content_length_body_and_framing_consumed() -> None:
    """Content-Length is consumed into body_length; the body arrives whole across any split."""
    data = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world"
    events = check_all_splits(data, request_events)
    assert events[0][5] == [(b"host", b"a")]
    assert events[0][6] == 11
    assert events[1:] == [("body", b"hello world"), ("end",)]


def test_chunked_with_extensions_and_trailers() -> None:
    """Chunk extensions are ignored and trailers dropped; data is de-chunked."""
    data = (
        b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\r\n"
        b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 123\r\n\r\n"
    )
    events = check_all_splits(data, request_events)
    assert events[0][5] == [(b"host", b"a")]
    assert events[0][6] == BODY_CHUNKED
    assert events[1:] == [("body", b"hello world"), ("end",)]


def test_pipelined_requests_in_one_buffer() -> None:
    """Two requests in one buffer produce two complete, ordered messages."""
    data = (
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    events = check_all_splits(data, request_events)
    kinds = [(e[0], e[2] if e[0] == "head" else None) for e in events]
    assert kinds == [("head", b"/a"), ("body", None), ("end", None), ("head", b"/b"), ("end", None)]


def test_hop_by_hop_and_connection_named_headers_removed() -> None:
    """Connection, the fields it names, Keep-Alive, Proxy-Connection, TE, Upgrade never appear."""
    data = (
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nX-Ok: 1\r\n"
        b"Proxy-Authorization: Basic c2VjcmV0\r\n\r\n"
    )
    events = check_all_splits(data, request_events)
    assert events[0][5] == [(b"host", b"h"), (b"x-ok", b"1")]


def test_proxy_authenticate_is_not_forwarded_from_a_response() -> None:
    """A response carrying Proxy-Authenticate leaves the lean path and loses the field."""
    data = (
        b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n"
        b"X-Ok: 1\r\nContent-Length: 0\r\n\r\n"
    )
    events = check_all_splits(data, response_events)
    assert events == [("head", 407, [(b"x-ok", b"1")], 0, True), ("end",)]


def test_header_field_count_over_the_limit_is_431() -> None:
    """100 fields by default (Envoy's); hop-by-hop and framing fields count too."""
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(98))
    ok = b"GET / HTTP/1.1\r\nHost: h\r\nConnection: x-f1\r\n" + fields + b"\r\n"
    assert request_events([ok])[0][0] == "head"
    over = ok[:-2] + b"TE: trailers\r\n\r\n"
    with pytest.raises(ProtocolError) as info:
        request_events([over])
    assert info.value.status == 431
    assert info.value.reason == "request has 101 header fields, more than 100 allowed"
    rec = Recorder()
    with pytest.raises(ProtocolError, match="3 header fields, more than 2"):
        RequestParser(rec, max_headers=2).feed(b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n")


def test_https_absolute_form_is_refused_with_a_clear_400() -> None:
    with pytest.raises(ProtocolError) as info:
        request_events([b"GET HTTPS://pricing:443/x HTTP/1.1\r\nHost: pricing\r\n\r\n"])
    assert info.value.status == 400
    assert info.value.reason == (
        "https:// through the mesh's forward proxy is not supported: call http://pricing; "
        "the mesh encrypts between sidecars"
    )


@pytest.mark.parametrize("target", [b"/admin#x", b"/admin?q=1#x", b"http://pricing/admin#x", b"/#"])
def test_a_fragment_in_the_target_is_refused(target: bytes) -> None:
    """Apps disagree on `#` (some drop it, some keep it), so what authorization checked could
    differ from what the app serves: a target with a fragment is a 400, split anywhere."""
    data = b"GET " + target + b" HTTP/1.1\r\nHost: pricing\r\n\r\n"
    for i in range(1, len(data)):
        with pytest.raises(ProtocolError) as info:
            request_events([data[:i], data[i:]])
        assert info.value.status == 400
        assert "must not contain '#'" in info.value.reason


def test_connection_close_and_http10() -> None:
    """keep_alive follows Connection: close and the HTTP/1.0 default."""
    closing = request_events([b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"])
    assert closing[0][7] is False
    old = request_events([b"GET / HTTP/1.0\r\n\r\n"])
    assert old[0][7] is False
    assert old[0][4] == b""


def test_absolute_form_target_sets_host() -> None:
    """`GET http://pricing/x` routes by the target's authority, which replaces Host."""
    data = b"GET http://pricing:8080/x?q=1 HTTP/1.1\r\nHost: other\r\n\r\n"
    events = check_all_splits(data, request_events)
    assert events[0][1:5] == (b"GET", b"/x", b"q=1", b"pricing:8080")
    assert events[0][5] == [(b"host", b"pricing:8080")]


def test_upgrade_request_is_forwarded_without_upgrade_and_next_request_parsed() -> None:
    """An Upgrade request becomes a plain request; bytes after it are the next request."""
    data = (
        b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAA\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    events = request_events([data])
    assert [e[0] for e in events] == ["head", "end", "head", "end"]
    assert events[0][5] == [(b"host", b"h")]
    assert events[2][2] == b"/b"


@pytest.mark.parametrize(
    "data",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nbad header line\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_malformed_requests_are_400(data: bytes) -> None:
    """Malformed input raises ProtocolError with status 400, never another exception."""
    with pytest.raises(ProtocolError) as info:
        request_events([data])
    assert info.value.status == 400


def test_connect_is_501() -> None:
    with pytest.raises(ProtocolError) as info:
        request_events([b"CONNECT pricing:443 HTTP/1.1\r\nHost: pricing:443\r\n\r\n"])
    assert info.value.status == 501


def test_header_block_over_limit_is_431() -> None:
    """A head over the limit is refused with 431, whole or fed in small pieces."""
    data = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 2000 + b"\r\n\r\n"
    with pytest.raises(ProtocolError) as info:
        request_events([data], limit=1024)
    assert info.value.status == 431
    with pytest.raises(ProtocolError) as info:
        request_events([data[i : i + 7] for i in range(0, len(data), 7)], limit=1024)
    assert info.value.status == 431
    # An unfinished field that never ends is cut off too, before the head completes.
    with pytest.raises(ProtocolError) as info:
        request_events([b"GET / HTTP/1.1\r\nX-Big: "] + [b"a" * 100] * 20, limit=1024)
    assert info.value.status == 431


def test_big_body_does_not_count_against_header_limit() -> None:
    data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000
    events = request_events([data], limit=1024)
    assert events[1] == ("body", b"x" * 5000)


# --- responses ------------------------------------------------------------------------------------


def test_response_content_length() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"
    events = check_all_splits(data, response_events)
    assert events == [
        ("head", 200, [(b"content-type", b"text/plain")], 5, True),
        ("body", b"hello"),
        ("end",),
    ]


def test_response_chunked_with_trailers_and_keep_alive_next() -> None:
    """Chunked response with extension and trailers, then a second response on the same parser
    (in a later read: the next request's answer)."""
    first = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
        b"3;ext=1\r\nabc\r\n0\r\nx-trailer: t\r\n\r\n"
    )
    second = b"HTTP/1.1 204 No Content\r\n\r\n"
    events = check_all_splits(first, lambda chunks: response_events([*chunks, second]))
    assert events == [
        ("head", 200, [], BODY_CHUNKED, True),
        ("body", b"abc"),
        ("end",),
        ("head", 204, [], 0, True),
        ("end",),
    ]


def test_a_second_response_in_the_read_that_ended_a_chunked_one_is_refused() -> None:
    """The full parser refuses what the lean one does: an answer nobody asked for yet."""
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n"
    )
    with pytest.raises(ProtocolError, match="not asked for") as exc:
        response_events([data])
    assert exc.value.status == 502


def test_response_until_eof() -> None:
    """No framing: the body runs to EOF and the connection is not reusable."""
    data = b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nsome body"
    events = check_all_splits(data, lambda c: response_events(c, eof=True))
    assert events == [
        ("head", 200, [(b"x-a", b"1")], BODY_UNTIL_EOF, False),
        ("body", b"some body"),
        ("end",),
    ]


def test_response_eof_mid_body_is_502() -> None:
    with pytest.raises(ProtocolError) as info:
        response_events([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"], eof=True)
    assert info.value.status == 502


def test_head_response_keeps_content_length_and_parser_resets() -> None:
    """A HEAD answer ends at its head; the parser then reads the next response normally."""
    rec = Recorder()
    parser = ResponseParser(rec)
    parser.expect(b"HEAD")
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
    parser.expect(b"GET")
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert rec.events == [
        ("head", 200, [(b"content-length", b"1234")], BODY_HEAD, True),
        ("end",),
        ("head", 200, [], 2, True),
        ("body", b"ok"),
        ("end",),
    ]


def test_interim_100_continue_dropped() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    events = check_all_splits(data, response_events)
    assert events == [("head", 200, [], 0, True), ("end",)]


def test_malformed_response_is_502() -> None:
    with pytest.raises(ProtocolError) as info:
        response_events([b"HTTP/1.1 abc\r\n\r\n"])
    assert info.value.status == 502


# --- serializers ----------------------------------------------------------------------------------


def test_serialize_request_round_trips() -> None:
    """A serialized head parses back to the same head, with re-added framing."""
    head = RequestHead(b"POST", b"/a", b"x=1", [(b"host", b"h"), (b"x-b", b"2")], b"1.1", b"h")
    out = serialize_request_head(head, 3) + b"abc"
    assert out == b"POST /a?x=1 HTTP/1.1\r\nhost: h\r\nx-b: 2\r\ncontent-length: 3\r\n\r\nabc"
    events = request_events([out])
    assert events[0][1:7] == (b"POST", b"/a", b"x=1", b"h", [(b"host", b"h"), (b"x-b", b"2")], 3)
    chunked = serialize_request_head(head, BODY_CHUNKED) + encode_chunk(b"hi") + b"0\r\n\r\n"
    assert request_events([chunked])[1:] == [("body", b"hi"), ("end",)]
    empty_post = serialize_request_head(RequestHead(b"POST", b"/", headers=[(b"host", b"h")]), 0)
    assert b"content-length: 0\r\n" in empty_post


def test_serialize_response_framing() -> None:
    head = ResponseHead(200, [(b"x", b"1")])
    assert (
        serialize_response_head(head, 2) == b"HTTP/1.1 200 OK\r\nx: 1\r\ncontent-length: 2\r\n\r\n"
    )
    assert serialize_response_head(head, BODY_CHUNKED, keep_alive=False) == (
        b"HTTP/1.1 200 OK\r\nx: 1\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    assert serialize_response_head(ResponseHead(204), 0) == b"HTTP/1.1 204 No Content\r\n\r\n"
    assert serialize_response_head(ResponseHead(599), 0) == (
        b"HTTP/1.1 599 Unknown\r\ncontent-length: 0\r\n\r\n"
    )
    rechunked = serialize_response_head(head, BODY_CHUNKED) + encode_chunk(b"abc") + b"0\r\n\r\n"
    assert response_events([rechunked])[1:] == [("body", b"abc"), ("end",)]
