"""Who may hold a proxy id: operators remove registrations, a cap per identity, takeover after a
serviceAccount change, bounded SVID reports, and the signer named by the signing call."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_peers import ActAsProxy
from cryptography import x509

from gossamer.control.api import create_app
from gossamer.control.registry import Registration, SvidStatus
from gossamer.control.server import ControlPlane
from gossamer.security.bundle import fingerprint
from gossamer.security.csr import generate_key, make_csr
from gossamer.security.spiffe import SpiffeId

API = "gossamer.dev/v1alpha1"
PRICING = SpiffeId.workload("gossamer.local", "default", "pricing")
WEB = SpiffeId.workload("gossamer.local", "default", "web")
REG = {"service": "pricing", "inbound": "127.0.0.1:1", "ready": True}


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, cp: ControlPlane, client: httpx.AsyncClient) -> None:
        self.cp = cp
        self.client = client
        self.admin = cp.admin_token_file.read_text().strip()

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        peer: str | None = None,
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        if peer is not None:
            headers["x-test-peer"] = peer
        return await self.client.request(method, path, headers=headers, json=body)

    async def token(self, role: str) -> str:
        resp = await self.call("POST", "/v1/tokens", self.admin, {"role": role})
        assert resp.status_code == 200, resp.text
        secret: str = resp.json()["token"]
        return secret


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    cp = await ControlPlane.open(
        tmp_path, clock=FakeClock(), debounce=0.01, max_registrations_per_identity=3
    )
    await cp.start()
    transport = httpx.ASGITransport(app=ActAsProxy(create_app(cp), cp))
    async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
        yield Rig(cp, client)
    await cp.close()


async def cache_has(cp: ControlPlane, key: str) -> None:
    """Wait for the resource cache to follow an apply (it watches the store)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 5
    while key not in cp.cache.resources:
        assert loop.time() < end, f"{key} did not reach the resource cache within 5s"
        await asyncio.sleep(0.01)


def error_of(resp: httpx.Response, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code
    message: str = error["message"]
    return message


async def test_an_operator_with_the_write_role_removes_a_registration(rig: Rig) -> None:
    assert (await rig.call("POST", "/v1/proxies/pricing-0/register", body=REG)).is_success
    viewer, editor = await rig.token("viewer"), await rig.token("editor")
    refused = await rig.call("DELETE", "/v1/proxies/pricing-0", viewer, peer="")
    assert "needs the editor or admin role" in error_of(refused, 403, "forbidden")
    nobody = await rig.call("DELETE", "/v1/proxies/pricing-0", peer="")
    error_of(nobody, 401, "unauthenticated")
    bad = await rig.call("DELETE", "/v1/proxies/pricing-0", "gso_nope.nope", peer="")
    error_of(bad, 401, "unauthenticated")
    assert rig.cp.registry.get("pricing-0") is not None

    done = await rig.call("DELETE", "/v1/proxies/pricing-0", editor, peer="")
    assert done.status_code == 200, done.text
    assert rig.cp.registry.get("pricing-0") is None
    again = await rig.call("DELETE", "/v1/proxies/pricing-0", editor, peer="")
    error_of(again, 404, "not_found")
    # A squatter's id removed by an operator: the real proxy registers it.
    squat = await rig.call(
        "POST",
        "/v1/proxies/pricing-1/register",
        body={**REG, "service": "web"},
        peer=str(WEB),
    )
    assert squat.is_success
    blocked = await rig.call("POST", "/v1/proxies/pricing-1/register", body=REG, peer=str(PRICING))
    assert "DELETE /v1/proxies/pricing-1" in error_of(blocked, 403, "forbidden")
    assert (await rig.call("DELETE", "/v1/proxies/pricing-1", editor, peer="")).is_success
    mine = await rig.call("POST", "/v1/proxies/pricing-1/register", body=REG, peer=str(PRICING))
    assert mine.is_success, mine.text


async def test_one_identity_cannot_register_unlimited_ids(rig: Rig) -> None:
    for i in range(3):
        assert (await rig.call("POST", f"/v1/proxies/p-{i}/register", body=REG)).is_success
    # Its own ids may be registered again.
    assert (await rig.call("POST", "/v1/proxies/p-2/register", body=REG)).is_success
    refused = await rig.call("POST", "/v1/proxies/p-3/register", body=REG)
    message = error_of(refused, 429, "too_many")
    assert f"{PRICING} already holds 3 proxy registrations, the limit is 3" in message
    assert rig.cp.registry.get("p-3") is None
    # Another identity is not affected.
    web = await rig.call("POST", "/v1/proxies/w-0/register", body={**REG, "service": "web"})
    assert web.is_success


async def test_the_services_identity_takes_over_after_its_account_changed(rig: Rig) -> None:
    assert (await rig.call("POST", "/v1/proxies/pricing-0/register", body=REG)).is_success
    # The service's account is still pricing: another identity may not take the id.
    stolen = await rig.call("POST", "/v1/proxies/pricing-0/register", body=REG, peer=str(WEB))
    error_of(stolen, 403, "forbidden")
    hb = await rig.call("POST", "/v1/proxies/pricing-0/heartbeat", body={}, peer=str(WEB))
    error_of(hb, 403, "forbidden")

    service = {
        "apiVersion": API,
        "kind": "Service",
        "metadata": {"name": "pricing"},
        "spec": {"serviceAccount": "web"},
    }
    applied = await rig.call("POST", "/v1/apply", rig.admin, {"resources": [service]})
    assert applied.status_code == 200, applied.text
    await cache_has(rig.cp, "Service/default/pricing")
    taken = await rig.call("POST", "/v1/proxies/pricing-0/register", body=REG, peer=str(WEB))
    assert taken.status_code == 200, taken.text
    reg = rig.cp.registry.get("pricing-0")
    assert reg is not None
    assert reg.identity == str(WEB)
    # The old owner is no longer the owner.
    old = await rig.call("POST", "/v1/proxies/pricing-0/heartbeat", body={}, peer=str(PRICING))
    assert f"registered by {WEB}" in error_of(old, 403, "forbidden")


@pytest.mark.parametrize(
    "not_after",
    ["NaN", "Infinity", "-Infinity", "1e300", "-1"],
)
async def test_an_unbounded_svid_time_is_refused_and_changes_nothing(
    rig: Rig, not_after: str
) -> None:
    assert (await rig.call("POST", "/v1/proxies/pricing-0/register", body=REG)).is_success
    before = rig.cp.registry.get("pricing-0")
    svid = f'{{"spiffeId": "{PRICING}", "serial": "ab", "notAfter": {not_after}}}'
    body = f'{{"ready": true, "svid": {svid}}}'
    resp = await rig.client.post(
        "/v1/proxies/pricing-0/heartbeat",
        content=body,
        headers={"content-type": "application/json"},
    )
    message = error_of(resp, 422, "invalid")
    assert "svid.notAfter" in message
    assert rig.cp.registry.get("pricing-0") == before
    assert (await rig.call("GET", "/v1/ca", rig.admin)).status_code == 200
    assert (await rig.call("GET", "/v1/proxies", rig.admin)).status_code == 200


async def test_a_bad_stored_time_does_not_break_the_readers(rig: Rig) -> None:
    """A registration written before reports were bounded: the listings still answer."""
    await rig.cp.registry.register(
        Registration(
            proxy_id="old-0",
            service="pricing",
            inbound="127.0.0.1:1",
            svid=SvidStatus(spiffe_id=str(PRICING), serial="1", not_after=math.nan, signer=""),
            identity=str(PRICING),
        )
    )
    status = await rig.call("GET", "/v1/ca", rig.admin)
    assert status.status_code == 200, status.text
    (proxy,) = status.json()["proxies"]
    assert proxy["svid"] is None
    listed = await rig.call("GET", "/v1/proxies", rig.admin)
    assert listed.status_code == 200, listed.text
    assert listed.json()["items"][0]["svid"]["notAfter"] is None


async def test_a_bootstrap_token_lives_an_hour_at_most(rig: Rig) -> None:
    too_long = await rig.call(
        "POST", "/v1/tokens/bootstrap", rig.admin, {"serviceAccount": "pricing", "ttl": 3601}
    )
    assert "ttl" in error_of(too_long, 422, "invalid")
    hour = await rig.call(
        "POST", "/v1/tokens/bootstrap", rig.admin, {"serviceAccount": "pricing", "ttl": 3600}
    )
    assert hour.status_code == 200, hour.text
    default = await rig.call("POST", "/v1/tokens/bootstrap", rig.admin, {"serviceAccount": "x"})
    info = rig.cp.tokens.info(default.json()["id"])
    assert info is not None
    assert info.expires == info.created + 600


async def test_the_answer_names_the_ca_that_signed_even_if_issuing_switched_meanwhile(
    rig: Rig,
) -> None:
    """A rotation's switch between the signing and the answer (while the token's use is
    written): the answer still names the CA that signed the SVID."""
    signed_by = rig.cp.ca.ca.cert
    token = await rig.call("POST", "/v1/tokens/bootstrap", rig.admin, {"serviceAccount": "pricing"})
    flush = rig.cp.tokens.flush

    async def flush_then_switch() -> None:
        await flush()
        rig.cp.tokens.flush = flush  # type: ignore[method-assign]
        await rig.cp.ca.start_rotation()
        await rig.cp.ca.step()  # no proxies: the new CA issues at once

    rig.cp.tokens.flush = flush_then_switch  # type: ignore[method-assign]
    resp = await rig.call(
        "POST",
        "/v1/svid",
        body={"csr": make_csr(generate_key(), PRICING).decode(), "token": token.json()["token"]},
    )
    assert resp.status_code == 200, resp.text
    assert rig.cp.ca.signer_fingerprint() != fingerprint(signed_by)
    leaf = x509.load_pem_x509_certificate(resp.json()["chain"].encode())
    leaf.verify_directly_issued_by(signed_by)
    assert resp.json()["signer"] == fingerprint(signed_by)
