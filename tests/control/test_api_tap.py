"""`GET /v1/tap`: the control plane merges the admin taps of a service's proxies.

A real ControlPlane served by uvicorn on 127.0.0.1:0 (plain HTTP: the fan-in, not TLS, is under
test); the proxies' admin listeners are small NDJSON servers on 127.0.0.1:0 that record what they
were asked and stream the lines a test hands them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from gossamer.control import api_tap
from gossamer.control.api import create_app
from gossamer.control.registry import Registration
from gossamer.control.server import ControlPlane

DEADLINE = 10.0


class FakeAdmin:
    """A proxy admin listener's /tap: answers 200 and streams the lines given to `send`."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.closed = 0
        self.server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> FakeAdmin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.targets.append(head.split(b" ", 2)[1].decode())
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\r\n")
        self.writers.append(writer)
        await reader.read()  # until the control plane hangs up
        self.closed += 1
        writer.close()

    def send(self, record: dict[str, Any]) -> None:
        for writer in self.writers:
            writer.write(json.dumps(record).encode() + b"\n")

    async def close(self) -> None:
        assert self.server is not None
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def eventually(check: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not check():
        assert loop.time() < end, f"{what} did not happen within {DEADLINE}s"
        await asyncio.sleep(0.01)


class Served:
    def __init__(self, cp: ControlPlane, url: str, admin_token: str) -> None:
        self.cp = cp
        self.url = url
        self.admin_token = admin_token

    async def register(self, proxy_id: str, service: str, admin: str) -> None:
        await self.cp.registry.register(
            Registration(
                proxy_id=proxy_id,
                service=service,
                inbound="127.0.0.1:1",
                admin=admin,
                app_port=8080,
                ready=True,
            )
        )

    async def token(self, role: str) -> str:
        async with httpx.AsyncClient(base_url=self.url) as client:
            resp = await client.post(
                "/v1/tokens",
                json={"role": role},
                headers={"authorization": f"Bearer {self.admin_token}"},
            )
        assert resp.status_code == 200, resp.text
        secret: str = resp.json()["token"]
        return secret


@pytest.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    monkeypatch.setattr(api_tap, "TAP_REFRESH", 0.1)
    cp = await ControlPlane.open(tmp_path / "cp", clock=time.time, debounce=0.01)
    await cp.start()
    config = uvicorn.Config(
        create_app(cp),
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
        loop="none",
        timeout_graceful_shutdown=1,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started or task.done(), "uvicorn listening")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Served(cp, f"http://127.0.0.1:{port}", cp.admin_token_file.read_text().strip())
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, DEADLINE)
        await cp.close()


async def test_the_taps_of_every_proxy_of_the_service_are_merged(served: Served) -> None:
    first, second, other = [await FakeAdmin().start() for _ in range(3)]
    try:
        await served.register("pricing-0", "pricing", first.address)
        await served.register("web-0", "web", other.address)
        viewer = await served.token("viewer")
        async with (
            httpx.AsyncClient(base_url=served.url, timeout=DEADLINE) as client,
            client.stream(
                "GET",
                "/v1/tap",
                params={"service": "pricing", "status": "5xx", "direction": "inbound"},
                headers={"authorization": f"Bearer {viewer}"},
            ) as resp,
        ):
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "application/x-ndjson"
            lines = resp.aiter_lines()
            await eventually(lambda: first.writers, "the first proxy tapped")
            assert first.targets == ["/tap?status=5xx&direction=inbound"]
            first.send({"path": "/a", "status": 503})
            assert json.loads(await anext(lines)) == {
                "proxyId": "pricing-0",
                "path": "/a",
                "status": 503,
            }
            # A proxy that registers while the tap is open joins it.
            await served.register("pricing-1", "pricing", second.address)
            await eventually(lambda: second.writers, "the new proxy tapped")
            second.send({"path": "/b", "status": 500})
            assert json.loads(await anext(lines))["proxyId"] == "pricing-1"
            assert other.targets == []  # another service's proxy is never tapped
        # The operator left: every proxy's tap is closed.
        await eventually(lambda: first.closed == 1 and second.closed == 1, "taps closed")
    finally:
        for fake in (first, second, other):
            await fake.close()


async def test_tap_errors_are_answered_in_the_api_error_shape(served: Served) -> None:
    viewer = await served.token("viewer")
    auth = {"authorization": f"Bearer {viewer}"}
    async with httpx.AsyncClient(base_url=served.url, timeout=DEADLINE) as client:
        unknown = await client.get("/v1/tap", params={"service": "nothing"}, headers=auth)
        assert unknown.status_code == 404
        assert "no proxy of service 'nothing'" in unknown.json()["error"]["message"]
        await served.register("pricing-0", "pricing", "127.0.0.1:1")
        bad = await client.get(
            "/v1/tap", params={"service": "pricing", "status": "7xx"}, headers=auth
        )
        assert bad.status_code == 422
        error = bad.json()["error"]
        assert error["code"] == "invalid"
        assert error["details"][0]["path"] == "query.status"
        anonymous = await client.get("/v1/tap", params={"service": "pricing"})
        assert anonymous.status_code == 401


async def test_a_merger_counts_what_a_slow_reader_lost() -> None:
    fake = await FakeAdmin().start()
    try:
        reg = Registration(proxy_id="p-0", service="s", inbound="127.0.0.1:1", admin=fake.address)
        merger = api_tap.TapMerger(lambda: [reg], {}, refresh=0.05, max_queued=3)
        merger.follow_new()
        await eventually(lambda: fake.writers, "the proxy tapped")
        for i in range(10):
            fake.send({"n": i})
        # Nobody reads yet: three lines wait, the rest are counted, not kept.
        await eventually(lambda: merger.dropped == 7, "drops counted")
        stream = merger.stream()
        chunk = await asyncio.wait_for(anext(stream), DEADLINE)
        assert [json.loads(line) for line in chunk.splitlines()] == [
            {"proxyId": "p-0", "n": 0},
            {"proxyId": "p-0", "n": 1},
            {"proxyId": "p-0", "n": 2},
            {"tapDropped": 7},
        ]
        await stream.aclose()
        await eventually(lambda: fake.closed == 1, "the proxy's tap closed")
    finally:
        await fake.close()


async def _app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The service's app behind the sidecar: 200 to every request."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    writer.close()


async def test_a_real_sidecar_tap_reaches_the_operator(served: Served) -> None:
    """A real DataPlane and its admin listener: a request the sidecar received inbound comes
    out of `/v1/tap` as its access-log record, with the proxy's id."""
    from gossamer import snapshot as snap
    from gossamer.proxy.admin import AdminServer
    from gossamer.proxy.dataplane import DataPlane, ProxySettings
    from gossamer.telemetry.metrics import Registry as Metrics

    app = await asyncio.start_server(_app, "127.0.0.1", 0)
    app_port = app.sockets[0].getsockname()[1]
    metrics = Metrics()
    dp = DataPlane(
        asyncio.get_running_loop(),
        ProxySettings(inbound="127.0.0.1:0", outbound="127.0.0.1:0"),
        metrics,
    )
    bound = await dp.start()
    dp.apply(
        snap.seal(
            snap.Snapshot(
                proxy=snap.ProxyIdentity(proxy_id="pricing-0", service="pricing"),
                listeners=snap.Listeners(inbound=snap.InboundListener(app_port=app_port)),
            )
        )
    )

    class View:
        def readiness(self) -> tuple[bool, str]:
            return True, ""

        def config_document(self) -> dict[str, object]:
            return {}

        def request_quit(self) -> None:
            return None

    admin = AdminServer(View(), metrics, taps=dp.taps)
    host, port = await admin.start("127.0.0.1", 0)
    try:
        await served.register("pricing-0", "pricing", f"{host}:{port}")
        async with (
            httpx.AsyncClient(base_url=served.url, timeout=DEADLINE) as client,
            client.stream(
                "GET",
                "/v1/tap",
                params={"service": "pricing", "path": "/prices"},
                headers={"authorization": f"Bearer {served.admin_token}"},
            ) as resp,
        ):
            assert resp.status_code == 200
            await eventually(lambda: dp.inbound.tap is not None, "the sidecar tapped")
            ihost, iport = bound.inbound.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(ihost, int(iport))
            for target in (b"/other", b"/prices/1"):
                writer.write(b"GET %s HTTP/1.1\r\nhost: pricing\r\n\r\n" % target)
                await reader.readuntil(b"ok")
            writer.close()
            doc = json.loads(await anext(resp.aiter_lines()))
            assert doc["proxyId"] == "pricing-0"
            assert (doc["direction"], doc["method"], doc["path"]) == ("inbound", "GET", "/prices/1")
            assert doc["status"] == 200
            assert doc["upstreamEndpoint"] == f"127.0.0.1:{app_port}"
        await eventually(lambda: dp.inbound.tap is None, "the sidecar's tap closed")
    finally:
        await admin.close()
        await dp.drain(0.0)
        app.close()
