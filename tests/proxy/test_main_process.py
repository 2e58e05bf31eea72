"""Tests for the proxy process wiring: static file, cache fallback, ready file, drain."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import msgspec
import pytest
from test_agent_fakes import FakeControlPlane, FakeDataPlane, make_snapshot

from gossamer import snapshot as snapshot_mod
from gossamer.proxy.agent import http_request
from gossamer.proxy.cache import SnapshotCache
from gossamer.proxy.main import ProxyOptions, ProxyProcess, StartupError, split_address
from gossamer.telemetry.metrics import Registry

PROXY = "web-0"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def make_process(options: ProxyOptions) -> tuple[ProxyProcess, FakeDataPlane]:
    dataplane = FakeDataPlane()

    def factory(
        loop: asyncio.AbstractEventLoop, opts: ProxyOptions, registry: Registry
    ) -> FakeDataPlane:
        return dataplane

    return ProxyProcess(options, factory), dataplane


async def admin_get(proxy: ProxyProcess, path: str) -> tuple[int, bytes]:
    host, port = split_address(proxy.addresses["admin"], "admin")
    return await http_request(host, port, "GET", path, time_limit=5.0)


async def test_static_snapshot_file(tmp_path: Path) -> None:
    """--snapshot FILE: applied at start, ready without an app, /config shows it, ready file
    names the bound addresses, stop drains the data plane."""
    snap = make_snapshot(PROXY)
    path = tmp_path / "snap.json"
    path.write_bytes(snapshot_mod.encode(snap))
    ready_file = tmp_path / "ready.json"
    proxy, dataplane = make_process(
        ProxyOptions(service="web", proxy_id=PROXY, snapshot_file=path, ready_file=ready_file)
    )
    await proxy.start()
    try:
        assert dataplane.applied == [snap]
        doc = msgspec.json.decode(ready_file.read_bytes())
        assert doc["proxyId"] == PROXY
        assert doc["inbound"] == "127.0.0.1:1"
        assert doc["outbound"] == "127.0.0.1:2"
        assert doc["admin"] == proxy.addresses["admin"]
        assert isinstance(doc["pid"], int)
        assert await admin_get(proxy, "/ready") == (200, b"ready\n")
        status, body = await admin_get(proxy, "/config")
        config = msgspec.json.decode(body)
        assert status == 200
        assert config["version"] == snap.version
        assert config["source"] == "file"
        assert config["status"] == "ACK"
        assert config["snapshot"] == snapshot_mod.to_builtins(snap)
    finally:
        await proxy.stop()
    assert dataplane.drained == 5.0
    assert proxy.readiness() == (False, "draining")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        (b"[1, 2]", "not a valid snapshot: Expected `object`, got `array`"),
        (
            snapshot_mod.encode(make_snapshot(PROXY, cluster="bad.default")),
            "cannot apply: cluster bad.default",
        ),
    ],
)
async def test_bad_snapshot_file_is_a_clear_error(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    """A missing, malformed or unappliable --snapshot file stops start-up with one clear line."""
    path = tmp_path / "snap.json"
    if content is not None:
        path.write_bytes(content)
    proxy, _ = make_process(ProxyOptions(service="web", proxy_id=PROXY, snapshot_file=path))
    with pytest.raises(StartupError) as info:
        await proxy.start()
    await proxy.stop()
    assert str(info.value).startswith(f"--snapshot {path}: ")
    assert message in str(info.value)


async def test_control_plane_down_starts_from_cache(tmp_path: Path) -> None:
    """No control plane within the deadline and a cache on disk: run the cached snapshot, keep
    trying, and once the control plane comes up register and ACK (no re-apply of the same one)."""
    snap = make_snapshot(PROXY)
    SnapshotCache(tmp_path).save(snap)
    port = closed_port()
    proxy, dataplane = make_process(
        ProxyOptions(
            service="web",
            proxy_id=PROXY,
            control_plane=f"http://127.0.0.1:{port}",
            state_dir=tmp_path,
            cache_deadline=0.2,
        )
    )
    await proxy.start()
    try:
        assert proxy.holder is not None
        assert proxy.readiness()[0] is False
        async with asyncio.timeout(5):
            await proxy.holder.wait_installed()
        assert proxy.holder.source == "cache"
        assert dataplane.applied == [snap]
        assert await admin_get(proxy, "/ready") == (200, b"ready\n")

        cp = FakeControlPlane()
        await cp.set_snapshot(snapshot_mod.encode(snap), snap.version)
        await cp.start(port)
        try:
            await cp.wait_for(lambda: bool(cp.acks), "ack from the cached proxy")
            assert cp.acks[0]["status"] == "ACK"
            assert cp.registrations[0][1]["ready"] is True
            assert dataplane.applied == [snap]
            assert proxy.holder.source == "control-plane"
            await proxy.stop()
            assert cp.deregistered == [PROXY]
        finally:
            await cp.stop()
    finally:
        await proxy.stop()


async def test_corrupt_cache_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A damaged cache is logged and ignored: the proxy stays not ready, waiting."""
    (tmp_path / "last-snapshot.json").write_bytes(b"{garbage")
    proxy, dataplane = make_process(
        ProxyOptions(
            service="web",
            proxy_id=PROXY,
            control_plane=f"http://127.0.0.1:{closed_port()}",
            state_dir=tmp_path,
            cache_deadline=0.05,
        )
    )
    with caplog.at_level(logging.INFO, logger="gossamer.proxy"):
        await proxy.start()
        try:
            task = proxy._tasks[-1]
            async with asyncio.timeout(5):
                await task
            assert dataplane.applied == []
            ready, why = proxy.readiness()
            assert not ready
            assert why.startswith("no snapshot yet (waiting for http://127.0.0.1:")
        finally:
            await proxy.stop()
    assert any(
        "ignoring snapshot cache" in r.message and "last-snapshot.json" in r.message
        for r in caplog.records
    )
    assert not any(r.exc_info for r in caplog.records)


def test_split_address() -> None:
    """host:port splits; anything else names the flag."""
    assert split_address("127.0.0.1:0", "--admin") == ("127.0.0.1", 0)
    assert split_address("[::1]:80", "--admin") == ("::1", 80)
    with pytest.raises(ValueError, match="--admin: 'nope' is not host:port"):
        split_address("nope", "--admin")


async def test_the_admin_taps_the_real_data_plane(tmp_path: Path) -> None:
    """`gossamer proxy` hands its data plane's taps to the admin listener once it runs."""
    path = tmp_path / "snap.json"
    path.write_bytes(snapshot_mod.encode(make_snapshot(PROXY)))
    proxy = ProxyProcess(
        ProxyOptions(
            service="web",
            proxy_id=PROXY,
            snapshot_file=path,
            inbound="127.0.0.1:0",
            outbound="127.0.0.1:0",
            admin="127.0.0.1:0",
        )
    )
    try:
        await proxy.start()
        assert proxy.admin.taps is not None
        assert proxy.admin.taps is getattr(proxy._dataplane, "taps", None)
    finally:
        await proxy.stop()
