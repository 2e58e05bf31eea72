"""Deleting a Service that routes or policies still name is refused; those go freely."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_peers import ActAsProxy

from gossamer.control.api import create_app
from gossamer.control.server import ControlPlane


def admin_headers(cp: ControlPlane) -> dict[str, str]:
    """The first admin token, as `gossamer up` users get it from the state dir."""
    return {"authorization": "Bearer " + cp.admin_token_file.read_text().strip()}


API = "gossamer.dev/v1alpha1"


class FakeClock:
    def __call__(self) -> float:
        return 1_700_000_000.0


def res(kind: str, name: str, spec: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
    meta = {"name": name, "namespace": namespace}
    return {"apiVersion": API, "kind": kind, "metadata": meta, "spec": spec}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    cp = await ControlPlane.open(tmp_path, clock=FakeClock(), debounce=0.01)
    await cp.start()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=ActAsProxy(create_app(cp), cp)),
        base_url="http://cp",
        headers=admin_headers(cp),
    ) as c:
        yield c
    await cp.close()


async def test_service_in_use_cannot_be_deleted(client: httpx.AsyncClient) -> None:
    resources = [
        res("Service", "pricing", {}),
        res("Service", "cart", {}),
        res("Service", "pricing", {}, namespace="other"),
        res("HTTPRoute", "pricing", {"parentRefs": [{"name": "pricing"}]}),
        res(
            "HTTPRoute",
            "cart",
            {
                "parentRefs": [{"name": "cart"}],
                "rules": [{"backendRefs": [{"name": "cart"}, {"name": "pricing"}]}],
            },
        ),
        res("DestinationPolicy", "pricing", {"targetRef": {"name": "pricing"}}),
        # Names "pricing" in its own namespace: not a user of default/pricing.
        res("DestinationPolicy", "pricing", {"targetRef": {"name": "pricing"}}, "other"),
    ]
    applied = await client.post("/v1/apply", json={"resources": resources})
    assert applied.status_code == 200, applied.text
    revision = applied.json()["revision"]

    resp = await client.delete("/v1/resources/Service/default/pricing")
    assert resp.status_code == 409, resp.text
    error = resp.json()["error"]
    assert error["code"] == "conflict"
    assert error["message"] == (
        "Service default/pricing is used by DestinationPolicy default/pricing, "
        "HTTPRoute default/cart, HTTPRoute default/pricing; delete or change those first"
    )
    assert error["details"] == [
        {"path": "DestinationPolicy/default/pricing", "message": "spec.targetRef names it"},
        {"path": "HTTPRoute/default/cart", "message": "spec.rules[0].backendRefs[1] names it"},
        {"path": "HTTPRoute/default/pricing", "message": "spec.parentRefs[0] names it"},
    ]
    assert (await client.get("/v1/resources/Service/default/pricing")).status_code == 200
    assert (await client.get("/healthz")).json()["revision"] == revision

    # Routes and policies are deleted freely; once nothing names the Service, it goes too.
    for path in (
        "HTTPRoute/default/pricing",
        "HTTPRoute/default/cart",
        "DestinationPolicy/default/pricing",
    ):
        assert (await client.delete(f"/v1/resources/{path}")).status_code == 200
    assert (await client.delete("/v1/resources/Service/default/pricing")).status_code == 200
    # The policy in "other" keeps other/pricing, but not the deleted default/cart route's target.
    other = await client.delete("/v1/resources/Service/other/pricing")
    assert other.status_code == 409
    assert (await client.delete("/v1/resources/Service/default/cart")).status_code == 200


async def test_missing_service_is_still_not_found(client: httpx.AsyncClient) -> None:
    resp = await client.delete("/v1/resources/Service/default/nothing")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
