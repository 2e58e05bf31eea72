"""`gossamer stat` against a real HTTPS control plane whose window scrapes a /metrics server."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from test_ca_cli import Served, gossamer, serve

from gossamer.control.registry import Registration
from gossamer.control.server import ControlPlane

sys.path.insert(0, str(Path(__file__).parent.parent / "control"))
from test_telemetry_window import FakeProxy, serve_metrics

DEADLINE = 10.0


async def scrapes(cp: ControlPlane, count: int) -> None:
    async with asyncio.timeout(DEADLINE):
        await cp.telemetry.wait_scrapes(count)


@pytest.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    async with serve(tmp_path / "cp") as s:
        # Scrape fast, so the test sees two samples within a fraction of a second.
        s.cp.telemetry.interval = 0.1
        s.cp.telemetry.timeout = 0.1
        monkeypatch.setenv("GOSSAMER_TOKEN", s.cp.admin_token_file.read_text().strip())
        monkeypatch.setenv("GOSSAMER_CA_BUNDLE", str(s.cp.ca.bundle_path))
        monkeypatch.setenv("GOSSAMER_STATE_DIR", str(tmp_path / "no-mesh"))
        yield s


@pytest.fixture
async def sidecar() -> AsyncIterator[tuple[str, FakeProxy]]:
    async with serve_metrics() as (admin, proxy, _):
        yield admin, proxy


async def test_stat_tables_and_json(
    served: Served, sidecar: tuple[str, FakeProxy], capsys: pytest.CaptureFixture[str]
) -> None:
    admin, proxy = sidecar
    await served.cp.registry.register(
        Registration(proxy_id="pricing-0", service="pricing", inbound="127.0.0.1:9", admin=admin)
    )
    await scrapes(served.cp, 2)
    proxy.hit(90, 0.004, direction="inbound", dst="pricing.default")
    proxy.hit(10, 0.004, status=503, direction="inbound", dst="pricing.default")
    proxy.hit(20, 0.02, src="pricing.default", dst="tax.default", route="default/tax#0")
    await scrapes(served.cp, 2)

    code, out, err = await gossamer(capsys, served, "stat")
    assert code == 0, err
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "SUCCESS", "RPS", "P50", "P95", "P99"]
    assert row.split()[:2] == ["pricing.default", "90.00%"]
    assert row.split()[2].endswith("rps")

    code, out, err = await gossamer(capsys, served, "stat", "edges", "--window", "30s")
    assert code == 0, err
    assert out.splitlines()[0].split()[:2] == ["SOURCE", "DESTINATION"]
    assert out.splitlines()[1].split()[:3] == ["pricing.default", "tax.default", "100.00%"]

    code, out, err = await gossamer(capsys, served, "stat", "routes", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["by"] == "route"
    assert [(r["name"], r["requests"]) for r in doc["items"]] == [("default/tax#0", 20)]

    code, out, err = await gossamer(capsys, served, "stat", "pricing")
    assert code == 0, err
    assert len(out.strip().splitlines()) == 2


async def test_stat_errors_are_one_clear_line(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await gossamer(capsys, served, "stat", "--window", "soon")
    assert code == 1
    assert "window: 'soon' is not a duration" in err
    assert "Traceback" not in err
    code, _, err = await gossamer(capsys, served, "stat", "nosuch")
    assert code == 1
    assert "no service 'nosuch'" in err
    code, out, _ = await gossamer(capsys, served, "stat", "edges")
    assert code == 0
    assert "no edge has traffic in this window" in out
