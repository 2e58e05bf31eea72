"""Live tap of the sidecar's requests: access-log records streamed as NDJSON to admin clients.

`GET /tap?path=PREFIX&method=M&status=CODE|Nxx&direction=inbound|outbound` on the admin listener
(proxy/admin.py) opens a `Tap`. The records are the access log's (`AccessLog.request` builds them:
one builder, docs/access-log.md documents the fields), never sampled. While nobody taps, each
listener's `tap` attribute is None and a request pays one attribute test for it
(proxy/connection.py); with taps open, a record is built and encoded once, and its line is handed
to every tap whose filter it passes.

A tap never slows the data plane: lines collect in the tap's buffer and go out in one write per
loop iteration; when the client reads too slowly (its transport's buffer plus ours past
`MAX_TAP_BUFFER`) lines are dropped and counted, and the next write starts with a
`{"tapDropped": N}` line (N dropped so far). At most `MAX_TAPS` taps are open at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from gossamer.proxy import measure
from gossamer.proxy.accesslog import AccessLog, AccessRecord
from gossamer.telemetry.metrics import CounterChild
from gossamer.telemetry.tap_filter import TapFilter

if TYPE_CHECKING:
    from gossamer.proxy.connection import DownstreamConnection

MAX_TAPS = 4
MAX_TAP_BUFFER = 1024 * 1024  # bytes queued for one tap (ours + its transport's) before dropping


class TapWriter(Protocol):
    """The part of a transport a tap writes to (an asyncio transport is one)."""

    def write(self, data: bytes) -> None: ...

    def get_write_buffer_size(self) -> int: ...

    def is_closing(self) -> bool: ...


class Tap:
    """One tap client: its filter, its pending lines and how many it lost."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        writer: TapWriter,
        tap_filter: TapFilter,
        max_buffer: int = MAX_TAP_BUFFER,
    ) -> None:
        self.loop = loop
        self.max_buffer = max_buffer
        self.writer = writer
        self.filter = tap_filter
        self.pending = bytearray()
        self.scheduled = False
        self.sent = 0
        self.dropped = 0
        self._reported = 0  # drops already announced in a tapDropped line

    def push(self, line: bytes) -> None:
        if len(self.pending) + self.writer.get_write_buffer_size() > self.max_buffer:
            self.dropped += 1
            return
        self.pending += line
        self.sent += 1
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        if self.writer.is_closing():
            self.pending.clear()
            return
        if self.dropped != self._reported:
            self._reported = self.dropped
            self.writer.write(b'{"tapDropped":%d}\n' % self.dropped)
        if self.pending:
            self.writer.write(bytes(self.pending))
            self.pending.clear()


class _Listener(Protocol):
    tap: TapHub | None


class _RecordBuilder(AccessLog):
    """The access log's record builder, with records handed to the hub instead of a file."""

    def __init__(self, hub: TapHub, own_identity: Callable[[], str | None]) -> None:
        super().__init__(
            hub.loop,
            -1,  # never written: `append` is the hub's, so the buffer stays empty
            sample=1.0,
            rand=lambda: 0.0,
            own_identity=own_identity,
            written=CounterChild(),
            dropped=CounterChild(),
            wall=hub.wall,
            clock=hub.clock,
        )
        self.hub = hub

    def append(self, record: Any) -> None:
        self.hub.publish(record)


class TapHub:
    """The proxy's open taps; it sets `listener.tap` to itself while any is open, else None."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listeners: Sequence[_Listener],
        own_identity: Callable[[], str | None],
        *,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = measure.now,
        max_taps: int = MAX_TAPS,
        max_buffer: int = MAX_TAP_BUFFER,
    ) -> None:
        self.loop = loop
        self.listeners = listeners
        self.wall = wall
        self.clock = clock
        self.max_taps = max_taps
        self.max_buffer = max_buffer
        self.taps: list[Tap] = []
        self._builder = _RecordBuilder(self, own_identity)
        self._encode = msgspec.json.Encoder().encode
        self._clock_read = -1.0

    def open(self, writer: TapWriter, tap_filter: TapFilter) -> Tap | None:
        """A new tap writing to `writer`, or None when `max_taps` are already open."""
        if len(self.taps) >= self.max_taps:
            return None
        tap = Tap(self.loop, writer, tap_filter, self.max_buffer)
        self.taps.append(tap)
        self._builder.flush()  # an empty buffer: this only re-reads the wall-clock offset
        for listener in self.listeners:
            listener.tap = self
        return tap

    def close(self, tap: Tap) -> None:
        if tap in self.taps:
            self.taps.remove(tap)
        if not self.taps:
            for listener in self.listeners:
                listener.tap = None

    def request(self, conn: DownstreamConnection, status: int, flag: str | None) -> None:
        """The record point: `conn` finished a request (see AccessLog.request)."""
        now = self.loop.time()
        if now - self._clock_read > 1.0:  # follow wall-clock adjustments, as the log does
            self._clock_read = now
            self._builder.flush()
        self._builder.request(conn, status, flag)

    def publish(self, record: AccessRecord) -> None:
        line: bytes | None = None
        for tap in self.taps:
            if tap.filter.matches(record):
                if line is None:
                    line = self._encode(record) + b"\n"
                tap.push(line)
