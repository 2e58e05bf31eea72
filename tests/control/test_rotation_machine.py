"""Root rotation as a state machine: real store, registry and distributor, a driven clock."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509

from gossamer.control.ca_service import (
    KEY_FILE,
    KEYS_DIR,
    LEGACY_ROOT_KEY,
    RETIRED_DIR,
    STATE_KEY,
    MeshCa,
)
from gossamer.control.operators import Tokens
from gossamer.control.registry import Registration, SvidStatus
from gossamer.control.server import ControlPlane
from gossamer.control.store.sqlite import SqliteStore
from gossamer.security.bundle import TrustBundle, fingerprint, verify_chain
from gossamer.security.ca import CertificateAuthority
from gossamer.security.csr import generate_key, make_csr
from gossamer.security.spiffe import SpiffeId

PRICING = SpiffeId.workload("gossamer.local", "default", "pricing")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Rig:
    """A control plane's parts without their background tasks: the test drives every step."""

    def __init__(self, cp: ControlPlane, clock: Clock) -> None:
        self.cp = cp
        self.ca = cp.ca
        self.clock = clock

    async def register(self, proxy_id: str, signer: str | None, *, ready: bool = True) -> None:
        svid = None
        if signer is not None:
            svid = SvidStatus(
                spiffe_id=str(PRICING),
                serial="01",
                not_after=self.clock() + 86400,
                signer=signer,
            )
        await self.cp.registry.register(
            Registration(
                proxy_id=proxy_id,
                service="pricing",
                inbound=f"127.0.0.1:{1000 + len(proxy_id)}",
                app_port=8080,
                ready=ready,
                svid=svid,
            )
        )

    def when(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.UTC)

    def push(self) -> None:
        """What the distributor's loop does after mark_dirty."""
        self.cp.distributor.recompute()

    def ack(self, *proxy_ids: str) -> None:
        for pid in proxy_ids:
            version = self.cp.distributor.snapshot(pid).version
            self.cp.distributor.ack(pid, version, True, None)


async def open_rig(state: Path, clock: Clock) -> ControlPlane:
    store = await SqliteStore.open(state / "store.sqlite")
    ca = await MeshCa.open(store, state, clock=clock)
    tokens = await Tokens.open(store, clock)
    admin = await tokens.ensure_admin(state)
    cp = ControlPlane(
        store, clock=clock, ca=ca, tokens=tokens, admin_token_file=admin, debounce=0.0
    )
    await cp.cache.load()
    await cp.registry.load()
    cp.distributor.recompute()
    ca.bind(cp.registry, cp.distributor)
    return cp


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = Clock()
    cp = await open_rig(tmp_path, clock)
    yield Rig(cp, clock)
    await cp.store.close()


def bundle_fps(pem: bytes | str) -> list[str]:
    return TrustBundle.from_pem(pem).fingerprints()


async def test_a_rotation_waits_for_every_proxy_then_retires_the_old_root(
    rig: Rig, tmp_path: Path
) -> None:
    old = rig.ca.signer_fingerprint()
    await rig.register("p1", old)
    await rig.register("p2", old)
    rig.push()
    rig.ack("p1", "p2")

    rotation, warnings = await rig.ca.start_rotation(phase_timeout=60)
    assert warnings == []
    new = rotation.new
    assert rotation.phase == "distributing"
    assert rotation.old == old
    assert new != old
    # The new root is trusted everywhere at once, but the old CA still issues.
    assert bundle_fps(rig.ca.trust().bundle_pem) == [old, new]
    assert bundle_fps((tmp_path / "ca-bundle.pem").read_bytes()) == [old, new]
    assert rig.ca.trust().signer == old
    key = tmp_path / KEYS_DIR / f"{new}.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600

    # The proxies still run the snapshot without the new root: nothing moves.
    await rig.ca.step()
    assert rig.ca.pending() == ["p1", "p2"]
    rig.push()
    rig.ack("p1")
    await rig.ca.step()
    assert rig.ca.rotation is not None
    assert rig.ca.rotation.phase == "distributing"
    assert rig.ca.pending() == ["p2"]
    status = rig.ca.status(rig.cp.registry, rig.cp.distributor)
    assert status["rotation"]["pending"] == ["p2"]
    assert not status["rotation"]["stalled"]

    # Past the phase's deadline the status says so, naming the proxy; it still waits.
    rig.clock.now += 61
    status = rig.ca.status(rig.cp.registry, rig.cp.distributor)
    assert status["rotation"]["stalled"]
    assert "p2 still have not ACKed" in status["rotation"]["message"]
    assert rig.ca.rotation.phase == "distributing"

    rig.ack("p2")
    await rig.ca.step()
    assert rig.ca.rotation.phase == "reissuing"
    assert rig.ca.trust().signer == new
    assert bundle_fps(rig.ca.trust().bundle_pem) == [old, new]
    # The issuer's key is the one in KEY_FILE now; the old one waits next to it.
    assert rig.ca.ca.private_key_pem() == (tmp_path / KEY_FILE).read_bytes()
    assert (tmp_path / KEYS_DIR / f"{old}.pem").exists()
    assert not key.exists()
    # New SVIDs come from the new CA and verify against the bundle.
    svid = rig.ca.sign_svid(make_csr(generate_key(), PRICING), PRICING)
    issuer = x509.load_pem_x509_certificate(svid.cert_pem).issuer
    assert issuer == rig.ca.ca.cert.subject
    assert verify_chain(svid.cert_pem, [], rig.ca.bundle(), now=rig.when()) == PRICING
    # The snapshots carry the new signer: that is what makes the proxies renew.
    rig.push()
    tls = rig.cp.distributor.snapshot("p1").tls
    assert tls is not None
    assert tls.signer == new

    await rig.ca.step()
    assert rig.ca.pending() == ["p1", "p2"]
    await rig.register("p1", new)
    await rig.ca.step()
    assert rig.ca.pending() == ["p2"]
    await rig.register("p2", new)
    await rig.ca.step()

    assert rig.ca.rotation.phase == "done"
    assert [e.phase for e in rig.ca.rotation.history] == ["distributing", "reissuing", "done"]
    assert bundle_fps(rig.ca.trust().bundle_pem) == [new]
    assert bundle_fps((tmp_path / "ca-bundle.pem").read_bytes()) == [new]
    archived = tmp_path / RETIRED_DIR / f"{old}.pem"
    assert stat.S_IMODE(archived.stat().st_mode) == 0o600
    assert not (tmp_path / KEYS_DIR / f"{old}.pem").exists()
    # A second rotation may start once the first is done.
    again, _ = await rig.ca.start_rotation()
    assert again.old == new


async def test_unhealthy_proxies_are_waited_for_until_their_registration_expires(
    rig: Rig,
) -> None:
    """An unhealthy proxy may still serve with the old bundle: the new CA does not issue until
    it ACKs, or until its registration expires (it is gone); an empty mesh then rotates."""
    old = rig.ca.signer_fingerprint()
    await rig.register("down", old, ready=False)
    rotation, _ = await rig.ca.start_rotation()
    rig.push()
    await rig.ca.step()
    assert rig.ca.rotation is not None
    assert rig.ca.rotation.phase == "distributing"
    assert rig.ca.pending() == ["down"]
    status = rig.ca.status(rig.cp.registry, rig.cp.distributor)
    assert status["rotation"]["pending"] == ["down"]

    # Silent for less than the expiry: still registered, still waited for.
    registry = rig.cp.registry
    rig.clock.now += registry.expire_after - 1
    assert await registry.expire() == []
    await rig.ca.step()
    assert rig.ca.rotation.phase == "distributing"
    rig.clock.now += 1
    assert await registry.expire() == ["down"]
    assert registry.get("down") is None
    await rig.ca.step()
    assert rig.ca.rotation.phase == "done"
    assert rig.ca.signer_fingerprint() == rotation.new


async def test_an_unready_proxy_that_heartbeats_acks_and_lets_the_rotation_go_on(
    rig: Rig,
) -> None:
    old = rig.ca.signer_fingerprint()
    await rig.register("warming", old, ready=False)
    await rig.ca.start_rotation()
    rig.push()
    await rig.ca.step()
    assert rig.ca.pending() == ["warming"]
    rig.ack("warming")
    await rig.ca.step()
    assert rig.ca.rotation is not None
    assert rig.ca.rotation.phase == "reissuing"
    assert rig.ca.pending() == ["warming"]


async def test_a_rotation_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    cp = await open_rig(tmp_path, clock)
    rig = Rig(cp, clock)
    old = cp.ca.signer_fingerprint()
    await rig.register("p1", old)
    rotation, _ = await cp.ca.start_rotation()
    await cp.store.close()

    # Restarted in the first phase: both roots trusted, the old CA still issues.
    cp = await open_rig(tmp_path, clock)
    rig = Rig(cp, clock)
    assert cp.ca.rotation == rotation
    assert cp.ca.signer_fingerprint() == old
    assert bundle_fps(cp.ca.bundle_pem()) == [old, rotation.new]
    rig.push()
    rig.ack("p1")
    await cp.ca.step()
    assert cp.ca.rotation is not None
    assert cp.ca.rotation.phase == "reissuing"
    await cp.store.close()

    # Restarted in the second: the new CA issues with the key it left in KEY_FILE.
    cp = await open_rig(tmp_path, clock)
    rig = Rig(cp, clock)
    assert cp.ca.rotation is not None
    assert cp.ca.rotation.phase == "reissuing"
    assert cp.ca.signer_fingerprint() == rotation.new
    assert cp.ca.pending() == ["p1"]
    await rig.register("p1", rotation.new)
    await cp.ca.step()
    assert cp.ca.rotation.phase == "done"
    await cp.store.close()


async def test_an_interrupted_switch_finds_both_keys(tmp_path: Path) -> None:
    """A crash between the store write and the key files' moves: the keys are found anyway."""
    clock = Clock()
    cp = await open_rig(tmp_path, clock)
    old_key = (tmp_path / KEY_FILE).read_bytes()
    rotation, _ = await cp.ca.start_rotation()
    await cp.ca.step()  # no proxies: switches and retires in one go
    assert cp.ca.rotation is not None
    assert cp.ca.rotation.phase == "done"
    await cp.store.close()
    # Put the files back where they were before the switch: as if it crashed right after
    # the store write.
    new_key = (tmp_path / KEY_FILE).read_bytes()
    (tmp_path / KEYS_DIR / f"{rotation.new}.pem").write_bytes(new_key)
    (tmp_path / KEYS_DIR / f"{rotation.new}.pem").chmod(0o600)
    (tmp_path / KEY_FILE).write_bytes(old_key)
    cp = await open_rig(tmp_path, clock)
    try:
        assert cp.ca.signer_fingerprint() == rotation.new
        assert (tmp_path / KEY_FILE).read_bytes() == cp.ca.ca.private_key_pem()
        assert not (tmp_path / KEYS_DIR / f"{rotation.new}.pem").exists()
    finally:
        await cp.store.close()


async def test_the_old_single_root_layout_is_migrated(tmp_path: Path) -> None:
    root = CertificateAuthority.create_root("gossamer.local")
    (tmp_path / KEY_FILE).write_bytes(root.private_key_pem())
    (tmp_path / KEY_FILE).chmod(0o600)
    store = await SqliteStore.open(tmp_path / "store.sqlite")
    await store.put(LEGACY_ROOT_KEY, root.cert_pem())
    ca = await MeshCa.open(store, tmp_path)
    try:
        assert ca.signer_fingerprint() == fingerprint(root.cert)
        assert ca.bundle_pem() == root.cert_pem()
        assert await store.get(LEGACY_ROOT_KEY) is None
        kv = await store.get(STATE_KEY)
        assert kv is not None
        assert b"PRIVATE" not in kv.value
    finally:
        await store.close()


async def test_an_expired_root_still_loads_and_is_reported(tmp_path: Path) -> None:
    """No certificate doomsday at start: the control plane comes up and says what expired."""
    clock = Clock()
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    root = CertificateAuthority.create_root(
        "gossamer.local", validity=dt.timedelta(days=365), now=long_ago
    )
    (tmp_path / KEY_FILE).write_bytes(root.private_key_pem())
    (tmp_path / KEY_FILE).chmod(0o600)
    store = await SqliteStore.open(tmp_path / "store.sqlite")
    await store.put(LEGACY_ROOT_KEY, root.cert_pem())
    await store.close()
    cp = await open_rig(tmp_path, clock)
    try:
        # Every SVID from it is invalid already: the control plane switched to a new root at
        # once, keeping the old one trusted until the proxies renew.
        rotation = cp.ca.rotation
        assert rotation is not None
        assert rotation.automatic
        assert rotation.phase == "reissuing"
        assert cp.ca.signer_fingerprint() == rotation.new
        status = cp.ca.status(cp.registry, cp.distributor)
        assert [c["state"] for c in status["certificates"]] == ["expired", "ok"]
        assert "expired at" in status["warnings"][0]
        assert cp.ca.issue_control_plane_cert(["127.0.0.1"]).cert_file.exists()
        await cp.ca.step()
        assert cp.ca.rotation is not None
        assert cp.ca.rotation.phase == "done"
        status = cp.ca.status(cp.registry, cp.distributor)
        assert [c["state"] for c in status["certificates"]] == ["ok"]
    finally:
        await cp.store.close()


async def test_an_unattached_api_listener_holds_the_old_root(rig: Rig) -> None:
    """A listener that loaded its certificate from files and was never attached keeps serving
    one from the old CA: the old root stays until the control plane restarts."""
    rig.ca.issue_control_plane_cert(["127.0.0.1"])
    await rig.ca.start_rotation()
    await rig.ca.step()
    assert rig.ca.rotation is not None
    assert rig.ca.rotation.phase == "reissuing"
    assert rig.ca.pending() == ["(the control plane's API certificate: restart the control plane)"]


async def test_the_api_server_context_follows_the_rotation(rig: Rig) -> None:
    """An attached SSLContext serves the re-issued certificate on new connections."""
    serving = rig.ca.issue_control_plane_cert(["127.0.0.1"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(serving.cert_file, serving.key_file)
    rig.ca.attach_server_context(ctx)
    rotation, _ = await rig.ca.start_rotation()
    await rig.ca.step()
    assert rig.ca.rotation is not None
    assert rig.ca.rotation.phase == "done"
    assert rig.ca.signer_fingerprint() == rotation.new

    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    # A client that trusts only the new root: the old one is gone from the bundle.
    client = ssl.create_default_context(cadata=rig.ca.bundle_pem().decode())
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="127.0.0.1"),
            5,
        )
        peer = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        leaf = x509.load_der_x509_certificate(peer)
        assert leaf.issuer == rig.ca.ca.cert.subject
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_generated_root_near_its_end_is_rotated_automatically(tmp_path: Path) -> None:
    """No certificate doomsday: the control plane replaces its own root 30 days before it
    expires, with the same phases as an operator's rotation."""
    clock = Clock()
    soon = CertificateAuthority.create_root(
        "gossamer.local", validity=dt.timedelta(days=20), now=dt.datetime.now(dt.UTC)
    )
    (tmp_path / KEY_FILE).write_bytes(soon.private_key_pem())
    (tmp_path / KEY_FILE).chmod(0o600)
    store = await SqliteStore.open(tmp_path / "store.sqlite")
    await store.put(LEGACY_ROOT_KEY, soon.cert_pem())
    await store.close()
    cp = await open_rig(tmp_path, clock)
    rig = Rig(cp, clock)
    try:
        await rig.register("p1", fingerprint(soon.cert))
        await cp.ca.step()
        rotation = cp.ca.rotation
        assert rotation is not None
        assert rotation.automatic
        assert rotation.phase == "distributing"
        rig.push()
        rig.ack("p1")
        await cp.ca.step()
        await rig.register("p1", rotation.new)
        await cp.ca.step()
        assert cp.ca.rotation is not None
        assert cp.ca.rotation.phase == "done"
        left = cp.ca.ca.cert.not_valid_after_utc - rig.when()
        assert left > dt.timedelta(days=3000)
        # A fresh root is not due: nothing more happens.
        await cp.ca.step()
        assert cp.ca.rotation.id == rotation.id
    finally:
        await cp.store.close()
