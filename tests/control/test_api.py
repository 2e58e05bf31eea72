"""The HTTP API end to end in-process: a real store, registry, translator and distributor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_peers import ActAsProxy

from gossamer import snapshot as snap
from gossamer.config.models import Resource
from gossamer.control.api import create_app
from gossamer.control.registry import Registration
from gossamer.control.server import ControlPlane
from gossamer.control.translate import Trust


def admin_headers(cp: ControlPlane) -> dict[str, str]:
    """The first admin token, as `gossamer up` users get it from the state dir."""
    return {"authorization": "Bearer " + cp.admin_token_file.read_text().strip()}


API = "gossamer.dev/v1alpha1"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def svc(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "Service", "metadata": {"name": name}, "spec": spec}


def route(name: str, parent: str, backend: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {"parentRefs": [{"name": parent}], "rules": [{"backendRefs": [{"name": backend}]}]},
    }


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code
    assert isinstance(error["message"], str)
    assert "\n" not in error["message"]
    assert "Traceback" not in resp.text
    return error


class Harness:
    def __init__(self, cp: ControlPlane, client: httpx.AsyncClient, clock: FakeClock) -> None:
        self.cp = cp
        self.client = client
        self.clock = clock


async def start(state_dir: Path, translate: Any = None) -> tuple[ControlPlane, httpx.AsyncClient]:
    clock = FakeClock()
    cp = await ControlPlane.open(state_dir, clock=clock, translate=translate, debounce=0.01)
    await cp.start()
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=ActAsProxy(create_app(cp), cp)),
        base_url="http://cp",
        headers=admin_headers(cp),
    )
    return cp, client


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    cp, client = await start(tmp_path)
    assert isinstance(cp.registry._clock, FakeClock)
    yield Harness(cp, client, cp.registry._clock)
    await client.aclose()
    await cp.close()


async def test_healthz_and_openapi(h: Harness) -> None:
    resp = await h.client.get("/healthz")
    # The mesh CA's root and the first admin token are the store's first writes.
    assert resp.json() == {"status": "ok", "revision": await h.cp.store.revision()}
    spec = (await h.client.get("/openapi.json")).json()
    assert "/v1/apply" in spec["paths"]
    assert "/v1/proxies/{proxy_id}/snapshot" in spec["paths"]


async def test_apply_created_configured_unchanged(h: Harness) -> None:
    first = await h.client.post("/v1/apply", json={"resources": [svc("pricing"), svc("cart")]})
    assert first.status_code == 200, first.text
    assert first.json()["results"] == [
        {"key": "Service/default/pricing", "action": "created"},
        {"key": "Service/default/cart", "action": "created"},
    ]
    rev = first.json()["revision"]
    again = await h.client.post(
        "/v1/apply",
        json={"resources": [svc("pricing"), svc("cart", ports=[{"port": 9090}])]},
    )
    assert [r["action"] for r in again.json()["results"]] == ["unchanged", "configured"]
    assert again.json()["revision"] == rev + 1
    same = await h.client.post("/v1/apply", json={"resources": [svc("pricing")]})
    assert same.json()["revision"] == rev + 1  # nothing written


async def test_dry_run_validates_only(h: Harness) -> None:
    resp = await h.client.post("/v1/apply?dryRun=true", json={"resources": [svc("pricing")]})
    assert resp.json()["results"] == [{"key": "Service/default/pricing", "action": "created"}]
    assert_error(await h.client.get("/v1/resources/Service/default/pricing"), 404, "not_found")
    bad = await h.client.post(
        "/v1/apply?dryRun=true", json={"resources": [route("r", "pricing", "pricing")]}
    )
    assert_error(bad, 422, "invalid")


async def test_unknown_service_rejected_with_suggestion_all_or_nothing(h: Harness) -> None:
    """A batch with a dangling reference writes nothing, and says what was probably meant."""
    before = (await h.client.get("/healthz")).json()["revision"]
    resp = await h.client.post(
        "/v1/apply", json={"resources": [svc("pricing"), route("to-pricing", "pricing", "pricng")]}
    )
    error = assert_error(resp, 422, "invalid")
    assert "did you mean 'pricing'" in error["message"]
    assert error["details"][0]["path"] == "resources[1].spec.rules[0].backendRefs[0].name"
    assert_error(await h.client.get("/v1/resources/Service/default/pricing"), 404, "not_found")
    assert (await h.client.get("/healthz")).json()["revision"] == before


async def test_reference_to_stored_service_is_accepted(h: Harness) -> None:
    """References are checked after merging the batch with what is stored."""
    await h.client.post("/v1/apply", json={"resources": [svc("pricing")]})
    resp = await h.client.post("/v1/apply", json={"resources": [route("r", "pricing", "pricing")]})
    assert resp.status_code == 200, resp.text


async def test_invalid_resource_has_field_path(h: Harness) -> None:
    resp = await h.client.post(
        "/v1/apply", json={"resources": [svc("ok"), svc("pricing", ports=[{"port": 70000}])]}
    )
    error = assert_error(resp, 422, "invalid")
    assert error["details"] == [
        {"path": "resources[1].spec.ports[0].port", "message": "must be <= 65535"}
    ]
    assert "resources[1].spec.ports[0].port" in error["message"]


async def test_request_validation_errors_have_the_shape(h: Harness) -> None:
    error = assert_error(await h.client.post("/v1/apply", json=[1, 2]), 422, "invalid")
    assert error["details"][0]["path"] == "body"
    not_json = await h.client.post(
        "/v1/apply", content=b"{nope", headers={"content-type": "application/json"}
    )
    bad = assert_error(not_json, 400, "bad_request")
    assert bad["message"].startswith("request body is not valid JSON: ")
    assert "at character 1" in bad["message"]
    missing = assert_error(await h.client.post("/v1/apply", json={}), 422, "invalid")
    assert missing["details"][0]["path"] == "resources"
    await h.client.post(
        "/v1/proxies/p/register", json={"service": "a", "inbound": "127.0.0.1:1", "ready": True}
    )
    wait = assert_error(await h.client.get("/v1/proxies/p/snapshot?wait=-1"), 422, "invalid")
    assert wait["details"][0]["path"] == "query.wait"


async def test_get_list_delete(h: Harness) -> None:
    applied = await h.client.post(
        "/v1/apply",
        json={"resources": [svc("pricing"), svc("cart"), route("r", "pricing", "cart")]},
    )
    got = (await h.client.get("/v1/resources/HTTPRoute/default/r")).json()
    assert got["kind"] == "HTTPRoute"
    assert got["spec"]["parentRefs"] == [{"name": "pricing"}]

    listed = (await h.client.get("/v1/resources?kind=Service")).json()
    assert [i["metadata"]["name"] for i in listed["items"]] == ["cart", "pricing"]
    assert listed["revision"] == applied.json()["revision"]
    everything = (await h.client.get("/v1/resources?namespace=default")).json()
    assert len(everything["items"]) == 3
    assert (await h.client.get("/v1/resources?namespace=other")).json()["items"] == []

    deleted = await h.client.delete("/v1/resources/HTTPRoute/default/r")
    assert deleted.json() == {
        "key": "HTTPRoute/default/r",
        "revision": applied.json()["revision"] + 1,
    }
    assert_error(await h.client.delete("/v1/resources/HTTPRoute/default/r"), 404, "not_found")
    bad_kind = assert_error(await h.client.get("/v1/resources?kind=Servce"), 400, "bad_request")
    assert "did you mean 'Service'" in bad_kind["message"]


async def test_unknown_route_and_method(h: Harness) -> None:
    error = assert_error(await h.client.get("/v2/nothing"), 404, "not_found")
    assert "/v2/nothing" in error["message"]
    assert_error(await h.client.put("/v1/apply"), 405, "bad_request")


async def test_internal_error_has_the_shape(tmp_path: Path) -> None:
    """A failure inside the control plane answers 500 in the error shape, with no traceback."""

    def broken(
        resources: Sequence[Resource],
        endpoints: Sequence[Registration],
        proxy: snap.ProxyIdentity,
        *,
        trust: Trust | None = None,
    ) -> snap.Snapshot:
        raise ZeroDivisionError("boom")

    cp, client = await start(tmp_path, translate=broken)
    try:
        await client.post(
            "/v1/proxies/p/register", json={"service": "a", "inbound": "127.0.0.1:1", "ready": True}
        )
        error = assert_error(await client.get("/v1/proxies/p/snapshot"), 500, "internal")
        assert "boom" not in error["message"]
    finally:
        await client.aclose()
        await cp.close()


async def register(h: Harness, proxy_id: str, service: str = "pricing", **extra: Any) -> None:
    body = {
        "service": service,
        "namespace": "default",
        "subset": "v1",
        "labels": {"version": "v1"},
        "zone": "z1",
        "inbound": "127.0.0.1:4100",
        "outbound": "127.0.0.1:4101",
        "admin": "127.0.0.1:4102",
        "appPort": 8080,
        "ready": True,
        **extra,
    }
    resp = await h.client.post(f"/v1/proxies/{proxy_id}/register", json=body)
    assert resp.json() == {"heartbeatInterval": 1.0}


async def test_proxy_flow_register_heartbeat_poll_ack(h: Harness) -> None:
    await h.client.post("/v1/apply", json={"resources": [svc("pricing")]})
    await register(h, "pricing-v1-0")
    assert (
        await h.client.post("/v1/proxies/pricing-v1-0/heartbeat", json={"ready": True})
    ).is_success
    hb = await h.client.post("/v1/proxies/ghost/heartbeat", json={"ready": True})
    assert "register" in assert_error(hb, 404, "not_found")["message"]

    resp = await h.client.get(
        "/v1/proxies/pricing-v1-0/snapshot", params={"version": "", "wait": 5}
    )
    assert resp.status_code == 200
    snapshot = snap.decode(resp.content)
    assert snapshot.proxy.proxy_id == "pricing-v1-0"
    assert snapshot.listeners.inbound is not None
    assert snapshot.listeners.inbound.app_port == 8080
    cluster = next(c for c in snapshot.clusters if c.name == "pricing.default")
    assert [e.address for e in cluster.endpoints] == ["127.0.0.1:4100"]

    same = await h.client.get(
        "/v1/proxies/pricing-v1-0/snapshot", params={"version": snapshot.version, "wait": 0.05}
    )
    assert same.status_code == 304
    assert same.content == b""

    ack = await h.client.post(
        "/v1/proxies/pricing-v1-0/ack", json={"version": snapshot.version, "status": "ACK"}
    )
    assert ack.status_code == 200
    (item,) = (await h.client.get("/v1/proxies")).json()["items"]
    assert item["proxyId"] == "pricing-v1-0"
    assert item["state"] == "ACK"
    assert item["sentVersion"] == item["ackedVersion"] == snapshot.version
    assert item["admin"] == "127.0.0.1:4102"
    assert item["lastContact"] == h.clock.now

    (ep,) = (await h.client.get("/v1/endpoints?service=pricing")).json()["items"]
    assert ep == {
        "proxyId": "pricing-v1-0",
        "service": "pricing",
        "namespace": "default",
        "subset": "v1",
        "labels": {"version": "v1"},
        "zone": "z1",
        "address": "127.0.0.1:4100",
        "ready": True,
        "healthy": True,
        "lastHeartbeat": h.clock.now,
    }
    assert (await h.client.get("/v1/endpoints?service=other")).json() == {"items": []}

    assert (await h.client.delete("/v1/proxies/pricing-v1-0")).status_code == 200
    assert_error(await h.client.delete("/v1/proxies/pricing-v1-0"), 404, "not_found")
    assert_error(await h.client.get("/v1/proxies/pricing-v1-0/snapshot"), 404, "not_found")
    assert (await h.client.get("/v1/proxies")).json() == {"items": []}


async def test_nack_is_recorded(h: Harness) -> None:
    await register(h, "p-0")
    version = snap.decode((await h.client.get("/v1/proxies/p-0/snapshot")).content).version
    resp = await h.client.post(
        "/v1/proxies/p-0/ack",
        json={"version": version, "status": "NACK", "error": "cluster x: no endpoints"},
    )
    assert resp.status_code == 200
    (item,) = (await h.client.get("/v1/proxies")).json()["items"]
    assert (item["state"], item["error"]) == ("NACK", "cluster x: no endpoints")
    assert item["ackedVersion"] is None
    bad = await h.client.post("/v1/proxies/p-0/ack", json={"version": version, "status": "MAYBE"})
    assert assert_error(bad, 422, "invalid")["details"][0]["path"] == "status"


async def test_long_poll_returns_promptly_on_apply(h: Harness) -> None:
    """A proxy waiting on its snapshot gets the new one within a second of an apply."""
    await register(h, "p-0")
    version = snap.decode((await h.client.get("/v1/proxies/p-0/snapshot")).content).version
    loop = asyncio.get_running_loop()
    poll = asyncio.create_task(
        h.client.get("/v1/proxies/p-0/snapshot", params={"version": version, "wait": 30})
    )
    await asyncio.sleep(0.05)  # let the poll reach its wait; correctness does not depend on it
    assert not poll.done()
    started = loop.time()
    await h.client.post("/v1/apply", json={"resources": [svc("pricing"), svc("cart")]})
    resp = await asyncio.wait_for(poll, 5)
    assert loop.time() - started < 1.0
    assert resp.status_code == 200
    names = {vh.name for vh in snap.decode(resp.content).virtual_hosts}
    assert names == {"pricing.default", "cart.default"}


async def test_silent_proxy_turns_unhealthy_and_stale(h: Harness) -> None:
    await register(h, "p-0")
    await register(h, "p-1", inbound="127.0.0.1:4200")
    h.clock.now += 2
    assert (await h.client.post("/v1/proxies/p-1/heartbeat")).is_success  # no body: still ready
    h.clock.now += 1.5  # p-0 silent for 3.5 s, p-1 for 1.5 s
    assert h.cp.registry.sweep()
    items = (await h.client.get("/v1/endpoints")).json()["items"]
    assert [(i["proxyId"], i["healthy"]) for i in items] == [("p-0", False), ("p-1", True)]
    states = {i["proxyId"]: i["state"] for i in (await h.client.get("/v1/proxies")).json()["items"]}
    assert states == {"p-0": "STALE", "p-1": "PENDING"}


async def test_register_validates_body(h: Harness) -> None:
    resp = await h.client.post(
        "/v1/proxies/p/register", json={"service": "a", "inbound": "nowhere"}
    )
    error = assert_error(resp, 422, "invalid")
    assert error["details"][0]["path"] == "inbound"
    assert "host:port" in error["details"][0]["message"]


async def test_state_survives_control_plane_restart(tmp_path: Path) -> None:
    """Resources and registrations come back from the store; endpoints are served at once."""
    cp, client = await start(tmp_path)
    await client.post("/v1/apply", json={"resources": [svc("pricing")]})
    await client.post(
        "/v1/proxies/p-0/register",
        json={"service": "pricing", "inbound": "127.0.0.1:4100", "ready": True, "appPort": 1},
    )
    await client.aclose()
    await cp.close()

    cp, client = await start(tmp_path)
    try:
        resp = await client.get("/v1/proxies/p-0/snapshot")
        cluster = next(c for c in snap.decode(resp.content).clusters if c.name == "pricing.default")
        assert [(e.address, e.healthy) for e in cluster.endpoints] == [("127.0.0.1:4100", True)]
        assert (await client.post("/v1/proxies/p-0/heartbeat", json={"ready": True})).is_success
    finally:
        await client.aclose()
        await cp.close()
