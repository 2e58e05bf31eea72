"""`GET /v1/stats` and `GET /metrics` on a real control plane whose rolling window scrapes real
/metrics servers on loopback (serving golden families as a sidecar renders them)."""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_peers import ActAsProxy
from test_telemetry_window import FakeProxy, serve_metrics

from gossamer.control.api import create_app
from gossamer.control.server import ControlPlane

DEADLINE = 10.0
PROMTOOL = shutil.which("promtool")


class Rig:
    def __init__(self, cp: ControlPlane, client: httpx.AsyncClient) -> None:
        self.cp = cp
        self.client = client
        self.admin = cp.admin_token_file.read_text().strip()

    async def call(
        self, method: str, path: str, token: str | None = "", body: Any = None
    ) -> httpx.Response:
        token = self.admin if token == "" else token
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return await self.client.request(method, path, headers=headers, json=body)

    async def scrapes(self, count: int) -> None:
        """Wait until the window has scraped `count` more times."""
        async with asyncio.timeout(DEADLINE):
            await self.cp.telemetry.wait_scrapes(count)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    cp = await ControlPlane.open(
        tmp_path, clock=lambda: 1_700_000_000.0, telemetry_interval=0.1, telemetry_retention=60
    )
    await cp.start()
    transport = httpx.ASGITransport(app=ActAsProxy(create_app(cp), cp))
    async with httpx.AsyncClient(transport=transport, base_url="http://cp") as client:
        yield Rig(cp, client)
    await cp.close()


@pytest.fixture
async def sidecar() -> AsyncIterator[tuple[str, FakeProxy]]:
    async with serve_metrics() as (admin, proxy, _):
        yield admin, proxy


def register_body(service: str, admin: str) -> dict[str, Any]:
    return {"service": service, "inbound": "127.0.0.1:9", "admin": admin, "appPort": 8080}


async def test_stats_by_service_route_and_edge(rig: Rig, sidecar: tuple[str, FakeProxy]) -> None:
    admin, proxy = sidecar
    resp = await rig.call(
        "POST", "/v1/proxies/pricing-0/register", None, register_body("pricing", admin)
    )
    assert resp.status_code == 200, resp.text
    resp = await rig.call("POST", "/v1/proxies/idle-0/register", None, register_body("idle", ""))
    assert resp.status_code == 200, resp.text
    await rig.scrapes(2)
    proxy.hit(40, 0.004, direction="inbound", src="frontend.default", dst="pricing.default")
    proxy.hit(10, 0.3, status=500, direction="inbound", dst="pricing.default")
    proxy.hit(20, 0.004, dst="tax.default", src="pricing.default", route="default/tax#0")
    await rig.scrapes(2)

    resp = await rig.call("GET", "/v1/stats?by=service&window=30s")
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["by"] == "service"
    assert doc["window"] == 30.0
    rows = {r["name"]: r for r in doc["items"]}
    assert set(rows) == {"pricing.default", "idle.default"}
    assert rows["pricing.default"]["requests"] == 50
    assert rows["pricing.default"]["successRate"] == pytest.approx(0.8)
    assert rows["pricing.default"]["rps"] > 0
    assert rows["pricing.default"]["p50"] <= 0.005
    assert 0.25 < rows["pricing.default"]["p99"] <= 0.5
    assert rows["idle.default"]["requests"] == 0
    assert rows["idle.default"]["successRate"] is None

    edges = (await rig.call("GET", "/v1/stats?by=edge&service=tax")).json()["items"]
    assert [(e["source"], e["destination"], e["requests"]) for e in edges] == [
        ("pricing.default", "tax.default", 20)
    ]
    routes = (await rig.call("GET", "/v1/stats?by=route")).json()["items"]
    assert [(r["name"], r["service"], r["successRate"]) for r in routes] == [
        ("default/tax#0", "tax.default", 1.0)
    ]
    only = (await rig.call("GET", "/v1/stats?service=pricing.default")).json()["items"]
    assert [r["name"] for r in only] == ["pricing.default"]


async def test_stats_refuses_bad_queries_in_words(rig: Rig) -> None:
    cases = {
        "/v1/stats?by=pods": "by: must be one of service, route, edge, got 'pods'",
        "/v1/stats?window=soon": "window: 'soon' is not a duration",
        "/v1/stats?window=1h": "longer than the 60s the control plane keeps",
        "/v1/stats?window=10ms": "shorter than the scrape interval",
    }
    for path, words in cases.items():
        resp = await rig.call("GET", path)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] == "bad_request"
        assert words in resp.json()["error"]["message"]
    resp = await rig.call("GET", "/v1/stats", token=None)
    assert resp.status_code == 401
    viewer = (await rig.call("POST", "/v1/tokens", body={"role": "viewer"})).json()["token"]
    assert (await rig.call("GET", "/v1/stats", token=viewer)).status_code == 200
    assert (await rig.call("GET", "/metrics", token=viewer)).status_code == 200


async def test_control_plane_metrics(rig: Rig) -> None:
    reg = register_body("pricing", "")
    assert (await rig.call("POST", "/v1/proxies/pricing-0/register", None, reg)).is_success
    snap = await rig.call("GET", "/v1/proxies/pricing-0/snapshot", None)
    version = snap.json()["version"]
    ack = {"version": version, "status": "NACK", "error": "bad"}
    assert (await rig.call("POST", "/v1/proxies/pricing-0/ack", None, ack)).is_success
    ack = {"version": version, "status": "ACK"}
    assert (await rig.call("POST", "/v1/proxies/pricing-0/ack", None, ack)).is_success
    # No client certificate: refused before routing, counted under its route all the same.
    refused = await rig.client.get("/v1/proxies/nobody/snapshot", headers={"x-test-peer": ""})
    assert refused.status_code == 401
    assert (await rig.call("GET", "/no/such/thing")).status_code == 404
    resp = await rig.call("GET", "/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = resp.text
    assert "gossamer_controlplane_proxies_connected 1" in text
    assert "gossamer_controlplane_nacks_total 1" in text
    # The first answer to a version is timed, the second one is not.
    assert "gossamer_controlplane_push_latency_seconds_count 1" in text
    assert "gossamer_controlplane_store_revision " in text
    assert (
        'gossamer_controlplane_api_requests_total{method="POST",'
        'route="/v1/proxies/{proxy_id}/ack",code="200"} 2'
    ) in text
    assert (
        'gossamer_controlplane_api_requests_total{method="GET",'
        'route="/v1/proxies/{proxy_id}/snapshot",code="401"} 1'
    ) in text
    assert 'route="unmatched",code="404"' in text
    assert "nobody" not in text
    if PROMTOOL is not None:  # Debian's prometheus package (scripts/install-system-deps)
        proc = await asyncio.create_subprocess_exec(
            PROMTOOL,
            "check",
            "metrics",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(30):
            words, _ = await proc.communicate(resp.content)
        assert proc.returncode == 0, words.decode()


def test_control_plane_metrics_are_documented() -> None:
    """docs/metrics.md "Control plane metrics" lists exactly the families, types and labels the
    control plane registers (the sidecar's tables are checked by tests/telemetry)."""
    from gossamer.control.metrics import ControlPlaneMetrics

    doc = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
    row = re.compile(r"^\| `(gossamer_controlplane_[a-z_]+)` \| `([a-z]+)` \| ([^|]*) \|")
    documented = {}
    for line in doc.read_text(encoding="utf-8").splitlines():
        m = row.match(line)
        if m:
            documented[m[1]] = (m[2], tuple(re.findall(r"`([a-z_]+)`", m[3])))
    registry = ControlPlaneMetrics().registry
    real = {}
    for line in registry.render().decode().splitlines():
        if line.startswith("# TYPE "):
            metric = registry.get(line.split()[2])
            assert metric is not None
            real[metric.name] = (metric.type_name, metric.labelnames)
    assert documented == real
