"""The API's check of client SVIDs across root rotations: every trusted CA's intermediates,
failures not cached for a leaf's life, expiry and retired issuers caught per request."""

from __future__ import annotations

import datetime as dt
import ssl
import time
from pathlib import Path

import httpx
import pytest
from api_peers import LiveControlPlane, eventually, live_control_plane, write_svid_files
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gossamer.control.ca_service import MeshCa
from gossamer.control.distribute import Distributor
from gossamer.control.registry import Registration, Registry, SvidStatus
from gossamer.control.store.sqlite import SqliteStore
from gossamer.control.tls_peer import FAILURE_TTL, PeerChecker
from gossamer.security.bundle import fingerprint
from gossamer.security.ca import CertificateAuthority
from gossamer.security.csr import generate_key, make_csr
from gossamer.security.spiffe import SpiffeId

WEB = SpiffeId.workload("gossamer.local", "default", "web")
REG = {"service": "web", "inbound": "127.0.0.1:1", "ready": True}


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def imported_intermediate() -> tuple[CertificateAuthority, dict[str, str]]:
    root = CertificateAuthority.create_root("gossamer.local")
    inter = root.create_intermediate()
    return inter, {
        "cert_pem": inter.cert_pem().decode(),
        "key_pem": inter.private_key_pem().decode(),
        "chain_pem": root.cert_pem().decode(),
    }


async def test_a_leaf_from_an_imported_intermediate_verifies_after_the_switch_cold(
    tmp_path: Path,
) -> None:
    """Rotating away from an imported intermediate I1: once the new root issues, a checker with
    a cold cache (a restarted control plane) still accepts I1's leaves, until I1 is retired."""
    clock = Clock()
    store = await SqliteStore.open(tmp_path / "store.sqlite")
    try:
        ca = await MeshCa.open(store, tmp_path, clock=clock)
        registry = Registry(store, ttl=3.0, clock=clock)
        distributor = Distributor(lambda: [], registry, clock=clock, trust=ca.trust)
        ca.bind(registry, distributor)
        inter, files = imported_intermediate()
        await ca.start_rotation(**files)
        await ca.step()  # nothing registered: switch and retire at once
        assert ca.signer_fingerprint() == fingerprint(inter.cert)
        i1 = ca.sign_svid(make_csr(generate_key(), WEB), WEB)
        assert i1.signer == fingerprint(inter.cert)

        # A proxy still on I1's leaf holds the next rotation in the reissuing phase.
        await registry.register(
            Registration(
                proxy_id="web-0",
                service="web",
                inbound="127.0.0.1:1",
                svid=SvidStatus(
                    spiffe_id=str(WEB), serial="1", not_after=clock() + 3600, signer=i1.signer
                ),
                identity=str(WEB),
            )
        )
        distributor.recompute()
        rotation, _ = await ca.start_rotation()
        distributor.recompute()
        distributor.ack("web-0", distributor.snapshot("web-0").version, True, None)
        await ca.step()
        assert ca.rotation is not None
        assert ca.rotation.phase == "reissuing"
        assert ca.signer_fingerprint() == rotation.new

        facts, error = PeerChecker(ca).check(der(i1.cert_pem), clock())
        assert error is None
        assert facts is not None
        assert facts.spiffe_id == str(WEB)
        assert facts.signer == fingerprint(inter.cert)
        assert facts.serial == f"{i1.serial:x}"

        # Retired: a cold checker refuses the leaf, a warm connection's facts too.
        await registry.deregister("web-0")
        await ca.step()
        assert ca.rotation.phase == "done"
        gone, why = PeerChecker(ca).check(der(i1.cert_pem), clock())
        assert gone is None
        assert why is not None
        assert "unknown issuer" in why
        late = PeerChecker(ca).recheck(facts, clock())
        assert late is not None
        assert "no longer trusts" in late
    finally:
        await store.close()


async def test_a_failure_is_cached_briefly_a_success_until_expiry(tmp_path: Path) -> None:
    clock = Clock()
    store = await SqliteStore.open(tmp_path / "store.sqlite")
    try:
        ca = await MeshCa.open(store, tmp_path, clock=clock)
        # Not valid yet when first seen (a skewed clock): refused, but not for its whole life.
        later = dt.datetime.fromtimestamp(clock() + 600, dt.UTC)
        svid = ca.ca.sign_csr(make_csr(generate_key(), WEB), WEB, now=later)
        checker = PeerChecker(ca)
        facts, error = checker.check(der(svid.cert_pem), clock())
        assert facts is None
        assert error is not None
        assert "not yet valid" in error
        facts, _ = checker.check(der(svid.cert_pem), clock() + FAILURE_TTL / 2)
        assert facts is None  # within the failure's short cache
        facts, error = checker.check(der(svid.cert_pem), clock() + 600)
        assert error is None
        assert facts is not None
        # The leaf's expiry is checked per request on a kept-alive connection.
        assert checker.recheck(facts, clock() + 600) is None
        late = checker.recheck(facts, facts.not_after)
        assert late is not None
        assert "expired at" in late
        garbage, why = checker.check(b"not a certificate", clock())
        assert garbage is None
        assert why is not None
        assert "cannot be read" in why
    finally:
        await store.close()


async def snapshot_ack(c: httpx.AsyncClient, proxy_id: str) -> None:
    snap = await c.get(f"/v1/proxies/{proxy_id}/snapshot")
    assert snap.status_code == 200, snap.text
    ack = await c.post(
        f"/v1/proxies/{proxy_id}/ack", json={"version": snap.json()["version"], "status": "ACK"}
    )
    assert ack.status_code == 200, ack.text


async def test_a_proxy_on_the_old_intermediate_renews_after_a_restart_mid_rotation(
    tmp_path: Path,
) -> None:
    """Over real mTLS: the control plane restarts while the new root issues; the proxy still on
    the imported intermediate's leaf heartbeats and renews, then the old CA retires."""
    state = tmp_path / "cp"
    inter, files = imported_intermediate()
    async with live_control_plane(state) as live:
        await live.cp.ca.start_rotation(**files)
        await eventually(
            lambda: live.cp.ca.rotation is not None and live.cp.ca.rotation.phase == "done",
            "the rotation to the imported intermediate",
        )
    # Restarted so that the API serves a certificate from the intermediate.
    async with live_control_plane(state) as live:
        old = await live.svid("web", tmp_path / "old")
        assert old.answer["signer"] == fingerprint(inter.cert)
        async with live.client(old) as c:
            assert (await c.post("/v1/proxies/web-0/register", json=REG)).status_code == 200
            rotation, _ = await live.cp.ca.start_rotation()
            await eventually(lambda: live.cp.ca.pending() == ["web-0"], "web-0 pending")
            await snapshot_ack(c, "web-0")
        await eventually(
            lambda: live.cp.ca.rotation is not None and live.cp.ca.rotation.phase == "reissuing",
            "the switch to the new root",
        )

    async with live_control_plane(state) as live:
        assert live.cp.ca.signer_fingerprint() == rotation.new
        async with live.client(old) as kept:
            hb = await kept.post("/v1/proxies/web-0/heartbeat", json={"ready": True})
            assert hb.status_code == 200, hb.text
            key = generate_key()
            renewed = await kept.post("/v1/svid", json={"csr": make_csr(key, WEB).decode()})
            assert renewed.status_code == 200, renewed.text
            assert renewed.json()["signer"] == rotation.new
            new = write_svid_files(
                tmp_path / "new", WEB, renewed.json()["chain"], key, renewed.json()
            )
            assert live.cp.ca.pending() == ["web-0"]
            async with live.client(new) as c:
                hb = await c.post("/v1/proxies/web-0/heartbeat", json={"ready": True})
                assert hb.status_code == 200, hb.text
            await eventually(
                lambda: live.cp.ca.rotation is not None and live.cp.ca.rotation.phase == "done",
                "the old CA retired",
            )
            # The same kept-alive connection, verified at connect: refused per request now.
            late = await kept.post("/v1/proxies/web-0/heartbeat", json={"ready": True})
            assert late.status_code == 401, late.text
            assert "no longer trusts" in late.json()["error"]["message"]
        await refused_now(live, old)


async def refused_now(live: LiveControlPlane, svid: object) -> None:
    """A retired CA's leaf: the live context still has its root, the per-request check not."""
    from api_peers import Svid

    assert isinstance(svid, Svid)
    try:
        async with live.client(svid) as c:
            resp = await c.post("/v1/proxies/web-0/heartbeat", json={"ready": True})
    except (httpx.ConnectError, ssl.SSLError):  # the handshake refused it: also fine
        return
    assert resp.status_code == 401, resp.text
    message = resp.json()["error"]["message"]
    assert "unknown issuer" in message or "no longer trusts" in message


@pytest.mark.parametrize("minimum", [ssl.TLSVersion.TLSv1_2])
async def test_the_api_speaks_tls_13_only(tmp_path: Path, minimum: ssl.TLSVersion) -> None:
    async with live_control_plane(tmp_path / "cp") as live:
        ctx = live.context()
        ctx.minimum_version = minimum
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        async with httpx.AsyncClient(base_url=live.url, verify=ctx, timeout=5) as c:
            with pytest.raises(httpx.ConnectError):
                await c.get("/v1/ca/bundle")
        async with live.client() as c:
            assert (await c.get("/v1/ca/bundle")).status_code == 200
