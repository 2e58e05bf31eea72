"""The whole mesh on loopback: `gossamer up -d`, two sidecars per request, changes under load."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshlib import SHOP, Load, Mesh, wait_for

pytestmark = pytest.mark.integration


def mesh_yaml(python: str) -> str:
    """The shop's services, with more catalog replicas and no injected failures, so that every
    failed request in these tests is the mesh's fault."""
    run = lambda name: f"[{python}, {SHOP / 'services' / name}]"  # noqa: E731
    return f"""
apiVersion: gossamer.dev/v1alpha1
kind: Mesh
metadata: {{name: test}}
spec:
  defaults:
    timeouts: {{connect: 1s, request: 5s}}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: frontend}}
spec:
  command: {run("frontend.py")}
  workingDir: {SHOP}
  readinessProbe: {{path: /healthz}}
  publish: 0
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: catalog}}
spec:
  command: {run("catalog.py")}
  workingDir: {SHOP}
  replicas: 3
  readinessProbe: {{path: /healthz}}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: pricing}}
spec:
  command: {run("pricing.py")}
  workingDir: {SHOP}
  readinessProbe: {{path: /healthz}}
  subsets:
    - {{name: v1, labels: {{version: v1}}, env: {{PRICING_VERSION: v1}}}}
    - {{name: v2, labels: {{version: v2}}, env: {{PRICING_VERSION: v2}}}}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: inventory}}
spec:
  command: {run("inventory.py")}
  workingDir: {SHOP}
  env: {{FAIL_RATE: "0"}}
  readinessProbe: {{path: /healthz}}
---
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: pricing}}
spec:
  parentRefs: [{{name: pricing}}]
  rules:
    - backendRefs:
        - {{name: pricing, subset: v1, weight: 90}}
        - {{name: pricing, subset: v2, weight: 10}}
      retry: {{attempts: 2, retryOn: [connect-failure, reset, gateway-error]}}
---
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata: {{name: catalog}}
spec:
  parentRefs: [{{name: catalog}}]
  rules:
    - backendRefs: [{{name: catalog}}]
      retry:
        attempts: 3
        retryOn: [connect-failure, reset, gateway-error]
        backoff: {{baseInterval: 5ms, maxInterval: 50ms}}
"""


def pricing_route(v1: int, v2: int) -> dict[str, object]:
    return {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "HTTPRoute",
        "metadata": {"name": "pricing"},
        "spec": {
            "parentRefs": [{"name": "pricing"}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": "pricing", "subset": "v1", "weight": v1},
                        {"name": "pricing", "subset": "v2", "weight": v2},
                    ],
                    "retry": {
                        "attempts": 2,
                        "retryOn": ["connect-failure", "reset", "gateway-error"],
                    },
                }
            ],
        },
    }


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("mesh")
    file = root / "mesh.yaml"
    file.write_text(mesh_yaml(sys.executable))
    m = Mesh(root, file)
    try:
        m.up()
        yield m
    finally:
        m.down()
        leftovers = m.mesh_processes()
        m.kill_all()
    assert leftovers == [], f"processes of the mesh survived `gossamer down`: {leftovers}"


def outbound_of(mesh: Mesh, service: str = "frontend") -> str:
    address: str = mesh.replicas(service)[0]["outbound"]
    return address


def test_status_json_has_the_documented_shape(mesh: Mesh) -> None:
    status = mesh.status()
    # One HTTPS listener: operators with tokens, proxies with their SVIDs (mTLS).
    assert status["controlPlane"].startswith("https://127.0.0.1:")
    assert status["controlPlaneInternal"] == status["controlPlane"]
    assert Path(status["caBundle"]).is_file()
    assert set(status["published"]) == {"frontend"}
    assert status["published"]["frontend"].startswith("http://127.0.0.1:")
    assert {"frontend", "catalog", "pricing", "inventory"} <= set(status["services"])
    assert len(status["services"]["catalog"]) == 3
    for replicas in status["services"].values():
        for replica in replicas:
            assert replica["ready"] is True
            for key in ("inbound", "outbound", "admin"):
                host, port = replica[key].rsplit(":", 1)
                assert host == "127.0.0.1"
                assert int(port) > 0


def test_a_request_crosses_the_mesh_through_two_sidecars(mesh: Mesh) -> None:
    url = mesh.status()["published"]["frontend"]
    with urllib.request.urlopen(f"{url}/api/products", timeout=10) as resp:
        body = json.loads(resp.read())
    text = json.dumps(body)
    # The frontend's answer is built from calls to catalog, pricing and inventory via sidecars.
    assert "Silk thread" in text
    assert "price" in text or "amount" in text

    # Straight through the frontend's sidecar to catalog: outbound -> catalog's inbound -> catalog.
    load = Load(outbound_of(mesh), "catalog", "/products", workers=1, max_requests=30).start()
    load.wait_total(30)
    load.stop()
    assert load.failures == []


def test_every_proxy_acks_its_snapshot(mesh: Mesh) -> None:
    versions = wait_for("every proxy to ACK", mesh.all_acked)
    # frontend, 3 catalog, 2 pricing, inventory, and the published frontend's proxy.
    assert len(versions) == 8


def test_canary_moves_from_10_to_50_percent_under_load_without_a_failed_request(mesh: Mesh) -> None:
    mesh.api("POST", "/v1/apply", {"resources": [pricing_route(90, 10)]})
    wait_for("the 90/10 route everywhere", mesh.all_acked)
    load = Load(outbound_of(mesh), "pricing", "/price/1", workers=4).start()
    try:
        t0 = time.monotonic()
        load.wait_count(600)
        before = load.versions_since(t0)

        shifted = mesh.run("apply", "-f", str(SHOP / "canary-50.yaml"))
        assert "configured" in shifted.stdout
        wait_for("every proxy to ACK the 50/50 route", mesh.all_acked)
        t1 = time.monotonic()
        load.wait_count(600)
        after = load.versions_since(t1)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    share_before = before["v2"] / sum(before.values())
    share_after = after["v2"] / sum(after.values())
    # 600 draws: the standard deviation of the share is about 1.2 points at 10% and 2 at 50%.
    assert 0.04 <= share_before <= 0.17, before
    assert 0.40 <= share_after <= 0.60, after


def test_a_replica_killed_during_load_costs_no_failed_request(mesh: Mesh) -> None:
    load = Load(outbound_of(mesh), "catalog", "/products", workers=4).start()
    try:
        load.wait_count(200)
        victims = mesh.replicas("catalog")
        # One replica loses its app (its sidecar answers 503 connect-failure), another its sidecar
        # (callers cannot connect): retries on another replica must hide both.
        os.kill(victims[0]["pid"], signal.SIGKILL)
        os.kill(victims[1]["proxyPid"], signal.SIGKILL)
        load.wait_count(1500)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]


def test_control_plane_restart_keeps_traffic_flowing_and_state_intact(mesh: Mesh) -> None:
    before = mesh.api("GET", "/v1/resources?kind=HTTPRoute")["items"]
    old_pid = mesh.status()["controlPlanePid"]
    load = Load(outbound_of(mesh), "pricing", "/price/2", workers=2).start()
    try:
        load.wait_count(100)
        os.kill(old_pid, signal.SIGKILL)
        # The data plane runs on its last Snapshot while the control plane is away.
        load.wait_count(300)
        wait_for(
            "the control plane to come back",
            lambda: (
                mesh.status()["controlPlanePid"] not in (None, old_pid)
                and mesh.api("GET", "/healthz")
            ),
            deadline=30,
        )
        load.wait_count(100)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:5]
    after = mesh.api("GET", "/v1/resources?kind=HTTPRoute")["items"]
    assert after == before
    # The proxies find the new control plane and take changes from it again.
    mesh.api("POST", "/v1/apply", {"resources": [pricing_route(100, 0)]})
    wait_for("every proxy to ACK after the restart", mesh.all_acked, deadline=30)
    load = Load(outbound_of(mesh), "pricing", "/price/3", workers=1, max_requests=50).start()
    load.wait_total(50)
    load.stop()
    assert load.failures == []
    assert {v for _, _, v in load.results} == {"v1"}


def test_down_leaves_no_process_behind(tmp_path: Path) -> None:
    file = tmp_path / "mesh.yaml"
    file.write_text(mesh_yaml(sys.executable))
    m = Mesh(tmp_path, file)
    try:
        m.up()
        assert len(m.mesh_processes()) >= 10
        m.down()
        assert m.mesh_processes() == []
    finally:
        m.kill_all()
