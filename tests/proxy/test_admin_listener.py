"""Tests for the admin listener over real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

import msgspec
import pytest

from gossamer.proxy.admin import AdminServer
from gossamer.proxy.agent import http_request
from gossamer.telemetry.metrics import CONTENT_TYPE, Registry


class View:
    """The proxy as the admin listener sees it, with state the test sets."""

    def __init__(self) -> None:
        self.ready = (False, "no snapshot yet (waiting for http://cp)")
        self.quits = 0
        self.quit_event = asyncio.Event()

    def readiness(self) -> tuple[bool, str]:
        return self.ready

    def config_document(self) -> dict[str, object]:
        return {"version": "abc", "status": "ACK", "snapshot": {"proxy": {"proxyId": "p"}}}

    def request_quit(self) -> None:
        self.quits += 1
        self.quit_event.set()


class Admin:
    def __init__(self, view: View, registry: Registry, server: AdminServer, port: int) -> None:
        self.view, self.registry, self.server, self.port = view, registry, server, port

    async def get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        return await http_request("127.0.0.1", self.port, method, path, time_limit=5.0)


@pytest.fixture
async def admin() -> AsyncIterator[Admin]:
    view, registry = View(), Registry()
    server = AdminServer(view, registry)
    host, port = await server.start("127.0.0.1", 0)
    assert host == "127.0.0.1"
    yield Admin(view, registry, server, port)
    await server.close()


async def test_ready_follows_the_proxy(admin: Admin) -> None:
    """/ready is 503 with the reason until the proxy is ready, then 200 "ready"."""
    assert await admin.get("/ready") == (
        503,
        b"not ready: no snapshot yet (waiting for http://cp)\n",
    )
    admin.view.ready = (True, "")
    assert await admin.get("/ready") == (200, b"ready\n")


async def test_config_is_pretty_json(admin: Admin) -> None:
    """/config returns the view's document, indented."""
    status, body = await admin.get("/config")
    assert status == 200
    assert msgspec.json.decode(body)["version"] == "abc"
    assert b'\n  "version": "abc"' in body


async def test_metrics_with_curl(admin: Admin) -> None:
    """/metrics serves the registry in Prometheus text format, read here by curl."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    admin.registry.counter("gossamer_test_total", "A test counter.").inc(3)
    proc = await asyncio.create_subprocess_exec(
        curl,
        "-sS",
        "-D",
        "-",
        f"http://127.0.0.1:{admin.port}/metrics",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(10):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert f"content-type: {CONTENT_TYPE}".encode() in head.lower()
    assert b"# TYPE gossamer_test_total counter\ngossamer_test_total 3\n" in body


async def test_index_lists_endpoints(admin: Admin) -> None:
    """GET / names every endpoint."""
    status, body = await admin.get("/")
    assert status == 200
    for path in (b"/ready", b"/config", b"/metrics", b"/quitquitquit"):
        assert path in body


async def test_unknown_path_and_wrong_method(admin: Admin) -> None:
    """Unknown paths are 404 and wrong methods 405, both as JSON errors."""
    status, body = await admin.get("/nope")
    assert status == 404
    assert msgspec.json.decode(body)["error"]["code"] == "not_found"
    status, body = await admin.get("/quitquitquit")
    assert status == 405
    assert msgspec.json.decode(body)["error"]["message"] == "/quitquitquit takes POST"
    status, _ = await admin.get("/ready", method="POST")
    assert status == 405
    assert admin.view.quits == 0


async def test_quitquitquit_answers_then_quits(admin: Admin) -> None:
    """POST /quitquitquit answers 200 and then asks the proxy to drain."""
    status, body = await admin.get("/quitquitquit", method="POST")
    assert (status, body) == (200, b"draining\n")
    async with asyncio.timeout(5):
        await admin.view.quit_event.wait()
    assert admin.view.quits == 1


async def test_keep_alive_pipelined_and_bad_request(admin: Admin) -> None:
    """Two pipelined requests on one connection get two answers in order; garbage gets a 400."""
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    try:
        writer.write(
            b"GET /ready HTTP/1.1\r\nhost: a\r\n\r\nGET /nope HTTP/1.1\r\nhost: a\r\n"
            b"connection: close\r\n\r\n"
        )
        async with asyncio.timeout(5):
            data = await reader.read()
        assert data.startswith(b"HTTP/1.1 503 ")
        assert data.count(b"HTTP/1.1 ") == 2
        assert b"HTTP/1.1 404 " in data
    finally:
        writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", admin.port)
    try:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        async with asyncio.timeout(5):
            data = await reader.read()
        assert data.startswith(b"HTTP/1.1 400 ")
    finally:
        writer.close()


def test_serves_on_uvloop() -> None:
    """The proxy runs on uvloop, whose transports differ from asyncio's: serve a request there."""
    import uvloop

    async def scenario() -> tuple[int, bytes]:
        view = View()
        view.ready = (True, "")
        server = AdminServer(view, Registry())
        _, port = await server.start("127.0.0.1", 0)
        try:
            return await http_request("127.0.0.1", port, "GET", "/ready", time_limit=5.0)
        finally:
            await server.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(scenario()) == (200, b"ready\n")
