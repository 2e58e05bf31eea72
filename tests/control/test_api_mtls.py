"""The proxies' calls over real mTLS: a ControlPlane served by uvicorn on 127.0.0.1:0, clients
with SVIDs from its CA (and from others)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_peers import LiveControlPlane, live_control_plane, workload, write_svid_files
from cryptography import x509

from gossamer.security.ca import CertificateAuthority
from gossamer.security.csr import generate_key, make_csr

REG = {"service": "web", "inbound": "127.0.0.1:1", "ready": True}
API = "gossamer.dev/v1alpha1"


def error_of(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code
    assert "\n" not in error["message"]
    message: str = error["message"]
    return message


@pytest.fixture
async def live(tmp_path: Path) -> Any:
    async with live_control_plane(tmp_path / "cp") as plane:
        yield plane


async def store_dump(live: LiveControlPlane) -> dict[str, bytes]:
    items, _ = await live.cp.store.list("/")
    return {kv.key: kv.value for kv in items}


async def test_proxy_calls_without_a_client_certificate_are_401(live: LiveControlPlane) -> None:
    async with live.client() as c:
        admin = {"authorization": f"Bearer {live.admin}"}
        resp = await c.post("/v1/proxies/web-0/register", json=REG, headers=admin)
        message = error_of(resp, 401, "unauthenticated")
        assert "needs the proxy's SVID as a TLS client certificate" in message
        assert "bearer tokens are not accepted" in message
    assert live.cp.registry.get("web-0") is None


async def test_register_needs_the_identity_of_the_service(
    live: LiveControlPlane, tmp_path: Path
) -> None:
    """The SVID must be the service's account (its Service's serviceAccount, default its name)."""
    web = await live.svid("web", tmp_path / "web")
    async with live.client(web) as c:
        resp = await c.post("/v1/proxies/p-0/register", json={**REG, "service": "pricing"})
        message = error_of(resp, 403, "forbidden")
        assert "spiffe://gossamer.local/ns/default/sa/web" in message
        assert "spiffe://gossamer.local/ns/default/sa/pricing" in message
        assert (await c.post("/v1/proxies/web-0/register", json=REG)).status_code == 200
    assert live.cp.registry.get("p-0") is None
    reg = live.cp.registry.get("web-0")
    assert reg is not None
    assert reg.identity == str(web.spiffe_id)

    # A Service that names another account: its proxies must run as that account.
    service = {
        "apiVersion": API,
        "kind": "Service",
        "metadata": {"name": "shop"},
        "spec": {"serviceAccount": "web"},
    }
    async with live.client() as c:
        resp = await c.post(
            "/v1/apply",
            json={"resources": [service]},
            headers={"authorization": f"Bearer {live.admin}"},
        )
        assert resp.status_code == 200, resp.text
    await live.cp.cache.load()
    async with live.client(web) as c:
        ok = await c.post("/v1/proxies/shop-0/register", json={**REG, "service": "shop"})
        assert ok.status_code == 200, ok.text


async def test_a_proxy_acts_only_on_its_own_proxy_id(
    live: LiveControlPlane, tmp_path: Path
) -> None:
    web = await live.svid("web", tmp_path / "web")
    pricing = await live.svid("pricing", tmp_path / "pricing")
    async with live.client(web) as c:
        assert (await c.post("/v1/proxies/web-0/register", json=REG)).status_code == 200
    async with live.client(pricing) as c:
        for method, path, body in [
            ("POST", "/v1/proxies/web-0/heartbeat", {"ready": False}),
            ("GET", "/v1/proxies/web-0/snapshot", None),
            ("POST", "/v1/proxies/web-0/ack", {"version": "x", "status": "NACK"}),
            ("DELETE", "/v1/proxies/web-0", None),
            ("POST", "/v1/proxies/web-0/register", {**REG, "service": "pricing"}),
        ]:
            resp = await c.request(method, path, json=body)
            message = error_of(resp, 403, "forbidden")
            assert "registered by spiffe://gossamer.local/ns/default/sa/web" in message
            assert "this client is spiffe://gossamer.local/ns/default/sa/pricing" in message
    reg = live.cp.registry.get("web-0")
    assert reg is not None
    assert reg.ready is True


async def test_heartbeat_svid_comes_from_the_client_certificate(
    live: LiveControlPlane, tmp_path: Path
) -> None:
    """What a heartbeat body says about the SVID is not trusted: the serial, expiry, signer and
    identity are read from the verified client certificate of the request."""
    web = await live.svid("web", tmp_path / "web")
    leaf = x509.load_pem_x509_certificate(web.chain.read_bytes())
    lying = {
        "spiffeId": "spiffe://gossamer.local/ns/default/sa/x",
        "serial": "ab12",
        "notAfter": 1_800_000_000.0,
        "signer": "00" * 32,
    }
    async with live.client(web) as c:
        assert (await c.post("/v1/proxies/web-0/register", json=REG)).status_code == 200
        hb = await c.post("/v1/proxies/web-0/heartbeat", json={"ready": True, "svid": lying})
        assert hb.status_code == 200, hb.text
        assert (await c.post("/v1/proxies/web-0/heartbeat", json={"ready": True})).is_success
    async with live.client() as c:
        listed = await c.get("/v1/proxies", headers={"authorization": f"Bearer {live.admin}"})
    (item,) = listed.json()["items"]
    assert item["svid"] == {
        "spiffeId": str(web.spiffe_id),
        "serial": f"{leaf.serial_number:x}",
        "notAfter": leaf.not_valid_after_utc.timestamp(),
        "signer": live.cp.ca.signer_fingerprint(),
    }


async def test_renewal_over_mtls(live: LiveControlPlane, tmp_path: Path) -> None:
    """No token, the current SVID as client certificate: a new SVID for the same identity, with
    the signer; a CSR for another identity is 403 and nothing in the Store changes."""
    web = await live.svid("web", tmp_path / "web")
    assert web.answer["signer"] == live.cp.ca.signer_fingerprint()
    assert set(web.answer) >= {"spiffeId", "chain", "notAfter", "signer"}
    key = generate_key()
    async with live.client(web) as c:
        resp = await c.post("/v1/svid", json={"csr": make_csr(key, web.spiffe_id).decode()})
        assert resp.status_code == 200, resp.text
        assert resp.json()["spiffeId"] == str(web.spiffe_id)
        assert resp.json()["signer"] == live.cp.ca.signer_fingerprint()
        renewed = write_svid_files(
            tmp_path / "renewed", web.spiffe_id, resp.json()["chain"], key, resp.json()
        )
        before = await store_dump(live)
        other = make_csr(generate_key(), workload("pricing")).decode()
        refused = await c.post("/v1/svid", json={"csr": other})
        message = error_of(refused, 403, "forbidden")
        assert "CSR asks for spiffe://gossamer.local/ns/default/sa/pricing" in message
        garbage = await c.post("/v1/svid", json={"csr": "not a csr"})
        assert error_of(garbage, 422, "invalid").startswith("csr: ")
        assert await store_dump(live) == before
    # The renewed SVID works as a client certificate in turn.
    async with live.client(renewed) as c:
        assert (await c.post("/v1/proxies/web-0/register", json=REG)).status_code == 200


async def test_no_token_and_no_certificate_is_401(live: LiveControlPlane) -> None:
    csr = make_csr(generate_key(), workload("web")).decode()
    async with live.client() as c:
        resp = await c.post("/v1/svid", json={"csr": csr})
    assert "a bootstrap token (first SVID) or the current SVID" in error_of(
        resp, 401, "unauthenticated"
    )


async def test_reused_and_expired_tokens_change_nothing(live: LiveControlPlane) -> None:
    token = await live.bootstrap_token("web")
    short = await live.bootstrap_token("web", ttl=0.001)
    csr = make_csr(generate_key(), workload("web")).decode()
    async with live.client() as c:
        # A garbage CSR does not spend the token.
        bad = await c.post("/v1/svid", json={"csr": "-----BEGIN junk", "token": token})
        error_of(bad, 422, "invalid")
        assert (await c.post("/v1/svid", json={"csr": csr, "token": token})).status_code == 200
        before = await store_dump(live)
        again = await c.post("/v1/svid", json={"csr": csr, "token": token})
        assert "used" in error_of(again, 401, "unauthenticated")
        expired = await c.post("/v1/svid", json={"csr": csr, "token": short})
        assert "expired" in error_of(expired, 401, "unauthenticated")
        assert await store_dump(live) == before
    # Pruning drops the spent and the expired token from the Store.
    assert await live.cp.prune_tokens() == 2
    after = await store_dump(live)
    assert len([k for k in after if k.startswith("/tokens/")]) == 1  # the admin token


async def test_a_retired_root_no_longer_authenticates(
    live: LiveControlPlane, tmp_path: Path
) -> None:
    """A root the server's TLS context still knows (contexts only ever gain roots) but that is no
    longer in the bundle: its SVIDs pass the handshake and are refused by the per-connection
    check against the current bundle."""
    old = CertificateAuthority.create_root("gossamer.local")
    live.server_context.load_verify_locations(cadata=old.cert_pem().decode())
    key = generate_key()
    svid = old.sign_csr(make_csr(key, workload("web")), workload("web"))
    stale = write_svid_files(tmp_path / "stale", workload("web"), svid.cert_pem.decode(), key, {})
    async with live.client(stale) as c:
        resp = await c.post("/v1/proxies/web-0/register", json=REG)
        message = error_of(resp, 401, "unauthenticated")
        assert "certificate is refused" in message
        assert "does not verify" in message
        renew = await c.post("/v1/svid", json={"csr": make_csr(key, workload("web")).decode()})
        assert "certificate is refused" in error_of(renew, 401, "unauthenticated")
    assert live.cp.registry.get("web-0") is None


async def test_a_certificate_from_another_ca_fails_the_handshake(
    live: LiveControlPlane, tmp_path: Path
) -> None:
    other = CertificateAuthority.create_root("gossamer.local")
    key = generate_key()
    svid = other.sign_csr(make_csr(key, workload("web")), workload("web"))
    foreign = write_svid_files(tmp_path / "x", workload("web"), svid.cert_pem.decode(), key, {})
    async with live.client(foreign) as c:
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            await c.post("/v1/proxies/web-0/register", json=REG)
    assert live.cp.registry.get("web-0") is None


async def test_a_mesh_with_another_trust_domain_is_422(live: LiveControlPlane) -> None:
    mesh = {
        "apiVersion": API,
        "kind": "Mesh",
        "metadata": {"name": "mesh"},
        "spec": {"trustDomain": "example.org"},
    }
    async with live.client() as c:
        resp = await c.post(
            "/v1/apply",
            json={"resources": [mesh]},
            headers={"authorization": f"Bearer {live.admin}"},
        )
    message = error_of(resp, 422, "invalid")
    assert "'example.org'" in message
    assert "'gossamer.local'" in message
    assert resp.json()["error"]["details"][0]["path"] == "resources[0].spec.trustDomain"


async def test_operators_need_no_client_certificate(live: LiveControlPlane) -> None:
    """The server's TLS context asks for a client certificate without requiring one."""
    assert live.server_context.verify_mode == ssl.CERT_OPTIONAL
    async with live.client() as c:
        assert (await c.get("/v1/ca/bundle")).status_code == 200
