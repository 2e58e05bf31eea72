"""The admin listener (/ready, /config, /metrics, /tap, /quitquitquit): tiny asyncio + httptools."""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from typing import Protocol, cast

import httptools
import msgspec

from gossamer.proxy.tap import Tap, TapHub
from gossamer.telemetry.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gossamer.telemetry.metrics import Registry
from gossamer.telemetry.tap_filter import TapFilterError, parse_filter

log = logging.getLogger("gossamer.proxy")

MAX_REQUEST_BYTES = 64 * 1024

_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Content Too Large",
    503: b"Service Unavailable",
}

_TAP_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ncache-control: no-store\r\n"
    b"connection: close\r\n\r\n"
)

# path -> (allowed methods, one-line description); GET also answers HEAD.
ENDPOINTS: dict[str, tuple[tuple[bytes, ...], str]] = {
    "/": ((b"GET", b"HEAD"), "this index"),
    "/ready": (
        (b"GET", b"HEAD"),
        "200 when the proxy has a snapshot and the app is ready, else 503",
    ),
    "/config": ((b"GET", b"HEAD"), "the Snapshot the proxy runs, with its version and ACK state"),
    "/metrics": ((b"GET", b"HEAD"), "Prometheus metrics (text format 0.0.4)"),
    "/tap": (
        (b"GET",),
        "live NDJSON stream of request records (?path=PREFIX&method=&status=&direction=)",
    ),
    "/quitquitquit": ((b"POST",), "drain and exit"),
}


class ProxyView(Protocol):
    """What the admin listener needs from the running proxy."""

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not)."""
        ...

    def config_document(self) -> dict[str, object]:
        """The running Snapshot and its state, as JSON-able builtins."""
        ...

    def request_quit(self) -> None:
        """Start draining; the process exits when the drain is done."""
        ...


def _response(
    status: int,
    body: bytes,
    content_type: bytes,
    *,
    keep_alive: bool,
    head_only: bool = False,
    extra: bytes = b"",
) -> bytes:
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: %s\r\n%s\r\n"
        % (
            status,
            _REASONS.get(status, b"Unknown"),
            content_type,
            len(body),
            b"keep-alive" if keep_alive else b"close",
            extra,
        )
    )
    return head if head_only else head + body


def _json_error(code: str, message: str) -> bytes:
    return msgspec.json.encode({"error": {"code": code, "message": message}})


class AdminServer:
    """Answers admin requests from the proxy's state; one instance per process."""

    def __init__(self, view: ProxyView, registry: Registry, taps: TapHub | None = None) -> None:
        self.view = view
        self.registry = registry
        self.taps = taps
        self.server: asyncio.Server | None = None
        self.connections: set[_AdminProtocol] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _AdminProtocol(self), host, port)
        bound = self.server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in list(self.connections):
                if conn.transport is not None:
                    conn.transport.close()
            await self.server.wait_closed()

    def tap_hub(self) -> TapHub | None:
        """The data plane's taps (set by the proxy process once its data plane runs)."""
        return self.taps

    def open_tap(self, conn: _AdminProtocol, query: bytes) -> bytes | None:
        """Start streaming to `conn` (None), or the error response to send instead."""
        assert conn.transport is not None
        try:
            params: dict[str, str | None] = dict(
                urllib.parse.parse_qsl(query.decode("utf-8", "replace"), keep_blank_values=True)
            )
            tap_filter = parse_filter(params)
        except TapFilterError as exc:
            body = _json_error("bad_request", f"/tap: {exc}")
            return _response(400, body, b"application/json", keep_alive=False)
        hub = self.tap_hub()
        if hub is None:
            body = _json_error("unavailable", "/tap: the data plane is not running yet")
            return _response(503, body, b"application/json", keep_alive=False)
        tap = hub.open(conn.transport, tap_filter)
        if tap is None:
            body = _json_error(
                "too_many_taps", f"/tap: {hub.max_taps} taps are open already; try again later"
            )
            return _response(503, body, b"application/json", keep_alive=False)
        # Before any record: the tap's lines go out from a later loop callback.
        conn.transport.write(_TAP_HEAD)
        conn.tap = (hub, tap)
        return None

    def handle(self, method: bytes, path: str, keep_alive: bool) -> tuple[bytes, bool]:
        """Returns the full response and whether to close afterwards (a quit was asked for)."""
        entry = ENDPOINTS.get(path)
        if entry is None:
            body = _json_error("not_found", f"no admin endpoint {path}; see GET /")
            return _response(404, body, b"application/json", keep_alive=keep_alive), False
        allowed, _ = entry
        if method not in allowed:
            body = _json_error(
                "method_not_allowed", f"{path} takes {', '.join(m.decode() for m in allowed)}"
            )
            extra = b"allow: " + b", ".join(allowed) + b"\r\n"
            return _response(
                405, body, b"application/json", keep_alive=keep_alive, extra=extra
            ), False
        head_only = method == b"HEAD"
        if path == "/ready":
            ready, why = self.view.readiness()
            status, text = (200, b"ready\n") if ready else (503, f"not ready: {why}\n".encode())
            return _response(
                status,
                text,
                b"text/plain; charset=utf-8",
                keep_alive=keep_alive,
                head_only=head_only,
            ), False
        if path == "/config":
            body = msgspec.json.format(msgspec.json.encode(self.view.config_document()), indent=2)
            return _response(
                200, body + b"\n", b"application/json", keep_alive=keep_alive, head_only=head_only
            ), False
        if path == "/metrics":
            return _response(
                200,
                self.registry.render(),
                METRICS_CONTENT_TYPE.encode(),
                keep_alive=keep_alive,
                head_only=head_only,
            ), False
        if path == "/quitquitquit":
            log.info("quit requested on the admin listener")
            return _response(
                200, b"draining\n", b"text/plain; charset=utf-8", keep_alive=False
            ), True
        lines = ["gossamer proxy admin", ""]
        for where, (methods, desc) in ENDPOINTS.items():
            verbs = "/".join(m.decode() for m in methods if m != b"HEAD")
            lines.append(f"{verbs:5} {where:14} {desc}")
        index = ("\n".join(lines) + "\n").encode()
        return _response(
            200, index, b"text/plain; charset=utf-8", keep_alive=keep_alive, head_only=head_only
        ), False


class _AdminProtocol(asyncio.Protocol):
    """One admin connection: httptools parses, AdminServer answers, requests in order."""

    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.received = 0
        self.closing = False
        self.tap: tuple[TapHub, Tap] | None = None  # while this connection streams a tap

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.tap is not None:
            hub, tap = self.tap
            self.tap = None
            hub.close(tap)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._fail(400, f"bad request: {exc}")
            return
        if self.received > MAX_REQUEST_BYTES and not self.closing:
            self._fail(413, f"request larger than {MAX_REQUEST_BYTES} bytes")

    def _fail(self, status: int, message: str) -> None:
        assert self.transport is not None
        body = _json_error("bad_request", message)
        self.transport.write(_response(status, body, b"application/json", keep_alive=False))
        self.closing = True
        self.transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_message_complete(self) -> None:
        if self.closing or self.transport is None:
            return
        self.received = 0
        method = self.parser.get_method()
        keep_alive = bool(self.parser.should_keep_alive())
        try:
            url = httptools.parse_url(self.url)
            path = url.path.decode("utf-8", "replace")
        except httptools.HttpParserInvalidURLError:
            self._fail(400, "invalid request target")
            return
        if path == "/tap" and method == b"GET":
            # The rest of the connection is the stream: nothing more is read from it.
            self.closing = True
            error = self.server.open_tap(self, url.query or b"")
            if error is not None:
                self.transport.write(error)
                self.transport.close()
            return
        data, quit_after = self.server.handle(method, path, keep_alive)
        self.transport.write(data)
        if quit_after or not keep_alive:
            self.closing = True
            self.transport.close()
        if quit_after:
            self.server.view.request_quit()
