"""Unit tests of the access log: record building, sampling, batching and write failures.

The loop's clock and timers, and the clock durations are measured with, are one fake driven by the
test (`FakeClock`), the wall clock is a fixed number, and writes are run inline by an injected
`offload`; only `test_close_*` uses the real worker thread and a real file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gossamer.http.message import RequestHead
from gossamer.proxy.accesslog import (
    FLUSH_BYTES,
    FLUSH_INTERVAL,
    AccessLog,
    AccessLogError,
    open_target,
    trace_id,
)
from gossamer.telemetry.metrics import Registry
from gossamer.telemetry.tracing import extract

WALL = 1_795_000_000.25  # 2026-11-18T11:06:40.250Z
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class FakeClock:
    """The parts of the event loop the access log uses: time() and call_later(), on demand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, Callable[[], None], Handle]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> Handle:
        handle = Handle()
        self.timers.append((self.now + delay, callback, handle))
        return handle

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [t for t in self.timers if t[0] <= self.now]
        self.timers = [t for t in self.timers if t[0] > self.now]
        for _, callback, handle in due:
            if not handle.cancelled:
                callback()


class Handle:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Writes:
    """An inline `offload`: runs each write at once (or fails it), recording the batches."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.batches = 0
        self.fail: OSError | None = None
        self.hold = False  # leave the write's future pending (a stuck writer)
        self.pending: list[asyncio.Future[None]] = []

    def __call__(self, job: Callable[[], None]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.hold:
            self.pending.append(future)
            return future
        self.batches += 1
        if self.fail is not None:
            future.set_exception(self.fail)
        else:
            job()
            future.set_result(None)
        return future


def make_log(
    tmp_path: Path, *, sample: float = 1.0, rand: float = 0.5
) -> tuple[AccessLog, FakeClock, Writes, Path, Registry]:
    from gossamer.proxy.stats import DataPlaneMetrics

    registry = Registry()
    lines = DataPlaneMetrics(registry).access_log_lines
    path = tmp_path / "access.log"
    fd = open_target(str(path))
    clock = FakeClock()
    writes = Writes(fd)
    access = AccessLog(
        clock,  # type: ignore[arg-type]
        fd,
        sample=sample,
        rand=lambda: rand,
        own_identity=lambda: "spiffe://td/ns/default/sa/web",
        written=lines.labels("written"),
        dropped=lines.labels("dropped"),
        wall=lambda: WALL + clock.now - 100.0,
        clock=clock.time,
        offload=writes,
    )
    return access, clock, writes, path, registry


def conn(outbound: bool = False, head: RequestHead | None = None, **extra: Any) -> Any:
    """A stand-in for a finished DownstreamConnection (only the attributes the log reads)."""
    fields: dict[str, Any] = {
        "exchange": None,
        "head": head,
        "original": None,
        "listener": SimpleNamespace(
            outbound=outbound, direction="outbound" if outbound else "inbound"
        ),
        "peer_spiffe_id": None if outbound else "spiffe://td/ns/default/sa/caller",
        "http10": False,
        "bytes_received": 3,
        "bytes_sent": 42,
        "request_id": b"ab" * 16,
        "source_address": lambda: "127.0.0.1:5555",
        "trace": _context(head),
        "opened_at": 100.0,
        "requests": 2,
        "wire_received": 180,
        "wire_sent": 260,
        "mtls": not outbound,
    }
    fields.update(extra)
    return SimpleNamespace(**fields)


def _context(head: RequestHead | None) -> Any:
    """The trace context the connection would have parsed from `head` (proxy/tracing.py)."""
    found = extract(head.headers) if head is not None else None
    if found is None or found.trace_id is None:
        return None
    return SimpleNamespace(trace_id=found.trace_id)


def get(
    path: bytes = b"/p", query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None
) -> RequestHead:
    return RequestHead(b"GET", path, query, headers or [], host=b"pricing")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_a_record_has_every_documented_field(tmp_path: Path) -> None:
    access, clock, _, path, _ = make_log(tmp_path)
    head = get(b"/p\x01x", b"q=1", [(b"traceparent", f"00-{TRACE}-00f067aa0ba902b7-01".encode())])
    access.request(conn(head=head), 404, "no-route")
    access.flush()
    await settle()
    [record] = lines(path)
    assert record == {
        "time": "2026-11-18T11:06:40.250Z",
        "direction": "inbound",
        "method": "GET",
        "authority": "pricing",
        "path": "/p\x01x?q=1",
        "protocol": "HTTP/1.1",
        "status": 404,
        "flags": "no-route",
        "durationMs": 0.0,
        "upstreamCluster": None,
        "upstreamEndpoint": None,
        "attempts": 0,
        "bytesReceived": 3,
        "bytesSent": 42,
        "requestId": "ab" * 16,
        "traceId": TRACE,
        "sourceIdentity": "spiffe://td/ns/default/sa/caller",
        "destinationIdentity": "spiffe://td/ns/default/sa/web",
        "sourceAddress": "127.0.0.1:5555",
        "kind": "request",
    }
    # The control character is escaped by JSON, never written raw into the line.
    assert "\\u0001" in path.read_text()
    assert list(record)[:3] == ["time", "direction", "method"]  # the documented order
    assert list(record)[-2:] == ["sourceAddress", "kind"]
    assert all(h.cancelled for _, _, h in clock.timers)  # flushed: no timer left armed


async def test_outbound_identities_and_an_unparsed_head(tmp_path: Path) -> None:
    access, _, _, path, _ = make_log(tmp_path)
    access.request(conn(outbound=True, head=None), 400, "bad-request")
    access.flush()
    await settle()
    [record] = lines(path)
    assert record["direction"] == "outbound"
    assert record["sourceIdentity"] == "spiffe://td/ns/default/sa/web"
    assert record["destinationIdentity"] is None
    assert record["method"] is record["path"] is record["protocol"] is None


def test_trace_id_comes_from_a_valid_traceparent_only() -> None:
    good = f"00-{TRACE}-00f067aa0ba902b7-01".encode()
    assert trace_id([(b"traceparent", good)]) == TRACE
    assert trace_id([(b"traceparent", good.upper())]) == TRACE
    assert trace_id([]) is None
    assert trace_id([(b"traceparent", b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01")]) is None
    assert trace_id([(b"traceparent", b"ff-" + TRACE.encode() + b"-00f067aa0ba902b7-01")]) is None
    assert trace_id([(b"traceparent", b"garbage")]) is None


async def test_the_timestamp_follows_the_loop_clock_and_the_seconds_roll(tmp_path: Path) -> None:
    access, clock, _, _, _ = make_log(tmp_path)
    assert access.timestamp(clock.now) == "2026-11-18T11:06:40.250Z"
    assert access.timestamp(clock.now + 0.7499) == "2026-11-18T11:06:40.999Z"
    assert access.timestamp(clock.now + 0.75) == "2026-11-18T11:06:41.000Z"
    assert access.timestamp(clock.now + 3600) == "2026-11-18T12:06:40.250Z"


async def test_lines_are_written_in_batches_by_size_and_by_timer(tmp_path: Path) -> None:
    """Nothing is written per line: a batch goes when the buffer passes 64 KiB, or one interval
    after the first line of a batch."""
    access, clock, writes, path, registry = make_log(tmp_path)
    for _ in range(10):
        access.request(conn(head=get()), 200, None)
    assert writes.batches == 0
    clock.advance(FLUSH_INTERVAL / 2)
    assert writes.batches == 0
    clock.advance(FLUSH_INTERVAL / 2)
    await settle()
    assert writes.batches == 1
    assert len(lines(path)) == 10
    count = 0
    while writes.batches == 1:
        access.request(conn(head=get(b"/" + b"x" * 500)), 200, None)
        count += 1
    await settle()
    assert len(lines(path)) == 10 + count
    size = len(path.read_bytes().splitlines(keepends=True)[-1])
    assert (count - 1) * size < FLUSH_BYTES <= count * size  # flushed on size, not before
    text = registry.render().decode()
    assert f'gossamer_proxy_access_log_lines_total{{result="written"}} {10 + count}' in text


async def test_lines_wait_for_a_stuck_write_then_go_in_the_next_batch(tmp_path: Path) -> None:
    access, clock, writes, path, _ = make_log(tmp_path)
    writes.hold = True
    access.request(conn(head=get()), 200, None)
    clock.advance(FLUSH_INTERVAL)
    assert len(writes.pending) == 1
    for _ in range(5):
        access.request(conn(head=get()), 200, None)
    clock.advance(FLUSH_INTERVAL)
    assert len(writes.pending) == 1  # one write at a time; the rest keeps buffering
    writes.hold = False
    writes.pending[0].set_result(None)
    await settle()
    clock.advance(FLUSH_INTERVAL)
    await settle()
    assert len(lines(path)) == 5  # the held batch's line was never really written (fake)


async def test_a_failing_disk_drops_lines_counts_them_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    access, clock, writes, path, registry = make_log(tmp_path)
    writes.fail = OSError(28, "No space left on device")
    with caplog.at_level(logging.WARNING, "gossamer.proxy.accesslog"):
        for _ in range(3):
            access.request(conn(head=get()), 200, None)
            access.request(conn(head=get()), 200, None)
            clock.advance(FLUSH_INTERVAL)
            await settle()
        writes.fail = None
        access.request(conn(head=get()), 200, None)
        clock.advance(FLUSH_INTERVAL)
        await settle()
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "write failed" in m]) == 1, messages
    assert "No space left on device" in messages[0]
    assert "writing again" in messages[-1]
    text = registry.render().decode()
    assert 'gossamer_proxy_access_log_lines_total{result="dropped"} 6' in text
    assert len(lines(path)) == 1


async def test_sampling_keeps_every_error_and_flagged_request(tmp_path: Path) -> None:
    access, _, _, path, _ = make_log(tmp_path, sample=0.01, rand=0.5)
    access.request(conn(head=get()), 200, None)  # sampled away (0.5 >= 0.01)
    access.request(conn(head=get()), 404, None)
    access.request(conn(head=get()), 503, None)
    access.request(conn(head=get()), 302, "redirect")
    access.request(conn(head=get()), 200, "client-disconnected")
    access.flush()
    await settle()
    assert [(r["status"], r["flags"]) for r in lines(path)] == [
        (503, None),
        (302, "redirect"),
        (200, "client-disconnected"),
    ]


async def test_a_connection_line_has_every_documented_field(tmp_path: Path) -> None:
    access, clock, _, path, _ = make_log(tmp_path)
    clock.advance(2.5)
    access.connection(conn(), "client-closed")
    access.connection(conn(outbound=True), "idle-timeout")
    access.flush()
    await settle()
    inbound, outbound = lines(path)
    assert inbound == {
        "time": "2026-11-18T11:06:40.250Z",  # when it was accepted, not when it ended
        "direction": "inbound",
        "sourceAddress": "127.0.0.1:5555",
        "durationMs": 2500.0,
        "requests": 2,
        "bytesReceived": 180,
        "bytesSent": 260,
        "mtls": True,
        "sourceIdentity": "spiffe://td/ns/default/sa/caller",
        "destinationIdentity": "spiffe://td/ns/default/sa/web",
        "end": "client-closed",
        "error": None,
        "kind": "connection",
    }
    # Outbound, the app's connection: it is this proxy's identity; its upstreams vary.
    assert (outbound["sourceIdentity"], outbound["destinationIdentity"]) == (
        "spiffe://td/ns/default/sa/web",
        None,
    )
    assert (outbound["mtls"], outbound["end"]) == (False, "idle-timeout")


async def test_a_refused_connection_names_why(tmp_path: Path) -> None:
    access, clock, _, path, _ = make_log(tmp_path, sample=0.01)  # refusals are never sampled
    access.refused(
        "inbound", "127.0.0.1:4000", clock.now, "tls-handshake-failed", "closed: the peer left"
    )
    access.flush()
    await settle()
    [record] = lines(path)
    assert (record["kind"], record["end"], record["error"]) == (
        "connection",
        "tls-handshake-failed",
        "closed: the peer left",
    )
    assert (record["requests"], record["mtls"], record["sourceIdentity"]) == (0, True, None)


async def test_sampling_keeps_every_connection_that_ended_badly(tmp_path: Path) -> None:
    access, _, _, path, _ = make_log(tmp_path, sample=0.01, rand=0.5)
    for end in ("client-closed", "idle-timeout", "connection-close"):
        access.connection(conn(), end)  # ordinary: sampled away
    for end in ("client-reset", "draining", "bad-request", "upstream-reset"):
        access.connection(conn(), end)
    access.flush()
    await settle()
    assert [r["end"] for r in lines(path)] == [
        "client-reset",
        "draining",
        "bad-request",
        "upstream-reset",
    ]


def test_a_sample_rate_outside_0_1_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not in"):
        make_log(tmp_path, sample=0.0)


def test_an_unwritable_path_names_itself(tmp_path: Path) -> None:
    with pytest.raises(AccessLogError) as info:
        open_target(str(tmp_path / "missing" / "access.log"))
    assert str(info.value) == (
        f"--access-log {tmp_path}/missing/access.log: cannot open for writing: "
        "No such file or directory"
    )


async def test_close_writes_everything_on_the_worker_thread_and_closes_the_file(
    tmp_path: Path,
) -> None:
    from gossamer.proxy.stats import DataPlaneMetrics

    registry = Registry()
    metric = DataPlaneMetrics(registry).access_log_lines
    path = tmp_path / "real.log"
    fd = open_target(str(path))
    loop = asyncio.get_running_loop()
    access = AccessLog(
        loop,
        fd,
        rand=lambda: 0.0,
        own_identity=lambda: None,
        written=metric.labels("written"),
        dropped=metric.labels("dropped"),
    )
    for i in range(2000):  # several batches by size
        access.request(conn(head=get(b"/%d" % i)), 200, None)
    await access.close()
    assert [r["path"] for r in lines(path)] == [f"/{i}" for i in range(2000)]
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)
