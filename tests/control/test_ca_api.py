"""`GET /v1/ca` and `POST /v1/ca/rotate`: roles, bring-your-own CA, refusals changing nothing."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gossamer.control.api import create_app
from gossamer.control.server import ControlPlane
from gossamer.security.bundle import TrustBundle, fingerprint, verify_chain
from gossamer.security.ca import CertificateAuthority
from gossamer.security.csr import generate_key, make_csr, private_key_pem
from gossamer.security.spiffe import SpiffeId

PRICING = SpiffeId.workload("gossamer.local", "default", "pricing")


class Rig:
    def __init__(self, cp: ControlPlane, client: httpx.AsyncClient) -> None:
        self.cp = cp
        self.client = client
        self.admin = cp.admin_token_file.read_text().strip()

    async def call(
        self, method: str, path: str, token: str | None = None, body: Any = None
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {token or self.admin}"}
        return await self.client.request(method, path, headers=headers, json=body)

    async def token(self, role: str) -> str:
        resp = await self.call("POST", "/v1/tokens", body={"role": role})
        assert resp.status_code == 200, resp.text
        secret: str = resp.json()["token"]
        return secret

    async def dump(self) -> dict[str, bytes]:
        items, _ = await self.cp.store.list("/")
        return {kv.key: kv.value for kv in items if not kv.key.startswith("/tokens/")}


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    cp = await ControlPlane.open(tmp_path, clock=lambda: 1_700_000_000.0, debounce=0.01)
    await cp.start()
    transport = httpx.ASGITransport(app=create_app(cp))
    async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
        yield Rig(cp, client)
    await cp.close()


def error_of(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code
    assert "Traceback" not in resp.text
    message: str = error["message"]
    return message


async def test_status_for_any_role_and_rotate_for_admins_only(rig: Rig) -> None:
    viewer, editor = await rig.token("viewer"), await rig.token("editor")
    resp = await rig.call("GET", "/v1/ca", viewer)
    assert resp.status_code == 200, resp.text
    status = resp.json()
    assert status["trustDomain"] == "gossamer.local"
    (cert,) = status["certificates"]
    assert cert["kind"] == "root"
    assert cert["signing"]
    assert cert["state"] == "ok"
    assert status["signer"] == cert["fingerprint"] == status["roots"][0]
    assert status["rotation"] is None
    assert "PRIVATE" not in resp.text

    before = await rig.dump()
    for token in (viewer, editor):
        message = error_of(await rig.call("POST", "/v1/ca/rotate", token), 403, "forbidden")
        assert "admin role" in message
    assert await rig.dump() == before

    resp = await rig.call("POST", "/v1/ca/rotate")
    assert resp.status_code == 200, resp.text
    rotation = resp.json()["rotation"]
    assert rotation["phase"] in ("distributing", "reissuing", "done")
    assert len(TrustBundle.from_pem(resp.json()["bundle"])) == 2
    await rig.cp.ca.step()
    if rig.cp.ca.rotation is not None and rig.cp.ca.rotation.active:
        message = error_of(await rig.call("POST", "/v1/ca/rotate"), 409, "conflict")
        assert "already under way" in message


def make_ca(td: str = "gossamer.local", **kw: Any) -> CertificateAuthority:
    return CertificateAuthority.create_root(td, **kw)


def bad_inputs() -> list[tuple[str, dict[str, str], str]]:
    good = make_ca()
    other = make_ca()
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    expired = make_ca(validity=dt.timedelta(days=1), now=long_ago)
    foreign = make_ca("other.example")
    inter = good.create_intermediate()
    leaf_key = generate_key()
    svid = good.sign_csr(make_csr(leaf_key, PRICING), PRICING)
    cert, key = good.cert_pem().decode(), good.private_key_pem().decode()
    return [
        ("garbage cert", {"cert": "hello", "key": key}, "not PEM certificates"),
        ("no key", {"cert": cert}, "key: the CA's private key is missing"),
        ("garbage key", {"cert": cert, "key": "-----BEGIN PRIVATE KEY-----\nxx"}, "not a PEM"),
        (
            "key of another CA",
            {"cert": cert, "key": other.private_key_pem().decode()},
            "does not match",
        ),
        (
            "not a CA",
            {"cert": svid.cert_pem.decode(), "key": private_key_pem(leaf_key).decode()},
            "is not a CA",
        ),
        (
            "expired",
            {"cert": expired.cert_pem().decode(), "key": expired.private_key_pem().decode()},
            "expired at",
        ),
        (
            "wrong trust domain",
            {"cert": foreign.cert_pem().decode(), "key": foreign.private_key_pem().decode()},
            "trust domain 'other.example'",
        ),
        (
            "intermediate without its chain",
            {"cert": inter.cert_pem().decode(), "key": inter.private_key_pem().decode()},
            "self-signed root",
        ),
        (
            "chain that is not its issuer",
            {
                "cert": inter.cert_pem().decode(),
                "key": inter.private_key_pem().decode(),
                "chain": other.cert_pem().decode(),
            },
            "is not signed by",
        ),
    ]


async def test_bad_imports_are_refused_clearly_and_change_nothing(rig: Rig) -> None:
    before = await rig.dump()
    bundle = rig.cp.ca.bundle_path.read_bytes()
    for name, body, expected in bad_inputs():
        resp = await rig.call("POST", "/v1/ca/rotate", body=body)
        message = error_of(resp, 422, "invalid")
        assert expected in message, f"{name}: {message}"
        assert "\n" not in message, name
    resp = await rig.call("POST", "/v1/ca/rotate", body={"cert": 5})
    error_of(resp, 422, "invalid")
    resp = await rig.call("POST", "/v1/ca/rotate", body={"certificate": "x"})
    error_of(resp, 422, "invalid")
    assert await rig.dump() == before
    assert rig.cp.ca.bundle_path.read_bytes() == bundle
    assert rig.cp.ca.rotation is None
    assert not (rig.cp.ca.state_dir / "ca-keys").exists() or not any(
        (rig.cp.ca.state_dir / "ca-keys").glob("*.pem")
    )


async def test_import_an_intermediate_then_svids_chain_through_it(rig: Rig) -> None:
    old = rig.cp.ca.signer_fingerprint()
    root = make_ca()
    inter = root.create_intermediate()
    body = {
        "cert": inter.cert_pem().decode(),
        "key": inter.private_key_pem().decode(),
        "chain": root.cert_pem().decode(),
    }
    resp = await rig.call("POST", "/v1/ca/rotate", body=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["rotation"]["new"] == fingerprint(inter.cert)
    assert resp.json()["rotation"]["imported"]
    # No proxies: the rotation runs to its end at the next step.
    await rig.cp.ca.step()
    status = (await rig.call("GET", "/v1/ca")).json()
    assert status["rotation"]["phase"] == "done"
    assert status["signer"] == fingerprint(inter.cert)
    assert status["roots"] == [fingerprint(root.cert)]
    kinds = {c["fingerprint"]: (c["kind"], c["signing"]) for c in status["certificates"]}
    assert kinds == {
        fingerprint(root.cert): ("root", False),
        fingerprint(inter.cert): ("intermediate", True),
    }
    assert old not in kinds
    svid = rig.cp.ca.sign_svid(make_csr(generate_key(), PRICING), PRICING)
    assert svid.chain_pem == inter.cert_pem()
    assert verify_chain(svid.cert_pem, [svid.chain_pem], rig.cp.ca.bundle()) == PRICING
