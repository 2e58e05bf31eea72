"""Tests for the local responses the mesh sends on its own."""

from __future__ import annotations

import httptools
import msgspec
import pytest

from gossamer.proxy import flags


class _Collect:
    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


def _parse(data: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    sink = _Collect()
    parser = httptools.HttpResponseParser(sink)
    parser.feed_data(data)
    assert sink.done, "the response must be complete"
    return parser.get_status_code(), dict(sink.headers), sink.body


@pytest.mark.parametrize("flag", flags.FLAGS)
def test_every_flag_is_a_complete_response(flag: str) -> None:
    """Each flag yields a parseable HTTP/1.1 response with its status, flag header and JSON body."""
    data = flags.local_response(flag, "why it happened", "req-1")
    status, headers, body = _parse(data)
    assert status == flags.STATUS[flag]
    assert headers[b"x-gossamer-flags"] == flag.encode()
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"connection"] == b"keep-alive"
    assert headers[b"x-request-id"] == b"req-1"
    assert int(headers[b"content-length"]) == len(body)
    doc = msgspec.json.decode(body)
    if flag == flags.REDIRECT:  # not an error: the body says where to
        assert doc == {"redirect": "", "status": 302}
    else:
        assert doc == {"error": flag, "message": "why it happened", "requestId": "req-1"}
    assert b"Unknown" not in data.split(b"\r\n", 1)[0], "every flag's status has a reason"


def test_exact_bytes_for_no_route() -> None:
    """The wire form is stable: status line, headers in a fixed order, compact JSON."""
    data = flags.local_response(flags.NO_ROUTE, "no route", b"r", keep_alive=False)
    body = b'{"error":"no-route","message":"no route","requestId":"r"}'
    assert (
        data
        == (
            b"HTTP/1.1 404 Not Found\r\n"
            b"x-gossamer-flags: no-route\r\n"
            b"content-type: application/json\r\n"
            b"content-length: %d\r\n"
            b"connection: close\r\n"
            b"x-request-id: r\r\n"
            b"\r\n" % len(body)
        )
        + body
    )


def test_message_is_json_escaped_and_headers_cannot_be_split() -> None:
    """Quotes and non-ASCII in the message are valid JSON; CR/LF in the request id are dropped."""
    data = flags.local_response(flags.TIMEOUT, 'upstream "pricing" took > 2s ü', b"id\r\nx: y")
    status, headers, body = _parse(data)
    assert status == 504
    assert headers[b"x-request-id"] == b"idx: y"
    assert b"x" not in headers
    assert msgspec.json.decode(body)["message"] == 'upstream "pricing" took > 2s ü'


def test_redirect_status_and_extra_headers() -> None:
    """A redirect may override the status and add a location header."""
    data = flags.local_response(
        flags.REDIRECT, "moved", "r", status=301, extra_headers=[(b"location", b"http://x/y")]
    )
    status, headers, _ = _parse(data)
    assert status == 301
    assert headers[b"location"] == b"http://x/y"
    assert headers[b"x-gossamer-flags"] == b"redirect"


def test_redirect_body_names_the_location_and_status() -> None:
    data = flags.local_response(
        flags.REDIRECT, "moved", "r", status=308, extra_headers=((b"location", b"https://x/y"),)
    )
    assert data.startswith(b"HTTP/1.1 308 Permanent Redirect\r\n")
    _, headers, body = _parse(data)
    assert msgspec.json.decode(body) == {"redirect": "https://x/y", "status": 308}
    assert headers[b"location"] == b"https://x/y"


def test_denied_body_names_the_policy_and_statuses_have_reasons() -> None:
    data = flags.local_response(
        flags.DENIED, "denied by DENY policy ns/p", "r", fields=(("policy", "ns/p"),)
    )
    assert data.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    _, _headers, body = _parse(data)
    assert msgspec.json.decode(body) == {
        "error": "denied",
        "message": "denied by DENY policy ns/p",
        "policy": "ns/p",
        "requestId": "r",
    }
    assert flags.local_response(flags.BAD_REQUEST, "m", "r", status=501).startswith(
        b"HTTP/1.1 501 Not Implemented\r\n"
    )


def test_unknown_flag_names_the_known_ones() -> None:
    """An unknown flag is a KeyError listing what exists."""
    with pytest.raises(KeyError, match=r"unknown response flag 'nope'.*no-route"):
        flags.local_response("nope", "m", "r")
