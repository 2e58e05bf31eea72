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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from gossamer.proxy.accesslog import AccessLog, AccessRecord
from gossamer.telemetry.metrics import CounterChild

if TYPE_CHECKING:
    from gossamer.proxy.connection import DownstreamConnection

MAX_TAPS = 4
MAX_TAP_BUFFER = 1024 * 1024  # bytes queued for one tap (ours + its transport's) before dropping
MAX_PATH_PREFIX = 1024
DIRECTIONS = ("inbound", "outbound")


class TapFilterError(ValueError):
    """A tap filter that cannot be used; the message names the parameter and why."""


@dataclass(frozen=True, slots=True)
class TapFilter:
    """Which records a tap wants; None matches everything."""

    path: str | None = None  # a prefix of the path (query included) as received
    method: str | None = None  # upper case
    status: int | None = None  # an exact status ...
    status_class: int | None = None  # ... or its hundreds digit (5 for "5xx")
    direction: str | None = None

    def matches(self, record: AccessRecord) -> bool:
        if self.direction is not None and record.direction != self.direction:
            return False
        if self.method is not None and record.method != self.method:
            return False
        if self.status is not None and record.status != self.status:
            return False
        if self.status_class is not None and record.status // 100 != self.status_class:
            return False
        return self.path is None or (record.path or "").startswith(self.path)

    def query(self) -> dict[str, str]:
        """The filter as query parameters (what `parse_filter` reads back)."""
        out: dict[str, str] = {}
        if self.path is not None:
            out["path"] = self.path
        if self.method is not None:
            out["method"] = self.method
        if self.status is not None:
            out["status"] = str(self.status)
        elif self.status_class is not None:
            out["status"] = f"{self.status_class}xx"
        if self.direction is not None:
            out["direction"] = self.direction
        return out


def parse_filter(params: Mapping[str, str | None]) -> TapFilter:
    """A TapFilter from query parameters (path, method, status, direction; empty means any).

    Raises:
        TapFilterError: a value is not usable, or a parameter is unknown (the message says which).
    """
    unknown = sorted(k for k in params if k not in ("path", "method", "status", "direction"))
    if unknown:
        raise TapFilterError(
            f"unknown tap parameter {unknown[0]!r}; use path, method, status, direction"
        )
    path = params.get("path") or None
    if path is not None:
        if not path.startswith("/"):
            raise TapFilterError(f"path {path!r} must start with '/' (a prefix of request paths)")
        if len(path) > MAX_PATH_PREFIX:
            raise TapFilterError(f"path is longer than {MAX_PATH_PREFIX} characters")
    method = params.get("method") or None
    if method is not None:
        if not method.isascii() or not method.isalpha() or len(method) > 32:
            raise TapFilterError(f"method {method!r} is not an HTTP method (letters only)")
        method = method.upper()
    status: int | None = None
    status_class: int | None = None
    text = (params.get("status") or "").strip().lower()
    if text:
        if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
            status_class = int(text[0])
        elif text.isdigit() and len(text) == 3 and 100 <= int(text) <= 599:
            status = int(text)
        else:
            raise TapFilterError(
                f"status {text!r} is neither a status code (100-599) nor a class like 5xx"
            )
    direction = params.get("direction") or None
    if direction is not None and direction not in DIRECTIONS:
        raise TapFilterError(f"direction {direction!r} is neither inbound nor outbound")
    return TapFilter(path, method, status, status_class, direction)


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
        max_taps: int = MAX_TAPS,
        max_buffer: int = MAX_TAP_BUFFER,
    ) -> None:
        self.loop = loop
        self.listeners = listeners
        self.wall = wall
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
