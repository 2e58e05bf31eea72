"""A published port exposes its one service, and a killed supervisor takes its mesh with it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshlib import SHOP, Mesh, split, wait_for

pytestmark = pytest.mark.integration


def mesh_yaml(python: str) -> str:
    run = lambda name: f"[{python}, {SHOP / 'services' / name}]"  # noqa: E731
    services = []
    for name in ("frontend", "catalog", "pricing", "inventory"):
        extra = "  publish: 0\n" if name == "frontend" else ""
        extra += '  env: {FAIL_RATE: "0"}\n' if name == "inventory" else ""
        services.append(
            f"""apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: {name}}}
spec:
  command: {run(name + ".py")}
  workingDir: {SHOP}
  readinessProbe: {{path: /healthz}}
{extra}"""
        )
    return "---\n".join(services)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("publish")
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


def get(address: str, target: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(*split(address), timeout=10)
    try:
        headers = {"host": host} if host else {}
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_the_published_port_reaches_its_service_and_no_other(mesh: Mesh) -> None:
    published = mesh.status()["published"]["frontend"].removeprefix("http://")

    status, _, body = get(published, "/api/products")  # Host: the published address itself
    assert status == 200, body
    assert json.loads(body)["frontend"] == "frontend-0"
    assert get(published, "/healthz", host="frontend")[0] == 200

    # `curl -H 'Host: pricing' PUBLISHED/price/1`: no route, not pricing's answer.
    status, headers, body = get(published, "/price/1", host="pricing")
    assert (status, headers.get("x-gossamer-flags")) == (404, "no-route"), body
    # `curl -x PUBLISHED http://pricing/price/1`: the same.
    status, headers, body = get(published, "http://pricing/price/1")
    assert (status, headers.get("x-gossamer-flags")) == (404, "no-route"), body
    status, headers, _ = get(published, "http://catalog.default.svc:8080/products")
    assert (status, headers.get("x-gossamer-flags")) == (404, "no-route")

    # Inside the mesh pricing is still there: frontend's own sidecar reaches it.
    outbound = mesh.replicas("frontend")[0]["outbound"]
    status, _, body = get(outbound, "http://pricing/price/1")
    assert status == 200
    assert json.loads(body)["id"] == 1


def test_a_killed_supervisor_takes_the_mesh_with_it(mesh: Mesh) -> None:
    """Runs last: kill -9 of the supervisor; every process exits; status and down say so."""
    status = mesh.status()
    supervisor = status["supervisorPid"]
    os.kill(supervisor, signal.SIGKILL)
    wait_for(
        "every process of the mesh to exit after its supervisor was killed",
        lambda: not mesh.mesh_processes(),
        deadline=20,
    )
    state = Path(status["stateDir"])
    gone = mesh.run("status", check=False)
    assert gone.returncode == 1
    assert f"the supervisor of the mesh in {state} is gone (pid {supervisor})" in gone.stderr
    down = mesh.run("down")
    assert down.stdout.startswith(f"the supervisor of the mesh in {state} was gone"), down.stdout
