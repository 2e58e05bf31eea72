"""`gossamer stat`, `tap` and `top` on a whole running mesh: the shop under load, no Prometheus.

`stat` reads the control plane's rolling window, which scrapes the sidecars every 5 s (the
default: `gossamer up` does not set `--telemetry-interval`), so the test waits, with a deadline,
for two scrapes to see traffic.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from meshlib import SHOP_SERVICES, Load, Mesh, running_mesh, shop_yaml, split, wait_for

pytestmark = pytest.mark.integration

SERVICES = SHOP_SERVICES


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with running_mesh(tmp_path_factory.mktemp("live-mesh"), shop_yaml(sys.executable)) as m:
        yield m


@pytest.fixture(scope="module")
def load(mesh: Mesh) -> Iterator[Load]:
    url = mesh.status()["published"]["frontend"]
    host, port = split(url.removeprefix("http://"))
    running = Load(f"{host}:{port}", "frontend", "/api/products", workers=2, max_seconds=60.0)
    running.start()
    try:
        running.wait_total(20)
        yield running
    finally:
        running.stop()


def stat(mesh: Mesh, *args: str) -> list[dict[str, Any]]:
    out = mesh.run("stat", *args, "--window", "30s", "--json")
    items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return items


def test_stat_shows_every_service_and_edge(mesh: Mesh, load: Load) -> None:
    def busy() -> list[dict[str, Any]] | None:
        rows = {r["name"]: r for r in stat(mesh)}
        ok = all((rows.get(f"{s}.default") or {}).get("rps") for s in SERVICES[1:])
        return list(rows.values()) if ok else None

    rows = {r["name"]: r for r in wait_for("every service has traffic in stat", busy, 40.0)}
    for service in SERVICES[1:]:
        row = rows[f"{service}.default"]
        assert row["successRate"] is not None, row
        assert row["successRate"] > 0.5, row
        assert row["p50"] is not None, row
        assert row["p99"] >= row["p50"], row
    edges = {(e["source"], e["destination"]) for e in stat(mesh, "edges")}
    for callee in ("catalog", "pricing", "inventory"):
        assert ("frontend.default", f"{callee}.default") in edges, edges
    table = mesh.run("stat", "--window", "30s").stdout
    assert "SUCCESS" in table, table
    assert "catalog.default" in table, table


def test_tap_streams_the_requests_of_one_service(mesh: Mesh, load: Load) -> None:
    out = mesh.run("tap", "catalog", "--max", "3", "--max-seconds", "20", "--json", timeout=40)
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    requests = [r for r in records if "path" in r]
    assert len(requests) >= 3, out.stdout
    assert {r["authority"] for r in requests} <= {"catalog"}, requests
    assert all(r["path"].startswith("/products") for r in requests), requests
    assert all(r["proxyId"] == "catalog-0" for r in requests), requests


def test_top_shows_the_busiest_paths(mesh: Mesh, load: Load) -> None:
    out = mesh.run("top", "pricing", "--interval", "500ms", "--max-seconds", "3", timeout=40)
    assert "/price/" in out.stdout, out.stdout
