"""Upstream side: keep-alive HTTP/1.1 connections to an endpoint and the pool that holds them.

An `UpstreamConnection` carries one request at a time (no upstream pipelining). The request it
serves is an `Exchange` (proxy/exchange.py), which it calls with the response events; when the
response ends on a reusable connection it goes back to its `EndpointPool`, whose cluster decides
whether a waiting request takes it or it waits idle. Idle connections are closed after the pool's
idle timeout by one timer per pool, not one per connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from gossamer.http.errors import ProtocolError, ResponseHeadTooLarge
from gossamer.http.http1 import ResponseParser
from gossamer.http.message import ResponseHead
from gossamer.proxy.loadbalance.base import EndpointState

if TYPE_CHECKING:
    from gossamer.proxy.cluster import ClusterRuntime
    from gossamer.proxy.exchange import Exchange

log = logging.getLogger("gossamer.proxy.upstream")

# Outcomes an exchange is told about when its upstream fails (retry.should_retry names).
CONNECT_FAILURE = "connect-failure"
RESET = "reset"
TIMEOUT = "timeout"
# Not a retry outcome: the upstream answered, with a head over the limit (flag of the same name).
HEADERS_TOO_LARGE = "upstream-headers-too-large"


class TlsConnectError(Exception):
    """An outbound mTLS connection failed (proxy/mtls.py); `reason` is one line for the client."""

    def __init__(self, result: str, reason: str, *, endpoint_fault: bool = True) -> None:
        super().__init__(reason)
        self.result = result  # the handshake metric's `result` label
        self.reason = reason
        self.endpoint_fault = endpoint_fault  # whether fail-fast should mark the endpoint


# A BaseProtocol with `data_received`, not an `asyncio.Protocol`: uvloop hands decrypted bytes to a
# subclass that adds `get_buffer` (the TLS one) through that buffer only if it is no `Protocol`.
class UpstreamConnection(asyncio.BaseProtocol):
    """A connection to one endpoint; `exchange` is the request it serves, None when idle."""

    __slots__ = (
        "closed",
        "discarding",
        "exchange",
        "got_response_bytes",
        "idle_since",
        "keep_alive",
        "parser",
        "peer_spiffe_id",
        "pool",
        "request_complete",
        "requests",
        "transport",
    )

    def __init__(self, pool: EndpointPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser(self, pool.max_header_bytes)
        self.exchange: Exchange | None = None
        self.requests = 0
        self.idle_since = 0.0
        self.keep_alive = True
        self.closed = False
        self.discarding = False  # reading out a response nobody wants (a retried 5xx)
        self.got_response_bytes = False
        self.request_complete = True  # the whole request (with its body) was written
        self.peer_spiffe_id: str | None = None  # the server's verified SPIFFE ID (mTLS only)

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.exchange is None and not self.discarding:
            # An idle connection has nothing to say; bytes here mean a confused upstream.
            self.close()
            return
        self.got_response_bytes = True
        exchange = self.exchange
        down = exchange.down if exchange is not None else None
        if down is not None:
            down.cork()
        try:
            self.parser.feed(data)
            if exchange is not None and exchange.held_head is not None:
                exchange.on_read_end()
        except ResponseHeadTooLarge as exc:
            self._fail(HEADERS_TOO_LARGE, exc.reason)
        except ProtocolError as exc:
            self._fail(RESET, exc.reason)
        except Exception:
            log.exception(
                "unexpected error handling a response from %s", self.pool.endpoint.address
            )
            self._fail(RESET, "internal error in the proxy while reading the response")
        finally:
            if down is not None:
                down.uncork()

    def eof_received(self) -> bool:
        if self.exchange is not None or self.discarding:
            try:
                self.parser.feed_eof()
            except ProtocolError as exc:
                self._fail(RESET, exc.reason)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        first = not self.closed
        self.closed = True
        if first:
            self.pool.on_closed(self)
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.on_upstream_failure(self, RESET, "upstream closed the connection")

    def pause_writing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.on_upstream_pause_writing()

    def resume_writing(self) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.on_upstream_resume_writing()

    # --- response events (ResponseHandler) -----------------------------------------------------

    def on_response_head(self, head: ResponseHead, body_length: int, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        exchange = self.exchange
        if exchange is not None:
            exchange.on_response_head(self, head, body_length)

    def on_response_body(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            exchange.on_response_body(data)

    def on_response_end(self) -> None:
        exchange = self.exchange
        self.exchange = None
        self.discarding = False
        self.got_response_bytes = False
        if exchange is not None:
            exchange.on_response_end()
        if self.closed:
            return
        if self.keep_alive and self.request_complete:
            self.pool.release(self)
        else:
            self.close()

    # --- used by the exchange and the pool -----------------------------------------------------

    def start(self, exchange: Exchange, method: bytes) -> None:
        """Serve `exchange` next; the caller then writes the request."""
        self.exchange = exchange
        self.requests += 1
        self.got_response_bytes = False
        self.parser.expect(method)

    def detach(self, discard: bool) -> None:
        """The exchange gives this connection up: read the rest of the response out, or close."""
        self.exchange = None
        if discard and self.request_complete and self.keep_alive and not self.closed:
            self.discarding = True
        else:
            self.close()

    def _fail(self, outcome: str, reason: str) -> None:
        exchange = self.exchange
        self.exchange = None
        self.discarding = False
        self.close()
        if exchange is not None:
            exchange.on_upstream_failure(self, outcome, reason)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.on_closed(self)
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping unsent data (a timed-out or abandoned request)."""
        self.exchange = None
        transport = self.transport
        self.close()
        if transport is not None:
            transport.abort()


class TlsReadBuffer:
    """One read buffer for every TLS connection of the process.

    Given a plain `Protocol`, uvloop's TLS transport allocates a 256 KiB bytes object per read and
    shrinks it: three syscalls (mmap, mremap, munmap) per received record, a third of the cost of an
    mTLS request here. A `BufferedProtocol` gets the decrypted bytes in a buffer it owns instead.
    One buffer serves all connections: the loop fills it and `buffer_updated` copies the bytes out
    before any other read can start.
    """

    SIZE = 65536
    buffer = bytearray(SIZE)
    view = memoryview(buffer)


# A BufferedProtocol, never an `asyncio.Protocol` (see UpstreamConnection): mixed into a class whose
# `data_received` the bytes go to.
class TlsBufferedReads(asyncio.BufferedProtocol):
    """Reads through `TlsReadBuffer` and hands the bytes to the class's `data_received`."""

    __slots__ = ()

    if TYPE_CHECKING:

        def data_received(self, data: bytes) -> None: ...

    def get_buffer(self, sizehint: int) -> memoryview:
        return TlsReadBuffer.view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(TlsReadBuffer.view[:nbytes]))


class TlsUpstreamConnection(UpstreamConnection, TlsBufferedReads):
    """An upstream connection over mTLS: the same protocol, reading through `TlsReadBuffer`."""

    __slots__ = ()


class EndpointPool:
    """The connections of one cluster to one endpoint."""

    __slots__ = (
        "_idle_timer",
        "busy",
        "cluster",
        "connecting",
        "endpoint",
        "idle",
        "loop",
        "max_header_bytes",
        "removed",
    )

    def __init__(self, cluster: ClusterRuntime, endpoint: EndpointState) -> None:
        self.cluster = cluster
        self.endpoint = endpoint
        self.loop = cluster.loop
        self.max_header_bytes = cluster.max_header_bytes
        self.idle: list[UpstreamConnection] = []  # most recently used last
        self.busy = 0
        self.connecting = 0
        self.removed = False  # the endpoint left the cluster: close connections as they finish
        self._idle_timer: asyncio.TimerHandle | None = None

    @property
    def size(self) -> int:
        return len(self.idle) + self.busy + self.connecting

    def take_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection that is still good, marked busy."""
        idle = self.idle
        limit = self.cluster.idle_timeout
        now = -1.0
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if now < 0:
                now = self.loop.time()
            self.busy += 1
            if now - conn.idle_since > limit:
                conn.close()
                continue
            return conn
        return None

    def connect(self, exchange: Exchange) -> None:
        """Open a new connection for `exchange` (counted at once against the pool limits)."""
        self.connecting += 1
        self.cluster.connections += 1
        task = self.loop.create_task(self._connect(exchange))
        # The loop keeps only weak references to tasks.
        self.cluster.tasks.add(task)
        task.add_done_callback(self.cluster.tasks.discard)

    async def _connect(self, exchange: Exchange) -> None:
        cluster = self.cluster
        ep = self.endpoint
        tls = cluster.tls
        try:
            if tls is None:
                async with asyncio.timeout(cluster.connect_timeout):
                    _, proto = await self.loop.create_connection(
                        lambda: UpstreamConnection(self), ep.host, ep.port
                    )
            else:
                proto = await tls.connect(
                    self.loop, lambda: TlsUpstreamConnection(self), ep, cluster.connect_timeout
                )
        except TlsConnectError as exc:
            self.connecting -= 1
            cluster.on_connection_gone(self)
            if exc.endpoint_fault:
                cluster.failfast.on_unreachable(ep)
            exchange.on_connect_failure(self, exc.reason)
            return
        except (OSError, TimeoutError) as exc:
            self.connecting -= 1
            cluster.on_connection_gone(self)
            reason = "connect timeout" if isinstance(exc, TimeoutError) else str(exc)
            # Refused, unreachable or timed out: later requests go elsewhere for a backoff.
            cluster.failfast.on_unreachable(ep)
            exchange.on_connect_failure(self, f"connecting to {ep.address}: {reason}")
            return
        except Exception:
            self.connecting -= 1
            cluster.on_connection_gone(self)
            log.exception("connecting to %s failed unexpectedly", ep.address)
            exchange.on_connect_failure(self, f"connecting to {ep.address} failed")
            return
        self.connecting -= 1
        self.busy += 1
        cluster.stats.upstream_total.inc()
        cluster.stats.upstream_active.inc()
        assert isinstance(proto, UpstreamConnection)
        if proto.closed:  # lost before we got here; the pool already counted it out
            exchange.on_connect_failure(self, f"connection to {ep.address} closed at once")
            return
        if tls is not None:
            refused, proto.peer_spiffe_id = tls.verified_peer(proto.transport, ep.address)
            if refused is not None:
                # A server with the wrong identity is as unusable as one that is down.
                proto.close()
                cluster.failfast.on_unreachable(ep)
                exchange.on_connect_failure(self, refused)
                return
        exchange.on_connection(proto, reused=False)

    def release(self, conn: UpstreamConnection) -> None:
        """A connection finished a response and can carry another request."""
        cluster = self.cluster
        limit = cluster.max_requests_per_connection
        if self.removed or (limit and conn.requests >= limit):
            conn.close()
            return
        # A request waiting for a connection slot gets this one (or its slot).
        if cluster.pending and cluster.hand_over(conn):
            return
        self.busy -= 1
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(cluster.idle_timeout, self._sweep_idle)

    def on_closed(self, conn: UpstreamConnection) -> None:
        """Called once per connection that was established, when it closes."""
        if conn in self.idle:
            self.idle.remove(conn)
        else:
            self.busy -= 1
        self.cluster.stats.upstream_active.dec()
        self.cluster.on_connection_gone(self)

    def _sweep_idle(self) -> None:
        self._idle_timer = None
        now = self.loop.time()
        limit = self.cluster.idle_timeout
        for conn in [c for c in self.idle if now - c.idle_since >= limit]:
            conn.close()
        if self.idle:
            oldest = min(c.idle_since for c in self.idle)
            self._idle_timer = self.loop.call_later(
                max(oldest + limit - now, 0.001), self._sweep_idle
            )

    def close_idle(self) -> None:
        for conn in list(self.idle):
            conn.close()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
