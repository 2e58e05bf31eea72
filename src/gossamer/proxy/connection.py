"""Downstream side: the asyncio Protocol for one client connection on a listener.

It feeds bytes to the request parser and, per request, adds the mesh's headers, routes (outbound)
or picks the local app (inbound), and starts an `Exchange`. Requests are answered in order:
while one is in flight, events of pipelined requests that arrived with it are kept in a backlog
and reading pauses, so at most one read's worth of bytes waits. One timer per connection, re-armed
only when it fires, enforces the header timeout (a client must finish a request head within it)
and the keep-alive idle timeout, so an ordinary request costs no timer operations here.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, ClassVar, cast

from gossamer.http.errors import ProtocolError
from gossamer.http.http1 import (
    BODY_CHUNKED,
    BODY_UNTIL_EOF,
    CRLF,
    LAST_CHUNK,
    RequestParser,
    chunk_prefix,
    serialize_response_head,
)
from gossamer.http.message import RequestHead, ResponseHead
from gossamer.proxy import flags, measure
from gossamer.proxy.accesslog import (
    CLIENT_DISCONNECTED,
    END_CLIENT_CLOSED,
    END_CLIENT_RESET,
    END_CONNECTION_CLOSE,
    END_DRAINING,
    END_IDLE_TIMEOUT,
    ORDINARY_ENDS,
)
from gossamer.proxy.exchange import Exchange
from gossamer.proxy.golden import response_flag
from gossamer.telemetry.metrics import CounterChild

if TYPE_CHECKING:
    from gossamer.filters.ratelimit import Decision as RateLimitDecision
    from gossamer.proxy.accesslog import AccessLog
    from gossamer.proxy.cluster import ClusterRuntime
    from gossamer.proxy.dataplane import Listener
    from gossamer.proxy.exchange import RulePlan
    from gossamer.proxy.golden import Recorder
    from gossamer.proxy.router import Backend, RouteMatch
    from gossamer.proxy.tracing import RequestTrace

log = logging.getLogger("gossamer.proxy.connection")

READ_PIPELINE = 1  # a pipelined request waits for the current response
READ_RATE_LIMIT = 64  # a request waits for a Global rate limit's answer from Redis

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_XFP_HTTP = (b"x-forwarded-proto", b"http")
_XFCC = b"x-forwarded-client-cert"
_NO_BACKEND = "no-backend"
# Flags proxy/flags.py may not know yet fall back to one it does, with their own status.
_INTERNAL_FLAG: str = getattr(flags, "INTERNAL_ERROR", flags.UPSTREAM_RESET)


# Request ids: 128 random bits as 32 hex digits, from a PRNG seeded from os.urandom (ids need to
# be unique, not secret; no syscall per request, unlike os.urandom).
_random_bits = random.Random().getrandbits


# A BaseProtocol with `data_received`, not an `asyncio.Protocol`: uvloop hands decrypted bytes to a
# subclass that adds `get_buffer` (the TLS one) through that buffer only if it is no `Protocol`.
class DownstreamConnection(asyncio.BaseProtocol):
    """One client connection; see the module docstring."""

    mtls: ClassVar[bool] = False  # True for a connection that completed the mTLS handshake

    __slots__ = (
        "_source_address",
        "access",
        "backlog",
        "bytes_received",
        "bytes_sent",
        "client_ip",
        "closed",
        "corked",
        "end",
        "exchange",
        "golden",
        "head",
        "head_started",
        "http10",
        "idle_since",
        "keep_alive",
        "listener",
        "loop",
        "opened_at",
        "original",
        "out",
        "out_chunked",
        "parser",
        "peer",
        "peer_requests",
        "peer_spiffe_id",
        "read_paused",
        "req_done",
        "request_id",
        "requests",
        "resp_done",
        "resp_flag",
        "timer",
        "trace",
        "transport",
        "wire_received",
        "wire_sent",
        "write_paused",
        "xfcc_field",
        "xff_field",
    )

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.transport: asyncio.Transport | None = None
        settings = listener.settings
        self.parser = RequestParser(self, settings.max_header_bytes, settings.max_request_headers)
        self.client_ip = b""
        # The peer's SPIFFE ID as verified by the mTLS handshake (set by proxy/mtls.py): the
        # principal that AuthorizationPolicies match; None for a plaintext connection.
        self.peer_spiffe_id: str | None = None
        # Set only on connections of an mTLS-capable inbound listener (proxy/mtls.py): the
        # per-peer request counter, and the XFCC field (mTLS only) the app gets. The plaintext
        # fast path pays one `is None` test per inbound request.
        self.peer_requests: CounterChild | None = None
        self.xfcc_field: tuple[bytes, bytes] | None = None
        self.xff_field = (b"x-forwarded-for", b"")  # this client's address, built once
        self.exchange: Exchange | None = None
        self.backlog: list[tuple[int, object, int, bool]] | None = None
        self.request_id = b""
        self.keep_alive = True
        self.http10 = False
        self.out_chunked = False
        # While corked (the upstream's bytes are being handled) writes collect in `out` and go
        # out as one send: head and body of a small response in one segment, one syscall.
        self.corked = False
        self.out: list[bytes] = []
        self.req_done = True
        self.resp_done = True
        self.read_paused = 0
        self.write_paused = False
        self.closed = False
        self.head_started = 0.0
        self.idle_since = 0.0
        self.timer: asyncio.TimerHandle | None = None
        # The access log (proxy/accesslog.py), None when off: then a request pays one `is None`
        # test for it, plus the stores and byte counts below that it reads.
        self.access: AccessLog | None = listener.access_log
        # The golden metrics (proxy/golden.py): one record per finished request, TCP counts.
        self.golden: Recorder = listener.golden
        self.resp_flag: str | None = None  # an error response's x-gossamer-flags, for golden
        self.head: RequestHead | None = None  # the request in flight (or last answered)
        # Its trace context (proxy/tracing.py), None when it has none: the access log's traceId,
        # and the span finished where the request ends.
        self.trace: RequestTrace | None = None
        # (head, host, path, query) as received, kept only when a route filter rewrites them.
        self.original: tuple[RequestHead, bytes, bytes, bytes] | None = None
        self.bytes_received = 0  # this request's body bytes, and its response's
        self.bytes_sent = 0
        self.peer: object = None
        self._source_address: str | None = None
        # For the connection's access-log line: requests started, bytes on the wire (heads
        # included, after TLS), and why it ended, when the proxy ended it (None: the client did).
        self.opened_at = 0.0
        self.requests = 0
        self.wire_received = 0
        self.wire_sent = 0
        self.end: str | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = self.peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.client_ip = str(peer[0]).encode("ascii", "replace")
            self.xff_field = (b"x-forwarded-for", self.client_ip)
        listener = self.listener
        listener.connections.add(self)
        listener.stats.active.inc()
        listener.stats.total.inc()
        self.golden.opened.value += 1.0
        if not self.opened_at:  # an mTLS connection's was set at accept, before the handshake
            self.opened_at = measure.now()
        now = self.loop.time()
        self.idle_since = now
        self.head_started = now  # a new connection must send its first head in time
        self.timer = self.loop.call_later(listener.timer_period, self._on_timer)

    def data_received(self, data: bytes) -> None:
        self.golden.received.value += len(data)
        self.wire_received += len(data)
        try:
            self.parser.feed(data)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        except Exception:
            log.exception(
                "unexpected error handling a request on the %s listener", self.listener.direction
            )
            self._internal_error()
            return
        if self.exchange is None and self.head_started == 0.0 and self.parser.head_pending:
            self.head_started = self.loop.time()

    def eof_received(self) -> bool:
        # A client that half-closes after its request still gets the response, then we close.
        if self.exchange is not None:
            self.keep_alive = False
            if self.end is None:
                self.end = END_CLIENT_CLOSED  # it closed first; we close after the response
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        listener = self.listener
        listener.connections.discard(self)
        listener.stats.active.dec()
        self.golden.closed.value += 1.0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        exchange = self.exchange
        if exchange is not None:
            if not self.resp_done:
                status = getattr(exchange, "status", 0)
                if self.access is not None:
                    self.access.request(self, status, CLIENT_DISCONNECTED)
                if listener.tap is not None:  # a live tap (proxy/tap.py)
                    listener.tap.request(self, status, CLIENT_DISCONNECTED)
                self.golden.request(self, status, CLIENT_DISCONNECTED)
                if self.trace is not None:
                    self.trace.finish(self, status, CLIENT_DISCONNECTED)
            self.exchange = None
            exchange.on_downstream_lost()
        if self.access is not None:
            end = self.end
            if end is None:  # the proxy sets `end` whenever it closes: the client did
                end = END_CLIENT_RESET if exc is not None else END_CLIENT_CLOSED
            self.access.connection(self, end)
        listener.on_connection_closed()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.exchange is not None:
            self.exchange.on_downstream_pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.exchange is not None:
            self.exchange.on_downstream_resume_writing()

    # --- request events (RequestHandler) -------------------------------------------------------

    def on_request_head(self, head: RequestHead, body_length: int, keep_alive: bool) -> None:
        """Start the request, or queue it behind the one in flight (pipelining)."""
        if self.exchange is not None or self.backlog is not None:
            self._queue(0, head, body_length, keep_alive)
            return
        # The start of a request is inlined here: it runs once per request, and a call layer
        # less is measurable at these rates.
        listener = self.listener
        self.head = head
        self.requests += 1
        self.bytes_received = self.bytes_sent = 0
        self.head_started = 0.0
        self.req_done = body_length == 0
        self.resp_done = False
        self.keep_alive = keep_alive
        self.http10 = head.http_version == b"1.0"
        headers = head.headers
        rid = None
        xff = -1
        xfp = -1
        expect = -1
        xfcc = False
        traced = False  # a trace context field (W3C or B3) is present
        for i, (k, v) in enumerate(headers):
            if k[0] == 120:  # "x": the only names we look at start with x, e, t or b
                if k == b"x-request-id":
                    rid = v
                elif k == b"x-forwarded-for":
                    xff = i
                elif k == b"x-forwarded-proto":
                    xfp = i
                elif k == _XFCC:
                    xfcc = True
                elif k[2] == 98 and k[:5] == b"x-b3-":
                    traced = True
            elif k == b"expect":
                expect = i
            elif k == b"traceparent" or k == b"b3":
                traced = True
        if rid is None and xff < 0 and xfp < 0:
            # The usual request from an app: the mesh adds all three, in one extend.
            rid = b"%032x" % _random_bits(128)
            headers += ((b"x-request-id", rid), self.xff_field, _XFP_HTTP)
        else:
            if rid is None:
                rid = b"%032x" % _random_bits(128)
                headers.append((b"x-request-id", rid))
            if xff >= 0:
                headers[xff] = (b"x-forwarded-for", headers[xff][1] + b", " + self.client_ip)
            else:
                headers.append(self.xff_field)
            if xfp < 0:
                headers.append(_XFP_HTTP)
            elif listener.outbound:
                headers[xfp] = _XFP_HTTP
        self.request_id = rid
        tracing = listener.dataplane.tracing
        if traced or tracing.recording:
            self.trace = tracing.begin(head, traced, listener.outbound)
        else:
            self.trace = None
        if expect >= 0:
            # We answer 100-continue ourselves; the upstream never sees Expect.
            if headers[expect][1].lower() == b"100-continue" and not self.req_done:
                assert self.transport is not None
                self.transport.write(_CONTINUE)
                self.golden.sent.value += len(_CONTINUE)
                self.wire_sent += len(_CONTINUE)
            del headers[expect]
        if xfcc and not listener.outbound:
            # Only this sidecar vouches for a caller's certificate: a client (plaintext or not)
            # must not forge one for the app.
            headers[:] = [h for h in headers if h[0] != _XFCC]
        tables = listener.dataplane.tables
        route = None
        backend = None
        plan = None
        if listener.outbound:
            route = tables.routes.match(head)
            if route is None:
                self._start_local(flags.NO_ROUTE, f"no route for host {_text(head.host)!r}")
                return
            redirect = route.redirect
            if redirect is not None:
                status, location = redirect.redirect(head)
                self._start_local(
                    flags.REDIRECT, "redirected", status, ((b"location", location),), route=route
                )
                return
            if route.request_filters:
                if self.access is not None or listener.tap is not None:
                    self.original = (head, head.host, head.path, head.query)
                route.apply_request(head)
            backend = route.pick_backend(listener.rand())
            if backend is None:
                self._start_local(
                    _NO_BACKEND if _NO_BACKEND in flags.STATUS else flags.NO_ROUTE,
                    f"route {route.rule.name!r} has no backend",
                    500,
                    route=route,
                )
                return
            if backend.request_filters:
                if not route.request_filters and (
                    self.access is not None or listener.tap is not None
                ):
                    self.original = (head, head.host, head.path, head.query)
                backend.apply_request(head)
            cluster = tables.clusters[backend.cluster]
            plan = tables.plans.get(id(route.rule))
        else:
            peer_requests = self.peer_requests
            if peer_requests is not None:
                peer_requests.value += 1.0
                if self.xfcc_field is not None:
                    headers.append(self.xfcc_field)
            app = tables.app
            if app is None:
                self._start_local(flags.NO_HEALTHY_ENDPOINT, "this proxy has no local app")
                return
            authz = tables.authz
            if authz is not None:
                decision = authz.check(self.peer_spiffe_id, head.method, head.path, head.host)
                if not decision.allowed:
                    self._start_local(
                        flags.DENIED, decision.reason, fields=(("policy", decision.policy),)
                    )
                    return
            cluster = app
        # Rate limits (filters/ratelimit.py): inbound after authz, outbound after routing, so a
        # rule sees the matched route rule. A Global rule may have to wait for Redis: then the
        # request (not the loop) pauses in a _RateLimitWait until `_rate_limit_done`.
        rate_limits = tables.rate_limits
        if rate_limits is not None:
            limiter = rate_limits.outbound if listener.outbound else rate_limits.inbound
            if limiter is not None:
                verdict = limiter.check(
                    head,
                    route.rule.name if route is not None else None,
                    self.peer_spiffe_id,
                    self.client_ip,
                    self._rate_limit_done,
                )
                if verdict is None:
                    wait = _RateLimitWait(head, body_length, cluster, plan, route, backend)
                    self.exchange = cast(Exchange, wait)
                    self.pause_reading(READ_RATE_LIMIT)
                    return
                if not verdict.allowed:
                    self._start_local(
                        flags.RATE_LIMITED,
                        verdict.message,
                        extra_headers=verdict.headers,
                        route=route,
                    )
                    return
        exchange = Exchange(
            self,
            self.loop,
            head,
            body_length,
            cluster,
            plan,
            route,
            backend,
            listener.settings.retry_buffer_bytes,
            listener.dataplane.deadlines,
        )
        self.exchange = exchange
        exchange.start()

    def on_request_body(self, data: bytes) -> None:
        if self.backlog is not None:
            self._queue(1, data, 0, False)
        elif self.exchange is not None:
            self.bytes_received += len(data)
            self.exchange.on_request_body(data)

    def on_request_end(self) -> None:
        if self.backlog is not None:
            self._queue(2, None, 0, False)
            return
        self.req_done = True
        exchange = self.exchange
        if exchange is not None:
            exchange.on_request_end()
            if self.resp_done:
                self._cycle_done()

    def _rate_limit_done(self, decision: RateLimitDecision) -> None:
        """Redis answered for the request waiting in a _RateLimitWait: start it or refuse it."""
        wait = self.exchange
        if not isinstance(wait, _RateLimitWait) or self.closed:
            return  # the client went away meanwhile
        try:
            if not decision.allowed:
                self._start_local(
                    flags.RATE_LIMITED,
                    decision.message,
                    extra_headers=decision.headers,
                    route=wait.route,
                )
            else:
                exchange = Exchange(
                    self,
                    self.loop,
                    wait.head,
                    wait.body_length,
                    wait.cluster,
                    wait.plan,
                    wait.route,
                    wait.backend,
                    self.listener.settings.retry_buffer_bytes,
                    self.listener.dataplane.deadlines,
                )
                self.exchange = exchange
                exchange.start()
                # What arrived while the decision was pending goes to whatever serves the request
                # now: a backend fallback may have taken over from `exchange` as it started.
                for chunk in wait.body:
                    current = self.exchange
                    if current is not None:
                        current.on_request_body(chunk)
                current = self.exchange
                if wait.ended and current is not None:
                    current.on_request_end()
                    if self.resp_done:
                        self._cycle_done()
        except Exception:
            log.exception("unexpected error starting a request after its rate-limit decision")
            self._internal_error()
            return
        self.resume_reading(READ_RATE_LIMIT)

    def _queue(self, kind: int, item: object, body_length: int, keep_alive: bool) -> None:
        if self.backlog is None:
            self.backlog = []
            self.pause_reading(READ_PIPELINE)
        self.backlog.append((kind, item, body_length, keep_alive))

    # --- local answers -------------------------------------------------------------------------

    def _start_local(
        self,
        flag: str,
        message: str,
        status: int | None = None,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
        fields: tuple[tuple[str, str | None], ...] = (),
        route: RouteMatch | None = None,
    ) -> None:
        """Answer a request the mesh cannot route; its body, if any, is read and dropped
        (`route`: the rule matched, if any, for the golden metrics' labels)."""
        self.exchange = _DISCARD if route is None else cast(Exchange, _Discard(route))
        self.listener.none_stats.count(status or flags.STATUS[flag], 0.0)
        self.send_local(flag, message, status, extra_headers, fields=fields)

    # --- response side (Downstream, used by the exchange) --------------------------------------

    def send_response_head(self, head: ResponseHead, body_length: int) -> None:
        keep = self.keep_alive and not self.listener.dataplane.draining
        if body_length == BODY_UNTIL_EOF:
            if self.http10:
                keep = False
            else:
                body_length = BODY_CHUNKED
        elif body_length == BODY_CHUNKED and self.http10:
            body_length = BODY_UNTIL_EOF
            keep = False
        self.out_chunked = body_length == BODY_CHUNKED
        self.keep_alive = keep
        data = serialize_response_head(head, body_length, keep)
        self.golden.sent.value += len(data)
        self.wire_sent += len(data)
        if head.status >= 400:  # an error may carry a peer sidecar's flag: the metrics show it
            self.resp_flag = response_flag(data)
        if self.corked:
            self.out.append(data)
        elif self.transport is not None:
            self.transport.write(data)

    def send_response_body(self, data: bytes) -> None:
        if not data:
            return
        self.bytes_sent += len(data)
        if self.out_chunked:
            prefix = chunk_prefix(len(data))
            size = len(prefix) + len(data) + 2
        else:
            size = len(data)
        self.golden.sent.value += size
        self.wire_sent += size
        if self.corked:
            if self.out_chunked:
                self.out += (prefix, data, CRLF)
            else:
                self.out.append(data)
            return
        transport = self.transport
        if transport is None:
            return
        if self.out_chunked:
            transport.writelines((prefix, data, CRLF))
        else:
            transport.write(data)

    def send_response_end(self) -> None:
        if self.out_chunked:
            self.golden.sent.value += len(LAST_CHUNK)
            self.wire_sent += len(LAST_CHUNK)
            if self.corked:
                self.out.append(LAST_CHUNK)
            elif self.transport is not None:
                self.transport.write(LAST_CHUNK)
        access = self.access
        if access is not None:
            # `flag`: set only for a response a rule's fallback served (`fallback,<cause>`).
            exchange = self.exchange
            access.request(self, getattr(exchange, "status", 0), getattr(exchange, "flag", None))
        tap = self.listener.tap
        if tap is not None:  # a live tap (proxy/tap.py)
            exchange = self.exchange
            tap.request(self, getattr(exchange, "status", 0), getattr(exchange, "flag", None))
        self.golden.request(self, getattr(self.exchange, "status", 0), None)
        if self.trace is not None:
            exchange = self.exchange
            self.trace.finish(self, getattr(exchange, "status", 0), getattr(exchange, "flag", None))
        self.resp_done = True
        if self.req_done:
            self._cycle_done()
        elif not self.keep_alive:
            self._close(self._close_end())

    def send_local(
        self,
        flag: str,
        message: str,
        status: int | None = None,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
        close: bool = False,
        fields: tuple[tuple[str, str | None], ...] = (),
    ) -> None:
        keep = self.keep_alive and not close and not self.listener.dataplane.draining
        self.keep_alive = keep
        if close and self.end is None:
            self.end = flag  # the connection closes because of this error
        self.listener.stats.local_child(flag).inc()
        data = flags.local_response(
            flag,
            message,
            self.request_id,
            keep_alive=keep,
            extra_headers=extra_headers,
            status=status,
            fields=fields,
        )
        if self.corked:
            self.out.append(data)
        elif self.transport is not None:
            self.transport.write(data)
        self.golden.sent.value += len(data)
        self.wire_sent += len(data)
        self.bytes_sent += len(data) - data.find(b"\r\n\r\n") - 4  # the body only
        status = status or flags.STATUS.get(flag, 500)
        access = self.access
        if access is not None:
            access.request(self, status, flag)
        tap = self.listener.tap
        if tap is not None:  # a live tap (proxy/tap.py)
            tap.request(self, status, flag)
        self.golden.request(self, status, flag)
        if self.trace is not None:
            self.trace.finish(self, status, flag)
        self.resp_done = True
        if self.req_done:
            self._cycle_done()
        elif not keep:
            self._close(flag if close else self._close_end())

    def cork(self) -> None:
        self.corked = True

    def uncork(self) -> None:
        self.corked = False
        out = self.out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.write(data)

    def abort_response(self, flag: str = flags.UPSTREAM_RESET) -> None:
        """Cut the connection: part of a response went out and the rest never will (`flag`
        says why, in the access log)."""
        exchange = self.exchange
        if not self.resp_done:
            status = getattr(exchange, "status", 0)
            if self.access is not None:
                self.access.request(self, status, flag)
            tap = self.listener.tap
            if tap is not None:  # a live tap (proxy/tap.py)
                tap.request(self, status, flag)
            self.golden.request(self, status, flag)
            if self.trace is not None:
                self.trace.finish(self, status, flag)
        self.exchange = None
        if exchange is not None:
            # Idempotent; without it an exchange cut here (a protocol error mid-response) would
            # keep its cluster request slot and its upstream connection for good.
            exchange.on_downstream_lost()
        self.out.clear()
        if self.end is None:
            self.end = flag
        if self.transport is not None:
            self.transport.abort()

    def pause_reading(self, reason: int) -> None:
        if not self.read_paused and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.read_paused |= reason

    def resume_reading(self, reason: int) -> None:
        if self.read_paused & reason:
            self.read_paused &= ~reason
            if not self.read_paused and self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # --- between requests ----------------------------------------------------------------------

    def _cycle_done(self) -> None:
        self.exchange = None
        if not self.keep_alive:
            self._close(self._close_end())
            return
        self.idle_since = self.loop.time()
        if self.listener.dataplane.draining:
            self.close_if_idle()
        if self.backlog is not None:
            self.loop.call_soon(self._replay)

    def _replay(self) -> None:
        """Run the pipelined requests that waited, until one is in flight again."""
        backlog = self.backlog
        self.backlog = None
        if backlog is None or self.closed:
            return
        for i, (kind, item, body_length, keep_alive) in enumerate(backlog):
            if kind == 0:
                if self.exchange is not None:
                    self.backlog = backlog[i:]
                    return
                assert isinstance(item, RequestHead)
                try:
                    self.on_request_head(item, body_length, keep_alive)
                except Exception:
                    log.exception("unexpected error starting a pipelined request")
                    self._internal_error()
                    return
            elif kind == 1:
                assert isinstance(item, bytes)
                self.on_request_body(item)
            else:
                self.on_request_end()
            if self.closed:
                return
        self.resume_reading(READ_PIPELINE)
        if self.parser.head_pending and self.exchange is None:
            self.head_started = self.loop.time()

    def _on_timer(self) -> None:
        self.timer = None
        if self.closed:
            return
        listener = self.listener
        now = self.loop.time()
        period = listener.timer_period
        if self.exchange is not None or self.backlog is not None:
            deadline = now + period  # a request is in flight: its own timeouts apply
        elif self.head_started:
            deadline = self.head_started + listener.settings.header_timeout
        else:
            deadline = self.idle_since + listener.settings.downstream_idle_timeout
        if now >= deadline:
            # A client that stalls mid-head (slowloris) or idles too long is cut off; one that
            # started a head is told why first (no response is under way: it is between them).
            if self.head_started and self.resp_done:
                self._header_timeout()
            else:
                self._close(END_IDLE_TIMEOUT)
            return
        self.timer = self.loop.call_later(min(deadline - now, period), self._on_timer)

    def _header_timeout(self) -> None:
        timeout = self.listener.settings.header_timeout
        self.request_id = b"%032x" % _random_bits(128)  # the unfinished request's, not the last
        self.head = None
        self.trace = None
        self.bytes_received = self.bytes_sent = 0
        self.listener.none_stats.count(flags.STATUS[flags.HEADER_TIMEOUT], 0.0)
        self.req_done = True
        self.backlog = None
        self.send_local(
            flags.HEADER_TIMEOUT,
            f"the request head was not complete within the {timeout:g}s header timeout",
            close=True,
        )

    def source_address(self) -> str | None:
        """The client's "ip:port" ("[ip]:port" for IPv6), formatted once per connection."""
        address = self._source_address
        if address is None:
            peer = self.peer
            if isinstance(peer, tuple) and len(peer) >= 2:
                host = str(peer[0])
                address = f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
                self._source_address = address
        return address

    def close_if_idle(self) -> bool:
        """Close now if no request is under way (used by drain)."""
        if self.exchange is None and self.backlog is None and not self.parser.in_message:
            self._close(END_DRAINING)
            return True
        return False

    def drain_expired(self, timeout: float) -> None:
        """The drain timeout ran out with this connection still busy. A request still waiting for
        its response is answered 503 `draining` (so the client, the access log and the metrics
        say why, where a bare reset would say nothing); one whose response is under way is cut
        and logged with that flag; anything else (half a head) is just closed."""
        if self.end is None or self.end in ORDINARY_ENDS:
            # An ordinary close under way (its buffered bytes unread) did not finish: the drain
            # ends it. An error's own reason stays.
            self.end = END_DRAINING
        exchange = self.exchange
        if self.closed or exchange is None or self.resp_done:
            # Closed gently already (close() waits for the client to read what is buffered) or
            # between requests: nothing more will be said, and the drain ends now.
            if self.transport is not None:
                self.transport.abort()
            return
        if exchange.response_started:
            self.abort_response(flags.DRAINING)
            return
        exchange.on_downstream_lost()  # the access log still reads the exchange below
        self.req_done = True
        self.backlog = None
        self.send_local(
            flags.DRAINING,
            f"the proxy is shutting down and its {timeout:g}s drain timeout ran out before "
            "the upstream answered",
            close=True,
        )
        self.exchange = None

    def _close_end(self) -> str:
        """Why a connection closes after its response when no error made it close."""
        return END_DRAINING if self.listener.dataplane.draining else END_CONNECTION_CLOSE

    def _close(self, end: str) -> None:
        if self.end is None:
            self.end = end
        if self.out:
            self.uncork()
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def _protocol_error(self, exc: ProtocolError) -> None:
        exchange = self.exchange
        if exchange is not None and exchange is not _DISCARD and exchange.response_started:
            self.abort_response(flags.BAD_REQUEST)
            return
        if exchange is not None:
            exchange.on_downstream_lost()  # the access log still reads the exchange below
        else:
            self.head = None  # the unparsable head is not the last request's
            self.trace = None
            self.bytes_received = self.bytes_sent = 0
        flag = flags.HEADERS_TOO_LARGE if exc.status == 431 else flags.BAD_REQUEST
        self.listener.none_stats.count(exc.status, 0.0)
        self.req_done = True
        self.backlog = None
        self.send_local(flag, exc.reason, exc.status, close=True)

    def _internal_error(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.on_downstream_lost()
            if exchange.response_started:
                self.abort_response(_INTERNAL_FLAG)
                return
        self.req_done = True
        self.backlog = None
        self.send_local(_INTERNAL_FLAG, "internal error in the proxy", 500, close=True)
        self.exchange = None


class _RateLimitWait:
    """Stands in for the exchange while a Global rate limit waits for Redis: keeps what the
    request needs to start and the body that arrives meanwhile (reading is paused, so at most
    one read's worth)."""

    __slots__ = ("backend", "body", "body_length", "cluster", "ended", "head", "plan", "route")

    response_started = False

    def __init__(
        self,
        head: RequestHead,
        body_length: int,
        cluster: ClusterRuntime,
        plan: RulePlan | None,
        route: RouteMatch | None,
        backend: Backend | None,
    ) -> None:
        self.head = head
        self.body_length = body_length
        self.cluster = cluster
        self.plan = plan
        self.route = route
        self.backend = backend
        self.body: list[bytes] = []
        self.ended = False

    def on_request_body(self, data: bytes) -> None:
        self.body.append(data)

    def on_request_end(self) -> None:
        self.ended = True

    def on_downstream_lost(self) -> None:
        self.body.clear()

    def on_downstream_pause_writing(self) -> None:
        pass

    def on_downstream_resume_writing(self) -> None:
        pass


class _Discard:
    """Stands in for an exchange while a locally answered request's body is read and dropped."""

    __slots__ = ("route",)

    response_started = False

    def __init__(self, route: RouteMatch | None = None) -> None:
        self.route = route  # the rule the request matched (golden metrics' labels), if any

    def on_request_body(self, data: bytes) -> None:
        pass

    def on_request_end(self) -> None:
        pass

    def on_downstream_lost(self) -> None:
        pass

    def on_downstream_pause_writing(self) -> None:
        pass

    def on_downstream_resume_writing(self) -> None:
        pass


_DISCARD: Exchange = _Discard()  # type: ignore[assignment]


def _text(value: bytes) -> str:
    return value[:200].decode("latin-1")
