"""The response parser's lean mode: heads passed through as received, and when it falls back."""

from __future__ import annotations

import pytest

from gossamer.http.errors import ProtocolError, ResponseHeadTooLarge
from gossamer.http.http1 import (
    BODY_CHUNKED,
    BODY_UNTIL_EOF,
    ParsedResponseHead,
    ResponseParser,
    serialize_response_head,
)
from gossamer.http.message import ResponseHead

NGINX = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\nConnection: keep-alive\r\nX-Pad:  a  \r\n\r\nhello"
)


class Sink:
    def __init__(self) -> None:
        self.heads: list[tuple[ResponseHead, int, bool]] = []
        self.body = b""
        self.ends = 0

    def on_response_head(self, head: ResponseHead, body_length: int, keep_alive: bool) -> None:
        self.heads.append((head, body_length, keep_alive))

    def on_response_body(self, data: bytes) -> None:
        self.body += data

    def on_response_end(self) -> None:
        self.ends += 1


def parse(chunks: list[bytes], method: bytes = b"GET") -> Sink:
    sink = Sink()
    parser = ResponseParser(sink)
    parser.expect(method)
    for chunk in chunks:
        parser.feed(chunk)
    return sink


def test_plain_head_goes_out_as_received_minus_connection() -> None:
    """Names keep their case, the Connection line is cut, framing lines stay."""
    for i in range(len(NGINX) + 1):
        sink = parse([NGINX[:i], NGINX[i:]] if i else [NGINX])
        ((head, body_length, keep_alive),) = sink.heads
        assert isinstance(head, ParsedResponseHead)
        assert (body_length, keep_alive, sink.body, sink.ends) == (5, True, b"hello", 1)
        assert serialize_response_head(head, body_length) == (
            b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 5\r\nX-Pad:  a  \r\n\r\n"
        )
        assert serialize_response_head(head, body_length, keep_alive=False).endswith(
            b"X-Pad:  a  \r\nconnection: close\r\n\r\n"
        )


def test_fields_read_on_demand_match_the_full_parser_and_are_then_serialised() -> None:
    """Reading `headers` gives what on_header would have built; a change is serialised."""
    ((head, body_length, _),) = parse([NGINX]).heads
    assert head.headers == [
        (b"server", b"nginx"),
        (b"content-type", b"text/plain"),
        (b"x-pad", b"a  "),  # llhttp keeps whitespace after a value
    ]
    head.headers.append((b"x-added", b"1"))
    assert serialize_response_head(head, body_length) == (
        b"HTTP/1.1 200 OK\r\nserver: nginx\r\ncontent-type: text/plain\r\nx-pad: a  \r\n"
        b"x-added: 1\r\ncontent-length: 5\r\n\r\n"
    )


def test_reframing_downstream_serialises() -> None:
    """An until-EOF body re-framed as chunked cannot reuse the raw head."""
    sink = parse([b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nabc"])
    ((head, body_length, keep_alive),) = sink.heads
    assert (body_length, keep_alive) == (BODY_UNTIL_EOF, False)
    assert serialize_response_head(head, BODY_CHUNKED) == (
        b"HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            [(b"x-a", b"1")],
        ),
        (
            b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=5\r\nContent-Length: 3\r\n\r\nabc",
            [],
        ),
        (
            b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nX-B: 2\r\n"
            b"Content-Length: 3\r\n\r\nabc",
            [(b"x-b", b"2")],
        ),
        (
            b"HTTP/1.1 503 Service Unavailable\r\nx-gossamer-flags: draining\r\n"
            b"Content-Length: 3\r\n\r\nabc",
            [(b"x-gossamer-flags", b"draining")],
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc", []),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 3\r\nETag: x\r\n\r\n", [(b"etag", b"x")]),
    ],
)
def test_heads_the_proxy_must_change_fall_back_to_the_full_parser(
    data: bytes, fields: list[tuple[bytes, bytes]]
) -> None:
    """Hop-by-hop fields, chunked or 1.0 framing, a 503: parsed field by field, at any split."""
    for i in range(1, len(data) + 1):
        sink = parse([data[:i], data[i:]])
        ((head, _, _),) = sink.heads
        assert not isinstance(head, ParsedResponseHead)
        assert head.headers == fields
        assert sink.ends == 1
        assert sink.body in (b"abc", b"")


def test_interim_response_then_final_in_one_read_and_split() -> None:
    """A 1xx is dropped; the final response after it (same read or next) still passes through."""
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    for chunks in ([interim + NGINX], [interim, NGINX], [interim + NGINX[:20], NGINX[20:]]):
        sink = parse(chunks)
        ((head, body_length, _),) = sink.heads
        assert head.status == 200
        assert isinstance(head, ParsedResponseHead)
        assert serialize_response_head(head, body_length).startswith(b"HTTP/1.1 200 OK\r\nServer")
        assert sink.body == b"hello"


def test_head_request_answer_and_keep_alive_sequence() -> None:
    """Answers to HEAD use the full parser; consecutive responses on one connection both pass."""
    sink = Sink()
    parser = ResponseParser(sink)
    parser.expect(b"HEAD")
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n")
    parser.expect(b"GET")
    parser.feed(NGINX)
    parser.expect(b"GET")
    parser.feed(NGINX)
    heads = [h for h, _, _ in sink.heads]
    assert not isinstance(heads[0], ParsedResponseHead)
    assert heads[0].headers == [(b"content-length", b"9")]
    assert all(isinstance(h, ParsedResponseHead) for h in heads[1:])
    assert sink.ends == 3
    assert sink.body == b"hellohello"


def test_a_second_response_in_one_read_is_refused() -> None:
    """Nothing was asked for after the first response: the connection cannot be trusted."""
    with pytest.raises(ProtocolError) as exc:
        parse([NGINX + NGINX])
    assert exc.value.status == 502


def big_head(size: int, framing: bytes = b"Content-Length: 2\r\n") -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + framing + b"X-Big: " + b"a" * size + b"\r\n\r\nok"


@pytest.mark.parametrize(
    ("framing", "method"),
    [
        (b"Content-Length: 2\r\n", b"GET"),  # the lean parser's head
        (b"Transfer-Encoding: chunked\r\n", b"GET"),  # the full parser's, after the fallback
        (b"Content-Length: 2\r\n", b"HEAD"),  # the full parser's from the start
    ],
)
def test_a_response_head_over_the_limit_is_refused_in_one_read_or_split(
    framing: bytes, method: bytes
) -> None:
    """The response head limit holds however the head arrives, like the request head's."""
    data = big_head(200_000, framing)
    splits: list[list[bytes]] = [
        [data],
        [data[:10], data[10:]],
        [data[:150_000], data[150_000:]],
        [data[i : i + 16384] for i in range(0, len(data), 16384)],
    ]
    for chunks in splits:
        with pytest.raises(ResponseHeadTooLarge) as exc:
            parse(chunks, method)
        assert exc.value.status == 502
        assert "65536-byte header limit" in exc.value.reason
    # A head of 65528 bytes (just under the limit) passes, in one read and split.
    ok_size = 65536 - 8 - (len(big_head(0, framing)) - len(b"ok"))
    fine = big_head(ok_size, framing)
    if framing.startswith(b"Transfer"):
        fine = fine[:-2] + b"2\r\nok\r\n0\r\n\r\n"
    for chunks in ([fine], [fine[:100], fine[100:]]):
        sink = parse(chunks, method)
        assert len(sink.heads) == 1
        assert sink.ends == 1


def test_a_small_limit_applies_to_the_lean_head() -> None:
    sink = Sink()
    parser = ResponseParser(sink, max_header_bytes=64)
    parser.expect(b"GET")
    with pytest.raises(ResponseHeadTooLarge):
        parser.feed(NGINX)
    assert sink.heads == []
