"""A proxy that missed a root rotation, against a REAL control plane (ControlPlane + uvicorn on
127.0.0.1:0 with the mTLS listener): it re-reads `--ca-bundle` when the control plane's
certificate stops verifying, and ends its run when the control plane will never accept its SVID."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_agent_fakes import FakeDataPlane

from gossamer import snapshot as snapshot_mod
from gossamer.proxy.agent import Agent, AgentMetrics, Registration, SnapshotHolder, parse_base_url
from gossamer.proxy.identity import Identity, IdentityMetrics, LockedOut, read_bundle
from gossamer.security.ca import CertificateAuthority
from gossamer.snapshot import MeshTls, ProxyIdentity, Snapshot
from gossamer.telemetry.metrics import Registry

sys.path.insert(0, str(Path(__file__).parent.parent / "control"))
from api_peers import DEADLINE, LiveControlPlane, eventually, live_control_plane

PROXY = "web-0"
TD = "gossamer.local"


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[LiveControlPlane]:
    async with live_control_plane(tmp_path / "cp") as plane:
        yield plane


class Rig:
    """An Identity and Agents wired the way `gossamer proxy` wires them, `--ca-bundle` a file."""

    def __init__(self, live: LiveControlPlane, state: Path, ca_file: Path, token: str) -> None:
        self.live = live
        state.mkdir(mode=0o700)
        self.dataplane = FakeDataPlane()
        self.registry = Registry()
        host, port, prefix = parse_base_url(live.url)
        self.identity = Identity(
            live.url,
            host,
            port,
            read_bundle(ca_file),
            state,
            "default",
            "web",
            token=token,
            on_svid=self.dataplane.set_svid,
            metrics=IdentityMetrics(self.registry),
            prefix=prefix,
            ca_bundle_path=ca_file,
            backoff=lambda failures: 0.01,
        )
        self.holder = SnapshotHolder(self.dataplane.apply, AgentMetrics(self.registry))

    def agent(self) -> Agent:
        return Agent(
            self.live.url,
            Registration(
                proxy_id=PROXY,
                service="web",
                inbound="127.0.0.1:1001",
                outbound="127.0.0.1:1002",
                admin="127.0.0.1:1003",
                app_port=8080,
            ),
            self.holder,
            is_ready=lambda: True,
            poll_wait=1.0,
            request_timeout=DEADLINE,
            backoff_cap=0.05,
            tls=self.identity.tls,
            svid_report=self.identity.report,
            on_snapshot=self.identity.on_snapshot,
        )


def stranger_root() -> bytes:
    return CertificateAuthority.create_root(TD).cert_pem()


async def test_a_stale_bundle_is_healed_from_the_ca_bundle_file(
    live: LiveControlPlane, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The roots the proxy follows no longer include the control plane's: the call that fails
    verification re-reads --ca-bundle, trusts it with the last snapshot's roots, and succeeds."""
    caplog.set_level(logging.INFO)
    rig = Rig(live, tmp_path / "p", live.cp.ca.bundle_path, await live.bootstrap_token("web"))
    await rig.identity.acquire()
    agent = rig.agent()
    assert await agent._register()
    stale = Snapshot(
        proxy=ProxyIdentity(proxy_id=PROXY, service="web"),
        tls=MeshTls(mode="STRICT", trust_bundle=stranger_root().decode(), signer=""),
    )
    rig.identity.on_snapshot(snapshot_mod.seal(stale))
    assert len(rig.identity.bundle) == 1
    assert await agent._heartbeat() is True
    assert len(rig.identity.bundle) == 2
    assert agent.connected
    assert "the control plane's certificate did not verify; trusting 2 root(s)" in caplog.text
    assert rig.identity.locked_out == ""


async def test_a_first_svid_after_the_ca_bundle_file_changed(
    live: LiveControlPlane, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Started with a bundle that does not hold the control plane's root; by the first call the
    file holds it: the bootstrap succeeds at once, without a failure logged."""
    ca_file = tmp_path / "ca-bundle.pem"
    ca_file.write_bytes(stranger_root())
    rig = Rig(live, tmp_path / "p", ca_file, await live.bootstrap_token("web"))
    ca_file.write_bytes(live.cp.ca.bundle_pem())
    info = await rig.identity.acquire()
    assert info.spiffe_id == "spiffe://gossamer.local/ns/default/sa/web"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_missed_root_rotation_ends_the_run_with_one_clear_error(
    live: LiveControlPlane, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The proxy is away while the mesh rotates its root and retires the old one. Back, the
    control plane's certificate is from the new root (healed from --ca-bundle), but its own SVID
    is from the retired root: the control plane answers 401 and the proxy cannot renew, so
    `run()` ends with LockedOut (the process exits 1 for a restart with a new token)."""
    rig = Rig(live, tmp_path / "p", live.cp.ca.bundle_path, await live.bootstrap_token("web"))
    await rig.identity.acquire()
    old_signer = live.cp.ca.signer_fingerprint()
    agent = rig.agent()
    agent.start()
    await eventually(lambda: rig.holder.snapshot is not None, "the first snapshot")
    await agent.stop(deregister=True)

    await live.cp.ca.start_rotation()
    await live.cp.ca.step()
    rotation = live.cp.ca.rotation
    assert rotation is not None
    assert rotation.phase == "done"
    assert live.cp.ca.signer_fingerprint() != old_signer
    assert len(live.cp.ca.bundle()) == 1

    caplog.set_level(logging.INFO)
    back = rig.agent()
    assert await back._register() is False
    # The control plane's new certificate verified after re-reading --ca-bundle.
    assert "the control plane's certificate did not verify; trusting 2 root(s)" in caplog.text
    assert back.connected
    assert "not issued by a CA in the trust bundle" in rig.identity.locked_out
    with pytest.raises(LockedOut, match="restart the proxy with a new bootstrap token"):
        await rig.identity.run()
