"""The proxy's identity against a REAL control plane (ControlPlane + uvicorn on 127.0.0.1:0, the
mTLS listener): first SVID with a bootstrap token, restart from the stored SVID, renewals,
root-rotation triggers, refused tokens."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from test_agent_fakes import FakeDataPlane

from gossamer import snapshot as snapshot_mod
from gossamer.proxy.agent import http_request
from gossamer.proxy.main import ProxyOptions, ProxyProcess, split_address
from gossamer.security.tls import SvidFiles
from gossamer.snapshot import MeshTls, ProxyIdentity, Snapshot
from gossamer.telemetry.metrics import Registry

sys.path.insert(0, str(Path(__file__).parent.parent / "control"))
from api_peers import LiveControlPlane, eventually, live_control_plane

PROXY = "web-0"
WEB = "spiffe://gossamer.local/ns/default/sa/web"


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[LiveControlPlane]:
    async with live_control_plane(tmp_path / "cp") as plane:
        yield plane


@pytest.fixture
async def short_lived(tmp_path: Path) -> AsyncIterator[LiveControlPlane]:
    async with live_control_plane(tmp_path / "cp", svid_ttl=dt.timedelta(seconds=3)) as plane:
        yield plane


def options(live: LiveControlPlane, state: Path, token: str | None) -> ProxyOptions:
    return ProxyOptions(
        service="web",
        proxy_id=PROXY,
        control_plane=live.url,
        ca_bundle=live.cp.ca.bundle_path,
        state_dir=state,
        bootstrap_token=token,
        poll_wait=1.0,
        cache_deadline=5.0,
    )


def make_process(opts: ProxyOptions) -> tuple[ProxyProcess, FakeDataPlane]:
    dataplane = FakeDataPlane()

    def factory(
        loop: asyncio.AbstractEventLoop, o: ProxyOptions, registry: Registry
    ) -> FakeDataPlane:
        return dataplane

    return ProxyProcess(opts, factory), dataplane


async def admin_get(proxy: ProxyProcess, path: str) -> tuple[int, bytes]:
    host, port = split_address(proxy.addresses["admin"], "admin")
    return await http_request(host, port, "GET", path, time_limit=5.0)


async def test_first_svid_with_a_token_then_mtls(
    live: LiveControlPlane, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Not ready before its SVID; then the SVID goes to the data plane, the proxy registers over
    mTLS, reports its SVID, gets its snapshot and is ready. /config shows the facts, never the
    key; the token is in no log line."""
    caplog.set_level(logging.INFO)
    token = await live.bootstrap_token("web")
    state = tmp_path / "proxy"
    proxy, dataplane = make_process(options(live, state, token))
    assert not proxy.readiness()[0]
    await proxy.start()
    try:
        await eventually(lambda: proxy.readiness()[0], "the proxy ready")
        (files,) = dataplane.svids
        assert isinstance(files, SvidFiles)
        assert files.key.stat().st_mode & 0o077 == 0
        reg = live.cp.registry.get(PROXY)
        assert reg is not None
        assert reg.identity == WEB
        await eventually(
            lambda: (r := live.cp.registry.get(PROXY)) is not None and r.svid is not None,
            "the SVID reported",
        )
        reg = live.cp.registry.get(PROXY)
        assert reg is not None
        assert reg.svid is not None
        assert reg.svid.spiffe_id == WEB
        assert reg.svid.signer == live.cp.ca.signer_fingerprint()
        status, body = await admin_get(proxy, "/config")
        assert status == 200
        doc = msgspec.json.decode(body)
        assert doc["svid"]["spiffeId"] == WEB
        assert doc["svid"]["serial"] == reg.svid.serial
        assert set(doc["svid"]) == {"spiffeId", "serial", "notAfter", "signer"}
        assert b"PRIVATE KEY" not in body
        status, metrics = await admin_get(proxy, "/metrics")
        assert b"gossamer_proxy_svid_expiry_timestamp_seconds" in metrics
        assert b'gossamer_proxy_svid_renewals_total{result="ok"} 1' in metrics
    finally:
        await proxy.stop()
    secret = token.split(".", 1)[1]
    assert all(secret not in r.getMessage() for r in caplog.records)
    assert "got an SVID for " + WEB in caplog.text


async def test_restart_uses_the_stored_svid_without_a_token(
    live: LiveControlPlane, tmp_path: Path
) -> None:
    state = tmp_path / "proxy"
    first, _ = make_process(options(live, state, await live.bootstrap_token("web")))
    await first.start()
    try:
        await eventually(lambda: first.readiness()[0], "the first run ready")
        assert first.identity is not None
        assert first.identity.current is not None
        serial = first.identity.current.serial
    finally:
        await first.stop()
    again, dataplane = make_process(options(live, state, None))
    await again.start()
    try:
        await eventually(lambda: again.readiness()[0], "the restarted proxy ready")
        assert again.identity is not None
        assert again.identity.current is not None
        assert again.identity.current.serial == serial
        assert len(dataplane.svids) == 1
    finally:
        await again.stop()


async def test_a_spent_token_stops_the_proxy_with_one_clear_line(
    live: LiveControlPlane, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = await live.bootstrap_token("web")
    first, _ = make_process(options(live, tmp_path / "a", token))
    await first.start()
    await eventually(lambda: first.readiness()[0], "the first proxy ready")
    await first.stop()
    # Same token, a state dir without an SVID: the control plane refuses it.
    proxy, dataplane = make_process(options(live, tmp_path / "b", token))
    await proxy.start()
    try:
        await asyncio.wait_for(proxy.wait_quit(), 10)
        assert proxy.exit_code == 1
        assert dataplane.svids == []
        refused = [r for r in caplog.records if "refused the bootstrap token" in r.getMessage()]
        assert len(refused) == 1
        assert "(401)" in refused[0].getMessage()
        assert token.split(".", 1)[1] not in caplog.text
    finally:
        await proxy.stop()


async def test_no_token_and_no_svid_is_a_startup_error(
    live: LiveControlPlane, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy, _ = make_process(options(live, tmp_path / "p", None))
    await proxy.start()
    try:
        await asyncio.wait_for(proxy.wait_quit(), 10)
        assert proxy.exit_code == 1
        assert "no usable SVID" in caplog.text
        assert "GOSSAMER_BOOTSTRAP_TOKEN" in caplog.text
    finally:
        await proxy.stop()


async def test_renews_at_half_life_and_serves_meanwhile(
    short_lived: LiveControlPlane, tmp_path: Path
) -> None:
    """3-second SVIDs: renewed about every 1.5 s over mTLS, each one handed to the data plane and
    reported; the proxy stays ready throughout."""
    live = short_lived
    proxy, dataplane = make_process(
        options(live, tmp_path / "p", await live.bootstrap_token("web"))
    )
    await proxy.start()
    try:
        await eventually(lambda: proxy.readiness()[0], "ready")
        await eventually(lambda: len(dataplane.svids) >= 3, "two renewals", deadline=10)
        assert proxy.readiness()[0]
        identity = proxy.identity
        assert identity is not None

        def reported_current() -> bool:
            reg = live.cp.registry.get(PROXY)
            current = identity.current
            return (
                reg is not None
                and reg.svid is not None
                and current is not None
                and reg.svid.serial == current.serial
            )

        # Heartbeats carry the renewed SVID: the control plane sees the latest one.
        await eventually(reported_current, "the latest SVID reported", deadline=10)
    finally:
        await proxy.stop()


async def test_a_new_signer_renews_at_once_and_a_new_bundle_is_trusted(
    live: LiveControlPlane, tmp_path: Path
) -> None:
    proxy, dataplane = make_process(
        options(live, tmp_path / "p", await live.bootstrap_token("web"))
    )
    await proxy.start()
    try:
        await eventually(lambda: proxy.readiness()[0], "ready")
        identity = proxy.identity
        assert identity is not None
        assert identity.current is not None
        bundle = live.cp.ca.bundle_pem().decode()
        snap = Snapshot(
            proxy=ProxyIdentity(proxy_id=PROXY, service="web"),
            tls=MeshTls(mode="STRICT", trust_bundle=bundle, signer="0" * 64),
        )
        identity.on_snapshot(snapshot_mod.seal(snap))
        # The signer differs from the current SVID's: renewed at once (24 h SVIDs otherwise).
        await eventually(lambda: len(dataplane.svids) == 2, "the renewal after a signer change")
        # A bundle with another root: the agent's context follows it (and still verifies the
        # control plane, whose root is still in it).
        from gossamer.security.ca import CertificateAuthority

        extra = CertificateAuthority.create_root("gossamer.local").cert_pem().decode()
        before = identity.tls()
        identity.on_snapshot(
            snapshot_mod.seal(
                Snapshot(
                    proxy=ProxyIdentity(proxy_id=PROXY, service="web"),
                    tls=MeshTls(mode="STRICT", trust_bundle=bundle + extra, signer=""),
                )
            )
        )
        assert len(identity.bundle) == 2
        assert identity.tls() is not before
        # Calls to the control plane still work with the new context.
        assert proxy.agent is not None
        assert await proxy.agent._heartbeat() is True
    finally:
        await proxy.stop()
