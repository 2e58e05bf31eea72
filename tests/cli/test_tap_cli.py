"""`gossamer tap` against a real control plane (HTTPS on 127.0.0.1:0) that merges the taps of
proxy admin listeners, here small NDJSON servers on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_ca_cli import Served, serve

from gossamer.cli.main import main
from gossamer.cli.tap import format_record
from gossamer.control import api_tap
from gossamer.control.registry import Registration

DEADLINE = 10.0


class FakeAdmin:
    """A proxy admin listener's /tap: answers 200 and streams the lines given to `send`."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> FakeAdmin:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.targets.append(head.split(b" ", 2)[1].decode())
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\r\n")
        self.writers.append(writer)
        await reader.read()
        writer.close()

    def send(self, record: dict[str, Any]) -> None:
        for writer in self.writers:
            writer.write(json.dumps(record).encode() + b"\n")

    async def tapped(self, count: int = 1) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + DEADLINE
        while len(self.writers) < count:
            assert loop.time() < end, "the control plane did not open the proxy's tap"
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        assert self.server is not None
        for writer in self.writers:
            writer.close()
        self.server.close()
        await self.server.wait_closed()


def record(path: str, status: int = 200, method: str = "GET", ms: float = 1.0) -> dict[str, Any]:
    return {
        "time": "2026-11-22T03:27:41.503Z",
        "direction": "inbound",
        "method": method,
        "authority": "pricing",
        "path": path,
        "status": status,
        "flags": "timeout" if status == 504 else None,
        "durationMs": ms,
        "upstreamEndpoint": "127.0.0.1:8080",
        "bytesReceived": 5,
        "bytesSent": 7,
        "requestId": "rid-" + path,
        "sourceIdentity": "spiffe://gossamer.local/ns/default/sa/web",
    }


@pytest.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    monkeypatch.setattr(api_tap, "TAP_REFRESH", 0.1)
    async with serve(tmp_path / "cp") as s:
        monkeypatch.setenv("GOSSAMER_TOKEN", s.cp.admin_token_file.read_text().strip())
        monkeypatch.setenv("GOSSAMER_CA_BUNDLE", str(s.cp.ca.bundle_path))
        monkeypatch.setenv("GOSSAMER_STATE_DIR", str(tmp_path / "no-mesh"))
        yield s


@pytest.fixture
async def pricing(served: Served) -> AsyncIterator[FakeAdmin]:
    fake = await FakeAdmin().start()
    await served.cp.registry.register(
        Registration(
            proxy_id="pricing-0",
            service="pricing",
            inbound="127.0.0.1:1",
            admin=fake.address,
            app_port=8080,
            ready=True,
        )
    )
    yield fake
    await fake.close()


def run_cli(served: Served, *args: str) -> asyncio.Task[int]:
    """The CLI in a thread (it runs its own event loop) while this loop serves the API."""
    return asyncio.create_task(asyncio.to_thread(main, [*args, "--control-plane", served.url]))


async def test_tap_prints_a_line_per_request_until_max(
    served: Served, pricing: FakeAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = run_cli(served, "tap", "pricing", "--status", "5xx", "--max", "2")
    await pricing.tapped()
    assert pricing.targets == ["/tap?status=5xx"]
    for path in ("/a", "/b", "/c"):
        pricing.send(record(path, 504))
    code = await asyncio.wait_for(cli, DEADLINE)
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0] == format_record({**record("/a", 504), "proxyId": "pricing-0"})
    assert "pricing-0 inbound  GET pricing/a -> 504 [timeout] 1.000ms" in lines[0]
    assert "src=spiffe://gossamer.local/ns/default/sa/web" in lines[0]
    assert "/b" in lines[1]


async def test_tap_json_prints_the_records(
    served: Served, pricing: FakeAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = run_cli(served, "tap", "pricing", "--json", "--max", "1", "--direction", "inbound")
    await pricing.tapped()
    assert pricing.targets == ["/tap?direction=inbound"]
    pricing.send(record("/x?y=1", 200, "POST"))
    code = await asyncio.wait_for(cli, DEADLINE)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out) == {"proxyId": "pricing-0", **record("/x?y=1", 200, "POST")}


async def test_tap_stops_after_max_seconds_with_no_traffic(
    served: Served, pricing: FakeAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.wait_for(
        run_cli(served, "tap", "pricing", "--max-seconds", "0.3"), DEADLINE
    )
    out, err = capsys.readouterr()
    assert (code, out, err) == (0, "", "")


async def test_tap_errors_are_one_clear_line(
    served: Served, pricing: FakeAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await asyncio.wait_for(run_cli(served, "tap", "nothing", "--max", "1"), DEADLINE)
    _, err = capsys.readouterr()
    assert code == 1
    assert "gossamer tap: no proxy of service 'nothing' is registered" in err
    code = await asyncio.wait_for(
        run_cli(served, "tap", "pricing", "--status", "abc", "--max", "1"), DEADLINE
    )
    _, err = capsys.readouterr()
    assert code == 1
    assert "status 'abc' is neither a status code" in err
    assert "Traceback" not in err
