"""The sidecar's JSON access log: one line per request and per connection, written in batches.

`AccessLog.request(conn, status, flag)` is called by the downstream connection once per request
it finished (answered, answered locally, cut off, or abandoned by the client), and
`AccessLog.connection(conn, end)` once per client connection when it ends (how it ended, its
requests and bytes); `AccessLog.refused(...)` logs one that never carried a request (a failed
mTLS handshake, a plaintext client refused by a STRICT listener). docs/access-log.md documents
every field. Records are msgspec Structs encoded straight into one bytearray. That buffer goes to
the file (or stdout) in batches: when it passes `FLUSH_BYTES`, or `FLUSH_INTERVAL` seconds after
its first line, and at close (drain). The write itself runs on one worker thread, so neither a
slow disk nor a stdout pipe nobody reads can stall the event loop; while a write is under way
lines keep collecting, up to `MAX_PENDING_BYTES`, past which they are dropped and counted. A
failed write (disk full) drops its batch, counts the lines and logs one warning per run of
failures; the proxy goes on serving.

Time: the record's `time` is when the request head arrived (a connection's: when it was
accepted), on the wall clock. It is the event loop's clock (which the duration comes from too)
plus an offset to the wall clock that is read again (`time.time()`) at each flush, so a request
costs no wall-clock read and no datetime object; the second part of the timestamp is formatted
once per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from gossamer.proxy import measure
from gossamer.proxy.exchange import Exchange

if TYPE_CHECKING:
    from gossamer.proxy.connection import DownstreamConnection
    from gossamer.telemetry.metrics import CounterChild

log = logging.getLogger("gossamer.proxy.accesslog")

FLUSH_BYTES = 65536
FLUSH_INTERVAL = 1.0
MAX_PENDING_BYTES = 8 * 1024 * 1024  # held while a write is stuck (a full pipe); more is dropped
STDOUT = "-"

# A flag of our own, not a local response's: the client went away before its response was done.
CLIENT_DISCONNECTED = "client-disconnected"

# W3C Trace Context: version-traceid-parentid-flags, lower-case hex; an all-zero id is invalid.
_TRACEPARENT = re.compile(rb"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO_TRACE = b"0" * 32
_TRACEPARENT_NAME = b"traceparent"
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))  # a format spec per request costs ~1 us


class AccessLogError(Exception):
    """The access log cannot be opened; the message is one line naming the path."""


# How a connection ended (`end` of a connection line). The first ones are ordinary and sampled
# like ordinary requests; the rest are always logged.
END_CLIENT_CLOSED = "client-closed"  # the client closed it (between requests, as a rule)
END_IDLE_TIMEOUT = "idle-timeout"  # idle longer than the downstream idle timeout
END_CONNECTION_CLOSE = "connection-close"  # a request or response asked for `connection: close`
END_CLIENT_RESET = "client-reset"  # the client reset it (or the socket failed)
END_DRAINING = "draining"  # closed by the proxy's drain
END_TLS_FAILED = "tls-handshake-failed"  # the mTLS handshake failed or the peer's ID was bad
ORDINARY_ENDS = frozenset({END_CLIENT_CLOSED, END_IDLE_TIMEOUT, END_CONNECTION_CLOSE})


class AccessRecord(msgspec.Struct, rename="camel"):
    """One request's line of the access log (docs/access-log.md), in this key order."""

    time: str
    direction: str
    method: str | None
    authority: str | None
    path: str | None
    protocol: str | None
    status: int
    flags: str | None
    duration_ms: float
    upstream_cluster: str | None
    upstream_endpoint: str | None
    attempts: int
    bytes_received: int
    bytes_sent: int
    request_id: str
    trace_id: str | None
    source_identity: str | None
    destination_identity: str | None
    source_address: str | None
    kind: str = "request"


class ConnectionRecord(msgspec.Struct, rename="camel"):
    """One client connection's line (docs/access-log.md), in this key order."""

    time: str
    direction: str
    source_address: str | None
    duration_ms: float
    requests: int
    bytes_received: int
    bytes_sent: int
    mtls: bool
    source_identity: str | None
    destination_identity: str | None
    end: str
    error: str | None
    kind: str = "connection"


def open_target(target: str) -> int:
    """A descriptor to append log lines to: a dup of stdout for "-", else the file (created 0640).

    Raises:
        AccessLogError: the file cannot be opened for writing (the message names it and why).
    """
    try:
        if target == STDOUT:
            return os.dup(1)
        return os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        where = "stdout" if target == STDOUT else target
        raise AccessLogError(
            f"--access-log {where}: cannot open for writing: {exc.strerror or exc}"
        ) from None


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` (the worker thread's job; os.write may take only part of it)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def trace_id(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The trace-id of a valid W3C `traceparent` field, or None."""
    for name, value in headers:
        if len(name) == 11 and name.lower() == _TRACEPARENT_NAME:
            m = _TRACEPARENT.fullmatch(value.strip().lower())
            if m is None or value.startswith(b"ff") or m.group(1) == _ZERO_TRACE:
                return None
            return m.group(1).decode("ascii")
    return None


def _settle(future: asyncio.Future[None], error: Exception | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "backslashreplace")


class AccessLog:
    """The per-process access log; see the module docstring.

    Args:
        loop: timers for the flush interval.
        fd: where lines go (`open_target`); closed by `close()`.
        sample: the share of ordinary requests logged, 0 < sample <= 1; local responses, flagged
            ones and 5xx are always logged.
        rand: the proxy's PRNG (`random.Random().random`), for sampling.
        own_identity: this proxy's SPIFFE ID now (None without an SVID).
        written / dropped: counters of lines written and lines lost.
        wall: the wall clock, read once per flush.
        clock: the monotonic clock durations are measured with (proxy/measure.py): the one the
            exchange's `started` and the connection's `opened_at` come from.
        offload: runs a write off the loop; by default on one worker thread.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        *,
        sample: float = 1.0,
        rand: Callable[[], float],
        own_identity: Callable[[], str | None],
        written: CounterChild,
        dropped: CounterChild,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = measure.now,
        offload: Callable[[Callable[[], None]], asyncio.Future[None]] | None = None,
    ) -> None:
        if not 0.0 < sample <= 1.0:
            raise ValueError(f"sample rate {sample!r} is not in (0, 1]")
        self.loop = loop
        self.fd = fd
        self.sample = sample
        self.rand = rand
        self.own_identity = own_identity
        self.written = written
        self.dropped = dropped
        self.wall = wall
        self.clock = clock
        self._offload = offload
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], asyncio.Future[None]] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None
        self._encode_into = msgspec.json.Encoder().encode_into
        self.buffer = bytearray()
        self.lines = 0  # lines in `buffer`
        self.timer: asyncio.TimerHandle | None = None
        self.writing: asyncio.Future[None] | None = None
        self.failing = False  # the last write failed (one warning per run of failures)
        self.closed = False
        self._offset = wall() - clock()  # wall clock minus `clock`, refreshed per flush
        self._second = -1
        self._prefix = ""
        self._methods: dict[bytes, str] = {}

    # --- per request ------------------------------------------------------------------------------

    def request(self, conn: DownstreamConnection, status: int, flag: str | None) -> None:
        """Log the request `conn` just finished (its head is `conn.head`, None if unparsed)."""
        if flag is None and status < 500 and self.sample < 1.0 and self.rand() >= self.sample:
            return
        now = self.clock()
        exchange = conn.exchange
        started = now
        cluster = endpoint = peer_id = None
        attempts = 0
        if isinstance(exchange, Exchange):  # not the stand-in of a local answer
            started = exchange.started
            cluster = exchange.cluster.name
            attempts = len(exchange.tried)
            pool = exchange.pool
            if pool is not None and attempts:
                endpoint = pool.endpoint.address
            last = exchange.last_conn
            if last is not None and last.pool is pool:
                peer_id = last.peer_spiffe_id
        head = conn.head
        original = conn.original
        own = self.own_identity()
        if conn.listener.outbound:
            direction, source, destination = "outbound", own, peer_id
        else:
            direction, source, destination = "inbound", conn.peer_spiffe_id, own
        if head is not None:
            method: str | None = self._methods.get(head.method)
            if method is None:
                method = head.method.decode("latin-1")
                if len(self._methods) < 64:
                    self._methods[head.method] = method
            if original is not None and original[0] is head:  # a filter rewrote it
                _, host, path_bytes, query = original
            else:
                host, path_bytes, query = head.host, head.path, head.query
            authority: str | None = _text(host)
            path: str | None = _text(path_bytes + b"?" + query if query else path_bytes)
            protocol: str | None = "HTTP/1.0" if conn.http10 else "HTTP/1.1"
        else:
            method = authority = path = protocol = None
        # The context the connection parsed (proxy/tracing.py): W3C or B3, or the new trace.
        context = conn.trace
        trace = context.trace_id.decode("ascii") if context is not None else None
        record = AccessRecord(
            self.timestamp(started),
            direction,
            method,
            authority,
            path,
            protocol,
            status,
            flag,
            int((now - started) * 1e6) / 1000.0,  # ms to the microsecond; round() is slower
            cluster,
            endpoint,
            attempts,
            conn.bytes_received,
            conn.bytes_sent,
            conn.request_id.decode("latin-1"),
            trace,
            source,
            destination,
            conn.source_address(),
        )
        self.append(record)

    def connection(
        self,
        conn: DownstreamConnection,
        end: str,
        error: str | None = None,
    ) -> None:
        """Log the client connection `conn`, which just ended (`end`: one of the END_ names)."""
        if end in ORDINARY_ENDS and self.sample < 1.0 and self.rand() >= self.sample:
            return
        own = self.own_identity()
        if conn.listener.outbound:
            source, destination = own, None  # the app's connection: its upstreams vary
        else:
            source, destination = conn.peer_spiffe_id, own
        started = conn.opened_at
        self.append(
            ConnectionRecord(
                self.timestamp(started),
                conn.listener.direction,
                conn.source_address(),
                int((self.clock() - started) * 1e6) / 1000.0,
                conn.requests,
                conn.wire_received,
                conn.wire_sent,
                conn.mtls,
                source,
                destination,
                end,
                error,
            )
        )

    def refused(
        self,
        direction: str,
        source_address: str | None,
        started: float,
        end: str,
        error: str | None,
        received: int = 0,
        sent: int = 0,
    ) -> None:
        """Log a connection that ended before it carried HTTP (a failed mTLS handshake, a
        plaintext client on a STRICT listener, a client that left at once), sampled like
        `connection`."""
        if end in ORDINARY_ENDS and self.sample < 1.0 and self.rand() >= self.sample:
            return
        self.append(
            ConnectionRecord(
                self.timestamp(started),
                direction,
                source_address,
                int((self.clock() - started) * 1e6) / 1000.0,
                0,
                received,
                sent,
                end == END_TLS_FAILED,
                None,
                self.own_identity() if direction == "inbound" else None,
                end,
                error,
            )
        )

    def timestamp(self, when: float) -> str:
        """RFC 3339 UTC with milliseconds for a time on `clock`."""
        t = when + self._offset
        second = int(t)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._prefix + _MILLIS[int((t - second) * 1000.0)]

    def append(self, record: Any) -> None:
        """Add one line; start a flush when the buffer is full or arm the interval timer."""
        buffer = self.buffer
        if self.closed or len(buffer) >= MAX_PENDING_BYTES:
            self.dropped.value += 1.0
            return
        self._encode_into(record, buffer, -1)
        buffer += b"\n"
        self.lines += 1
        if len(buffer) >= FLUSH_BYTES:
            self.flush()
        elif self.timer is None:
            self.timer = self.loop.call_later(FLUSH_INTERVAL, self._on_timer)

    # --- batches ----------------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self.timer = None
        self.flush()

    def flush(self) -> None:
        """Hand the buffered lines to the writer, unless a write is under way (it flushes again
        when done)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._offset = self.wall() - self.clock()
        if self.writing is not None or not self.buffer:
            return
        data, lines = bytes(self.buffer), self.lines
        self.buffer.clear()
        self.lines = 0
        fd = self.fd
        future = self._start_write(lambda: write_all(fd, data))
        self.writing = future
        future.add_done_callback(lambda f: self._written(f, lines))

    def _start_write(self, job: Callable[[], None]) -> asyncio.Future[None]:
        if self._offload is not None:
            return self._offload(job)
        if self._thread is None:
            # A daemon thread, not an executor's: one stuck on a pipe must not hold up exit.
            self._thread = threading.Thread(
                target=self._work, name="gossamer-access-log", daemon=True
            )
            self._thread.start()
        future: asyncio.Future[None] = self.loop.create_future()
        self._jobs.put((job, future))
        return future

    def _work(self) -> None:
        """The writer thread: run each job, hand its outcome back to the loop."""
        loop = self.loop
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, future = item
            try:
                job()
            except Exception as exc:  # an OSError, as a rule: _written reports it
                error: Exception | None = exc
            else:
                error = None
            try:
                loop.call_soon_threadsafe(_settle, future, error)
            except RuntimeError:
                return  # the loop is closed: nobody is waiting any more

    def _written(self, future: asyncio.Future[None], lines: int) -> None:
        self.writing = None
        exc = None if future.cancelled() else future.exception()
        if exc is None and not future.cancelled():
            self.written.value += lines
            if self.failing:
                self.failing = False
                log.warning("access log: writing again")
        else:
            self.dropped.value += lines
            if not self.failing:
                self.failing = True
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                log.warning(
                    "access log: write failed (%s); dropping lines, counted in "
                    'gossamer_proxy_access_log_lines_total{result="dropped"}, until a write '
                    "succeeds",
                    why,
                )
        if self.buffer and (len(self.buffer) >= FLUSH_BYTES or self.closed):
            self.flush()
        elif self.buffer and self.timer is None:
            self.timer = self.loop.call_later(FLUSH_INTERVAL, self._on_timer)

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Write what is buffered (waiting up to `timeout` seconds for the writer), then close."""
        if self.closed:
            return
        self.closed = True
        try:
            async with asyncio.timeout(timeout):
                while self.writing is not None or self.buffer:
                    if self.writing is None:
                        self.flush()
                    writing = self.writing
                    if writing is not None:
                        await asyncio.wait({writing})  # its outcome is _written's business
        except TimeoutError:
            log.warning("access log: %d lines not written at exit (stuck writer)", self.lines)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self._thread is not None:
            self._jobs.put(None)
        with contextlib.suppress(OSError):
            os.close(self.fd)
