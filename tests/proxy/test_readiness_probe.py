"""Tests for the probe of the local app's readiness."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from gossamer.proxy.readiness import ReadinessProbe, probe_app


class App:
    """A tiny HTTP app answering every request with `status`; `silent` makes it never answer."""

    def __init__(self) -> None:
        self.status = 200
        self.silent = False
        self.paths: list[bytes] = []
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            self.paths.append(line.split()[1] if line else b"")
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            if self.silent:
                await reader.read()  # until the prober gives up and closes
            else:
                writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 0\r\n\r\n" % self.status)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@pytest.fixture
async def app() -> AsyncIterator[App]:
    a = App()
    await a.start()
    yield a
    assert a.server is not None
    a.server.close()
    await a.server.wait_closed()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize(("status", "ready"), [(200, True), (204, True), (302, True), (500, False)])
async def test_status_decides(app: App, status: int, ready: bool) -> None:
    """2xx and 3xx mean ready; anything else is not, with the status in the reason."""
    app.status = status
    ok, why = await probe_app("127.0.0.1", app.port, "/healthz", 1.0)
    assert ok is ready
    assert app.paths == [b"/healthz"]
    if not ready:
        assert why == f"app answered {status} on GET /healthz"


async def test_without_path_a_connect_is_enough(app: App) -> None:
    """With no readiness path, accepting a TCP connection means ready."""
    assert await probe_app("127.0.0.1", app.port, None, 1.0) == (True, "")


async def test_unreachable_app() -> None:
    """A closed port is not ready, and the reason names the address."""
    port = closed_port()
    ok, why = await probe_app("127.0.0.1", port, "/healthz", 1.0)
    assert not ok
    assert why.startswith(f"app 127.0.0.1:{port} unreachable")


async def test_silent_app_times_out(app: App) -> None:
    """An app that accepts but never answers is not ready once the probe's time limit passes."""
    app.silent = True
    ok, why = await probe_app("127.0.0.1", app.port, "/healthz", 0.1)
    assert not ok
    assert why == f"app 127.0.0.1:{app.port} did not answer within 0.1s"


async def test_probe_loop_reports_changes(app: App) -> None:
    """The loop calls on_change only when readiness flips."""
    changes: asyncio.Queue[bool] = asyncio.Queue()
    probe = ReadinessProbe(
        "127.0.0.1", app.port, "/ready", interval=0.02, timeout=1.0, on_change=changes.put_nowait
    )
    task = asyncio.create_task(probe.run())
    try:
        async with asyncio.timeout(5):
            assert await changes.get() is True
            app.status = 503
            assert await changes.get() is False
            assert probe.reason == "app answered 503 on GET /ready"
            app.status = 200
            assert await changes.get() is True
        assert probe.probes >= 3
        assert changes.empty()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
