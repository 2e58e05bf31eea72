"""The real `gossamer proxy` process: started as a subprocess, driven through its ready file and
admin listener, stopped with SIGTERM."""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from test_agent_fakes import make_snapshot

sys.path.insert(0, str(Path(__file__).parent.parent / "control"))
from api_peers import live_control_plane

from gossamer import snapshot as snapshot_mod
from gossamer.cli.proxy import BOOTSTRAP_TOKEN_ENV
from gossamer.proxy.agent import http_request
from gossamer.proxy.cache import SnapshotCache

DEADLINE = 15.0
PROXY = "web-0"

needs_dataplane = pytest.mark.skipif(
    not hasattr(importlib.import_module("gossamer.proxy.dataplane"), "DataPlane"),
    reason="gossamer.proxy.dataplane.DataPlane is not built yet",
)


def start_proxy(*args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.Popen(
        [sys.executable, "-m", "gossamer.cli.main", "proxy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )


def wait_ready_file(proc: subprocess.Popen[bytes], path: Path) -> dict[str, Any]:
    """Wait for the ready file (or the process's death) with a deadline."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if path.exists():
            doc: dict[str, Any] = msgspec.json.decode(path.read_bytes())
            return doc
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(
                f"proxy exited with {proc.returncode} before its ready file:\n{err.decode()}"
            )
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no ready file at {path} within {DEADLINE}s")


def get(url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("proxy did not exit after SIGTERM")
    return proc.returncode, err.decode()


@pytest.fixture
def snapshot_file(tmp_path: Path) -> Path:
    path = tmp_path / "snapshot.json"
    path.write_bytes(snapshot_mod.encode(make_snapshot(PROXY)))
    return path


@pytest.mark.integration
@needs_dataplane
def test_static_proxy_runs_and_stops_on_sigterm(tmp_path: Path, snapshot_file: Path) -> None:
    """--snapshot FILE: ready file with bound addresses, /ready 200, /config shows the
    snapshot, SIGTERM drains and exits 0 with no traceback."""
    ready_file = tmp_path / "ready.json"
    proc = start_proxy(
        "--service", "web", "--proxy-id", PROXY, "--snapshot", str(snapshot_file),
        "--ready-file", str(ready_file), "--drain-timeout", "1",
    )  # fmt: skip
    try:
        doc = wait_ready_file(proc, ready_file)
        assert doc["proxyId"] == PROXY
        assert doc["pid"] == proc.pid
        for key in ("inbound", "outbound", "admin"):
            host, _, port = doc[key].rpartition(":")
            assert host == "127.0.0.1"
            assert int(port) > 0
        admin = f"http://{doc['admin']}"
        assert get(f"{admin}/ready") == (200, b"ready\n")
        status, body = get(f"{admin}/config")
        assert status == 200
        config = msgspec.json.decode(body)
        assert config["version"] == make_snapshot(PROXY).version
        assert config["snapshot"]["proxy"]["proxyId"] == PROXY
        status, body = get(f"{admin}/metrics")
        assert status == 200
        assert b"gossamer_proxy_snapshot_info{" in body
    finally:
        if proc.poll() is None:
            code, err = stop(proc)
    assert code == 0, err
    assert "Traceback" not in err
    assert "draining" in err


@pytest.mark.integration
@needs_dataplane
def test_app_down_means_not_ready(tmp_path: Path, snapshot_file: Path) -> None:
    """With --app-port on a closed port the proxy is up but /ready is 503 naming the app."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        app_port = s.getsockname()[1]
    ready_file = tmp_path / "ready.json"
    proc = start_proxy(
        "--service", "web", "--proxy-id", PROXY, "--snapshot", str(snapshot_file),
        "--ready-file", str(ready_file), "--app-port", str(app_port),
        "--readiness-path", "/healthz",
    )  # fmt: skip
    try:
        doc = wait_ready_file(proc, ready_file)
        deadline = time.monotonic() + DEADLINE
        while True:
            status, body = get(f"http://{doc['admin']}/ready")
            if b"unreachable" in body or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # the first probe runs within a second of start
        assert status == 503
        assert body.startswith(f"not ready: app 127.0.0.1:{app_port} unreachable".encode())
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "Traceback" not in err


@pytest.mark.integration
@needs_dataplane
def test_bad_snapshot_file_exits_1_with_one_line(tmp_path: Path) -> None:
    """A broken --snapshot file is one clear log line and exit status 1, no traceback."""
    path = tmp_path / "broken.json"
    path.write_bytes(b"{nope")
    proc = start_proxy("--service", "web", "--proxy-id", PROXY, "--snapshot", str(path))
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1
    assert f"--snapshot {path}: not a valid snapshot" in err.decode()
    assert "Traceback" not in err.decode()


def test_bad_flags_are_usage_errors() -> None:
    """Flag errors exit 2 with argparse's message naming the flag."""
    proc = start_proxy("--service", "web", "--proxy-id", PROXY, "--control-plane", "ftp://cp")
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2
    assert "--control-plane: control plane URL 'ftp://cp' must start with https://" in err.decode()
    proc = start_proxy("--service", "web", "--proxy-id", PROXY, "--snapshot", "x", "--label", "x")
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2
    assert "argument --label: 'x' is not k=v" in err.decode()


def test_proxy_does_not_import_heavy_modules() -> None:
    """The sidecar's import graph has no pydantic, FastAPI, httpx, control or config, and no
    `cryptography` (~10 MiB of RSS) until it really uses mTLS."""
    code = (
        "import sys\n"
        "from gossamer.cli.main import build_parser\n"
        "build_parser('proxy')\n"
        "import gossamer.proxy.main, gossamer.proxy.agent, gossamer.proxy.admin\n"
        "import gossamer.proxy.dataplane, gossamer.proxy.mtls\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pydantic', 'fastapi', 'httpx', 'uvicorn', 'cryptography') or "
        "m.startswith(('gossamer.control', 'gossamer.config')))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=30)
    assert out.stdout.decode().strip() == "[]"


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Re-check `check` every 20 ms until it holds; fail after DEADLINE naming `what`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        if await check():
            return
        if loop.time() > deadline:
            pytest.fail(f"{what} did not happen within {DEADLINE}s")
        await asyncio.sleep(0.02)


async def wait_ready_file_async(proc: asyncio.subprocess.Process, path: Path) -> dict[str, Any]:
    async def written() -> bool:
        assert proc.returncode is None, "proxy exited before writing its ready file"
        return await asyncio.to_thread(path.exists)

    await eventually(written, f"ready file {path}")
    doc: dict[str, Any] = msgspec.json.decode(await asyncio.to_thread(path.read_bytes))
    return doc


def _sync(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def run() -> bool:
        return check()

    return run


async def start_proxy_async(
    *args: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()} | (env or {})
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gossamer.cli.main", "proxy", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip


async def sigterm(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(DEADLINE):
        _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def admin_get(admin: str, path: str) -> tuple[int, bytes]:
    host, _, port = admin.rpartition(":")
    return await http_request(host, int(port), "GET", path, time_limit=5.0)


@pytest.mark.integration
@needs_dataplane
async def test_real_proxy_with_control_plane_then_from_cache(tmp_path: Path) -> None:
    """The real process against the real control plane: its SVID from the bootstrap token in its
    environment, registration and ACK over mTLS, deregistration on SIGTERM; restarted with the
    control plane gone (no token: the stored SVID) it runs from its cached snapshot."""
    state = tmp_path / "state"
    ready_file = tmp_path / "ready.json"
    async with live_control_plane(tmp_path / "cp") as live:
        url = live.url
        flags = (
            "--service", "web", "--proxy-id", PROXY, "--control-plane", url,
            "--ca-bundle", str(live.cp.ca.bundle_path),
            "--state-dir", str(state), "--ready-file", str(ready_file), "--drain-timeout", "1",
        )  # fmt: skip
        token = await live.bootstrap_token("web")
        proc = await start_proxy_async(*flags, env={BOOTSTRAP_TOKEN_ENV: token})
        try:
            doc = await wait_ready_file_async(proc, ready_file)

            def acked() -> bool:
                return any(
                    reg.proxy_id == PROXY and state_ == "ACK"
                    for reg, _, state_ in live.cp.distributor.statuses()
                )

            await eventually(_sync(acked), "an ACK over mTLS")
            reg = live.cp.registry.get(PROXY)
            assert reg is not None
            assert reg.inbound == doc["inbound"]
            assert reg.identity == "spiffe://gossamer.local/ns/default/sa/web"
            assert await admin_get(doc["admin"], "/ready") == (200, b"ready\n")
            config = msgspec.json.decode((await admin_get(doc["admin"], "/config"))[1])
            assert config["svid"]["spiffeId"] == reg.identity
        finally:
            code, err = await sigterm(proc)
        assert code == 0, err
        assert "Traceback" not in err
        assert token.split(".", 1)[1] not in err
        await eventually(_sync(lambda: live.cp.registry.get(PROXY) is None), "deregistered")
        good = SnapshotCache(state).load()
        assert good is not None

    # Static stability: the control plane is gone; the cached snapshot is used after the deadline.
    ready_file.unlink()
    proc = await start_proxy_async(*flags)
    try:
        doc = await wait_ready_file_async(proc, ready_file)
        admin = doc["admin"]

        async def ready() -> bool:
            return (await admin_get(admin, "/ready"))[0] == 200

        await eventually(ready, "/ready 200 from the cached snapshot")
        config = msgspec.json.decode((await admin_get(doc["admin"], "/config"))[1])
        assert (config["version"], config["source"]) == (good.version, "cache")
        assert config["controlPlane"] == {"url": url, "connected": False}
    finally:
        code, err = await sigterm(proc)
    assert code == 0, err
    assert "Traceback" not in err
    assert "using the stored SVID" in err
    assert "control plane unreachable" in err
    assert err.count("control plane unreachable") == 1  # one line per outage, not per retry
