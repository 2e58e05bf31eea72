"""API bounds: body size, resources per apply, details per error, malformed JSON, and applies that
validate off the event loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_peers import ActAsProxy

from gossamer.control.api import MAX_APPLY_RESOURCES, MAX_DETAILS, create_app
from gossamer.control.server import ControlPlane


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


def assert_error(resp: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    error: dict[str, Any] = resp.json()["error"]
    assert set(resp.json()) == {"error"}
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == code
    assert "\n" not in error["message"]
    assert "Traceback" not in resp.text
    return error


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    cp = await ControlPlane.open(tmp_path, clock=FakeClock(), debounce=0.01)
    await cp.start()
    app = ActAsProxy(create_app(cp, max_body_bytes=64 * 1024), cp)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://cp", headers=admin_headers(cp)
    ) as c:
        yield c
    await cp.close()


async def test_body_over_the_limit_by_content_length(client: httpx.AsyncClient) -> None:
    body = b'{"resources": [' + b" " * (64 * 1024) + b"]}"
    resp = await client.post(
        "/v1/apply", content=body, headers={"content-type": "application/json"}
    )
    error = assert_error(resp, 413, "too_large")
    assert error["message"] == "request body is larger than the limit of 65536 bytes"


async def test_body_over_the_limit_without_content_length(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"resources": ['
        for _ in range(20):  # bounded: 80 KiB in all, over the 64 KiB limit
            yield b" " * 4096
        yield b"]}"

    resp = await client.post(
        "/v1/apply", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(resp, 413, "too_large")
    # The limit is per request: a small one still works afterwards.
    ok = await client.post("/v1/apply", json={"resources": [svc("pricing")]})
    assert ok.status_code == 200, ok.text


async def test_too_many_resources(tmp_path: Path) -> None:
    cp = await ControlPlane.open(tmp_path, clock=FakeClock(), debounce=0.01)
    await cp.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=ActAsProxy(create_app(cp), cp)),
            base_url="http://cp",
            headers=admin_headers(cp),
        ) as c:
            resp = await c.post("/v1/apply", json={"resources": [{}] * (MAX_APPLY_RESOURCES + 1)})
            error = assert_error(resp, 422, "invalid")
            assert f"the limit is {MAX_APPLY_RESOURCES}" in error["message"]
            assert error["details"][0]["path"] == "resources"
    finally:
        await cp.close()


async def test_details_are_capped(client: httpx.AsyncClient) -> None:
    resp = await client.post("/v1/apply", json={"resources": [{"kind": "Service"}] * 150})
    error = assert_error(resp, 422, "invalid")
    details = error["details"]
    assert len(details) == MAX_DETAILS + 1
    assert details[-1] == {"path": "", "message": "... and 200 more problems"}
    assert "(and 299 more)" in error["message"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{nope", "request body is not valid JSON: Expecting property name"),
        (b'{"resources": [1,]}', "at character 17"),
        (b"[" * 20_000, "request body is not valid JSON: nested too deeply"),
        (b'{"resources": ' + b'{"a":' * 5_000, "request body is not valid JSON"),
        (b"\xff\xfe{", "request body is not valid JSON"),
    ],
)
async def test_malformed_json_is_a_400(
    client: httpx.AsyncClient, body: bytes, fragment: str
) -> None:
    for path in ("/v1/apply", "/v1/proxies/p/register"):
        resp = await client.post(path, content=body, headers={"content-type": "application/json"})
        error = assert_error(resp, 400, "bad_request")
        assert fragment in error["message"]
        assert "There was an error parsing the body" not in resp.text


async def test_apply_validates_off_the_event_loop(tmp_path: Path) -> None:
    """A big apply must not stall the loop: heartbeats and polls are answered meanwhile."""
    cp = await ControlPlane.open(tmp_path, clock=FakeClock(), debounce=0.01)
    await cp.start()
    routes: list[dict[str, Any]] = [
        {
            "apiVersion": API,
            "kind": "HTTPRoute",
            "metadata": {"name": f"r{i}"},
            "spec": {
                "parentRefs": [{"name": "pricing"}],
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": f"/p{j}"}}],
                        "backendRefs": [{"name": "pricing"}],
                    }
                    for j in range(4)
                ],
            },
        }
        for i in range(MAX_APPLY_RESOURCES - 1)
    ]
    body = json.dumps({"resources": [svc("pricing"), *routes]})
    loop = asyncio.get_running_loop()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=ActAsProxy(create_app(cp), cp)),
            base_url="http://cp",
            headers=admin_headers(cp),
            timeout=60,
        ) as c:
            started = loop.time()
            task = asyncio.create_task(
                c.post(
                    "/v1/apply?dryRun=true",
                    content=body,
                    headers={"content-type": "application/json"},
                )
            )
            gaps: list[float] = []
            last = loop.time()
            deadline = started + 60
            while not task.done() and loop.time() < deadline:
                await asyncio.sleep(0)
                now = loop.time()
                gaps.append(now - last)
                last = now
            resp = await task
            elapsed = loop.time() - started
    finally:
        await cp.close()
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["results"]) == MAX_APPLY_RESOURCES
    # Validation is most of the time; had it run on the loop, one gap would be about that long.
    assert max(gaps) < elapsed / 3, (max(gaps), elapsed)
