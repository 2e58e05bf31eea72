"""The operator API's tokens and roles, the mesh CA in the control plane, and SVID issuance."""

from __future__ import annotations

import asyncio
import shutil
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_peers import ActAsProxy
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gossamer.control.api import create_app
from gossamer.control.ca_service import KEY_FILE
from gossamer.control.operators import TOKENS_PREFIX
from gossamer.control.server import ControlPlane
from gossamer.security.csr import generate_key, make_csr
from gossamer.security.spiffe import SpiffeId

API = "gossamer.dev/v1alpha1"
SERVICE = {"apiVersion": API, "kind": "Service", "metadata": {"name": "pricing"}, "spec": {}}
PRICING = SpiffeId.workload("gossamer.local", "default", "pricing")


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, cp: ControlPlane, client: httpx.AsyncClient, clock: FakeClock) -> None:
        self.cp = cp
        self.client = client
        self.clock = clock
        self.admin = cp.admin_token_file.read_text().strip()

    async def call(
        self, method: str, path: str, token: str | None = None, body: Any = None
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return await self.client.request(method, path, headers=headers, json=body)

    async def token(self, role: str) -> str:
        resp = await self.call("POST", "/v1/tokens", self.admin, {"role": role})
        assert resp.status_code == 200, resp.text
        secret: str = resp.json()["token"]
        return secret

    async def bootstrap(self, account: str = "pricing") -> str:
        resp = await self.call(
            "POST", "/v1/tokens/bootstrap", self.admin, {"serviceAccount": account}
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["spiffeId"] == f"spiffe://gossamer.local/ns/default/sa/{account}"
        secret: str = resp.json()["token"]
        return secret

    async def store_dump(self) -> dict[str, bytes]:
        items, _ = await self.cp.store.list("/")
        return {kv.key: kv.value for kv in items}


async def open_cp(state: Path, clock: FakeClock) -> ControlPlane:
    cp = await ControlPlane.open(state, clock=clock, debounce=0.01)
    await cp.start()
    return cp


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    clock = FakeClock()
    cp = await open_cp(tmp_path, clock)
    transport = httpx.ASGITransport(app=ActAsProxy(create_app(cp), cp))
    async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
        yield Rig(cp, client, clock)
    await cp.close()


def error_of(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code
    assert "\n" not in error["message"]
    assert "Traceback" not in resp.text
    message: str = error["message"]
    return message


async def test_auth_matrix(rig: Rig) -> None:
    apply = {"resources": [SERVICE]}
    assert "Bearer" in error_of(await rig.call("GET", "/healthz"), 401, "unauthenticated")
    assert (await rig.call("GET", "/healthz")).headers["www-authenticate"] == "Bearer"
    bad = rig.admin[:-4] + "AAAA"
    assert "unknown or revoked" in error_of(
        await rig.call("GET", "/healthz", bad), 401, "unauthenticated"
    )
    error_of(await rig.call("GET", "/healthz", "not-a-token"), 401, "unauthenticated")
    resp = await rig.client.get("/healthz", headers={"authorization": f"Basic {rig.admin}"})
    error_of(resp, 401, "unauthenticated")

    viewer, editor = await rig.token("viewer"), await rig.token("editor")
    assert (await rig.call("GET", "/healthz", viewer)).status_code == 200
    assert (await rig.call("GET", "/v1/resources", viewer)).status_code == 200
    assert (await rig.call("GET", "/v1/proxies", viewer)).status_code == 200
    message = error_of(await rig.call("POST", "/v1/apply", viewer, apply), 403, "forbidden")
    assert "viewer role" in message
    assert "editor or admin" in message
    error_of(
        await rig.call("DELETE", "/v1/resources/Service/default/pricing", viewer), 403, "forbidden"
    )
    error_of(await rig.call("GET", "/v1/tokens", viewer), 403, "forbidden")

    assert (await rig.call("POST", "/v1/apply", editor, apply)).status_code == 200
    resp = await rig.call("POST", "/v1/tokens/bootstrap", editor, {"serviceAccount": "web"})
    assert resp.status_code == 200
    resp = await rig.call("POST", "/v1/tokens", editor, {"role": "viewer"})
    assert "admin role" in error_of(resp, 403, "forbidden")
    error_of(await rig.call("GET", "/v1/tokens", editor), 403, "forbidden")
    resp = await rig.call("POST", "/v1/tokens/bootstrap", viewer, {"serviceAccount": "web"})
    error_of(resp, 403, "forbidden")

    assert (await rig.call("DELETE", "/v1/resources/Service/default/pricing", rig.admin)).is_success
    listed = (await rig.call("GET", "/v1/tokens", rig.admin)).json()["items"]
    assert sorted(t["role"] for t in listed) == ["admin", "editor", "viewer"]
    assert all(set(t) == {"id", "role", "description", "created", "expires"} for t in listed)

    viewer_id = viewer.split(".")[0].removeprefix("gso_")
    assert (await rig.call("DELETE", f"/v1/tokens/{viewer_id}", rig.admin)).json() == {
        "id": viewer_id
    }
    assert "unknown or revoked" in error_of(
        await rig.call("GET", "/healthz", viewer), 401, "unauthenticated"
    )
    error_of(await rig.call("DELETE", f"/v1/tokens/{viewer_id}", rig.admin), 404, "not_found")


async def test_public_calls_need_no_token(rig: Rig) -> None:
    resp = await rig.call("GET", "/v1/ca/bundle")
    assert resp.status_code == 200
    (root,) = x509.load_pem_x509_certificates(resp.content)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # SVID issuance checks its own bootstrap token, not an operator's.
    resp = await rig.call("POST", "/v1/svid", body={"csr": "x"})
    assert "a bootstrap token (first SVID) or the current SVID" in error_of(
        resp, 401, "unauthenticated"
    )


async def test_roles_and_tokens_are_validated(rig: Rig) -> None:
    resp = await rig.call("POST", "/v1/tokens", rig.admin, {"role": "root"})
    assert error_of(resp, 422, "invalid")
    resp = await rig.call("POST", "/v1/tokens/bootstrap", rig.admin, {"serviceAccount": "a/b"})
    assert "one path segment" in error_of(resp, 422, "invalid")
    resp = await rig.call("POST", "/v1/tokens/bootstrap", rig.admin, {"serviceAccount": "a b"})
    assert "may only hold" in error_of(resp, 422, "invalid")


async def test_the_last_admin_token_cannot_be_revoked(rig: Rig) -> None:
    (admin,) = (await rig.call("GET", "/v1/tokens", rig.admin)).json()["items"]
    resp = await rig.call("DELETE", f"/v1/tokens/{admin['id']}", rig.admin)
    assert "last admin token" in error_of(resp, 409, "conflict")
    other = await rig.token("admin")
    assert (await rig.call("DELETE", f"/v1/tokens/{admin['id']}", other)).status_code == 200
    error_of(await rig.call("GET", "/healthz", rig.admin), 401, "unauthenticated")


async def test_tokens_are_stored_hashed_and_the_admin_file_is_private(rig: Rig) -> None:
    assert stat.S_IMODE(rig.cp.admin_token_file.stat().st_mode) == 0o600
    viewer = await rig.token("viewer")
    dump = b"".join((await rig.store_dump()).values())
    for secret in (rig.admin, viewer):
        assert secret.split(".")[1].encode() not in dump
    key_file = rig.cp.ca.state_dir / KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in dump
    assert key_file.read_bytes().split(b"\n")[1] not in dump


async def test_tokens_and_root_survive_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    cp = await open_cp(tmp_path, clock)
    admin = cp.admin_token_file.read_text()
    root = cp.ca.bundle_pem()
    viewer = cp.tokens.tokens.create_operator("viewer")
    await cp.tokens.flush()
    await cp.close()

    again = await open_cp(tmp_path, clock)
    try:
        assert again.ca.bundle_pem() == root
        assert again.admin_token_file.read_text() == admin
        assert again.tokens.tokens.authenticate(viewer.secret).role == "viewer"
        assert len(again.tokens.tokens.list("operator")) == 2
    finally:
        await again.close()


async def test_a_lost_ca_key_is_a_clear_error(tmp_path: Path) -> None:
    from gossamer.security.ca import CaError

    cp = await open_cp(tmp_path, FakeClock())
    await cp.close()
    (tmp_path / KEY_FILE).unlink()
    with pytest.raises(CaError, match="mesh CA's private key: cannot read private key"):
        await ControlPlane.open(tmp_path, clock=FakeClock())


def csr_for(spiffe_id: SpiffeId) -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = generate_key()
    return key, make_csr(key, spiffe_id).decode()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")
async def test_svid_issued_for_a_bootstrap_token_verifies_with_openssl(
    rig: Rig, tmp_path: Path
) -> None:
    token = await rig.bootstrap()
    _, csr = csr_for(PRICING)
    resp = await rig.call("POST", "/v1/svid", body={"csr": csr, "token": token})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["spiffeId"] == str(PRICING)
    assert body["notAfter"]
    (tmp_path / "leaf.pem").write_text(body["chain"])
    (tmp_path / "bundle.pem").write_bytes((await rig.call("GET", "/v1/ca/bundle")).content)
    argv = ["openssl", "verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"]
    out = await asyncio.to_thread(
        subprocess.run,
        [*argv, str(tmp_path / "bundle.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith(": OK")
    (leaf,) = x509.load_pem_x509_certificates(body["chain"].encode())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(PRICING)]

    # Single use: the same token again is refused, and nothing is issued.
    again = await rig.call("POST", "/v1/svid", body={"csr": csr, "token": token})
    assert "already used" in error_of(again, 401, "unauthenticated")


async def test_bad_svid_requests_change_nothing(rig: Rig) -> None:
    token = await rig.bootstrap()
    before = await rig.store_dump()

    resp = await rig.call("POST", "/v1/svid", body={"csr": "garbage", "token": token})
    assert "not a PEM certificate signing request" in error_of(resp, 422, "invalid")
    _, other = csr_for(SpiffeId.workload("gossamer.local", "default", "frontend"))
    resp = await rig.call("POST", "/v1/svid", body={"csr": other, "token": token})
    message = error_of(resp, 403, "forbidden")
    assert "CSR asks for spiffe://gossamer.local/ns/default/sa/frontend" in message
    assert "bound to spiffe://gossamer.local/ns/default/sa/pricing" in message
    resp = await rig.call("POST", "/v1/svid", body={"csr": other, "token": "gsb_" + "0" * 16})
    error_of(resp, 401, "unauthenticated")
    assert await rig.store_dump() == before

    # The token survived the bad requests: a good CSR still gets its SVID.
    _, good = csr_for(PRICING)
    resp = await rig.call("POST", "/v1/svid", body={"csr": good, "token": token})
    assert resp.status_code == 200, resp.text


async def test_expired_bootstrap_token_is_refused(rig: Rig) -> None:
    token = await rig.bootstrap()
    before = await rig.store_dump()
    rig.clock.now += 601
    _, csr = csr_for(PRICING)
    resp = await rig.call("POST", "/v1/svid", body={"csr": csr, "token": token})
    assert "has expired" in error_of(resp, 401, "unauthenticated")
    assert await rig.store_dump() == before


async def test_operator_token_is_not_a_bootstrap_token(rig: Rig) -> None:
    _, csr = csr_for(PRICING)
    resp = await rig.call("POST", "/v1/svid", body={"csr": csr, "token": rig.admin})
    assert "not a bootstrap token" in error_of(resp, 401, "unauthenticated")


async def test_proxy_calls_need_an_svid_never_a_token(tmp_path: Path) -> None:
    """Without a client SVID every proxy call is 401, whatever bearer token comes with it;
    operators may still read the snapshot built for a proxy (and remove a registration: see
    test_api_registrations.py)."""
    cp = await open_cp(tmp_path, FakeClock())
    transport = httpx.ASGITransport(app=ActAsProxy(create_app(cp), cp))
    admin = {"authorization": "Bearer " + cp.admin_token_file.read_text().strip()}
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
            reg = {"service": "a", "inbound": "127.0.0.1:1", "ready": True}
            assert (await client.post("/v1/proxies/p/register", json=reg)).status_code == 200
            no_cert = {**admin, "x-test-peer": ""}
            for method, path, body in [
                ("POST", "/v1/proxies/p/register", reg),
                ("POST", "/v1/proxies/p/heartbeat", {}),
                ("POST", "/v1/proxies/p/ack", {"version": "v", "status": "ACK"}),
                ("DELETE", "/v1/proxies/p", None),
                ("GET", "/v1/proxies/p/snapshot", None),
            ]:
                # Without a token: an operator's DELETE needs one (the token case is allowed).
                headers = no_cert if method == "POST" else {"x-test-peer": ""}
                resp = await client.request(method, path, headers=headers, json=body)
                message = error_of(resp, 401, "unauthenticated")
                assert "needs the proxy's SVID as a TLS client certificate" in message
            operator = await client.get("/v1/proxies/p/snapshot", headers=no_cert)
            assert operator.status_code == 200
            assert cp.registry.get("p") is not None  # nothing was deregistered
    finally:
        await cp.close()


async def test_store_holds_the_root_and_token_hashes_only(rig: Rig) -> None:
    dump = await rig.store_dump()
    # Where the CA keeps its root(s) is ca_service's business: some /ca/ key holds the cert.
    ca = [v for k, v in dump.items() if k.startswith("/ca/")]
    assert any(b"-----BEGIN CERTIFICATE-----" in v for v in ca)
    assert not any(b"PRIVATE KEY" in v for v in dump.values())
    tokens = [k for k in dump if k.startswith(TOKENS_PREFIX)]
    assert len(tokens) == 1
    assert b'"hash"' in dump[tokens[0]]


async def test_no_bootstrap_token_for_the_meshs_own_namespace(rig: Rig) -> None:
    """An SVID for gossamer-system/control-plane would impersonate the control plane: even an
    admin cannot mint a bootstrap token there, and nothing is stored."""
    before = await rig.store_dump()
    body = {"serviceAccount": "control-plane", "namespace": "gossamer-system"}
    for token in (rig.admin, await rig.token("editor")):
        resp = await rig.call("POST", "/v1/tokens/bootstrap", token, body)
        assert "reserved for the mesh's own identities" in error_of(resp, 403, "forbidden")
    after = await rig.store_dump()
    assert {k for k in after if not k.startswith("/tokens/")} == {
        k for k in before if not k.startswith("/tokens/")
    }
    assert (
        len([k for k in after if k.startswith("/tokens/")])
        == len([k for k in before if k.startswith("/tokens/")]) + 1
    )  # only the editor token this test made


def test_a_path_cannot_forge_a_log_line() -> None:
    """The access log escapes control characters of the decoded path (`%0A` in a URL)."""
    from gossamer.control.api import _loggable

    forged = "/v1/x\n2026-11-22 02:29:00,000 INFO gossamer.control.api: POST /v1/tokens 200"
    assert "\n" not in _loggable(forged)
    assert _loggable(forged).startswith("/v1/x\\n2026")
    assert _loggable("/v1/resources/Service/default/pricing") == (
        "/v1/resources/Service/default/pricing"
    )
