"""End to end: an AuthorizationPolicy applied through the operator API is enforced by the sidecar.

Real processes (`gossamer up -d` with one shop service), the operator API over HTTPS with the
admin token (tests/integration/meshlib.py). Requests enter through the service's published port, so
its front-door sidecar calls the replica's sidecar over mutual TLS as any client in the mesh would;
the policy is checked there, on the inbound side.
"""

from __future__ import annotations

import http.client
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from meshlib import SHOP, Mesh, split, wait_for

pytestmark = pytest.mark.integration


def get(address: str, path: str) -> tuple[int, dict[str, str], bytes]:
    host, port = split(address)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers={"host": "catalog"})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("authz-mesh")
    file = root / "mesh.yaml"
    file.write_text(
        f"""
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: catalog}}
spec:
  command: [{sys.executable}, {SHOP / "services" / "catalog.py"}]
  workingDir: {SHOP}
  readinessProbe: {{path: /healthz}}
  publish: 0
"""
    )
    m = Mesh(root, file)
    try:
        m.up()
        yield m
    finally:
        m.down()
        m.kill_all()


def test_an_applied_deny_policy_is_enforced_by_the_inbound_sidecar(mesh: Mesh) -> None:
    inbound = mesh.status()["published"]["catalog"].removeprefix("http://")
    wait_for("the published port to serve", lambda: get(inbound, "/products/1")[0] == 200, 30)
    policy = {
        "apiVersion": "gossamer.dev/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "no-single-product"},
        "spec": {
            "targetRef": {"name": "catalog"},
            "action": "DENY",
            "rules": [{"to": [{"operation": {"paths": ["/products/*"]}}]}],
        },
    }
    mesh.api("POST", "/v1/apply", {"resources": [policy]})
    _status, headers, body = wait_for(
        "the DENY policy to reach the sidecar",
        lambda: (r := get(inbound, "/products/1"))[0] == 403 and r,
        deadline=30,
    )
    assert headers["x-gossamer-flags"] == "denied"
    doc = json.loads(body)
    assert doc["policy"] == "default/no-single-product"
    assert get(inbound, "/products")[0] == 200


def test_plaintext_straight_to_a_strict_inbound_never_reaches_the_app(mesh: Mesh) -> None:
    inbound = mesh.replicas("catalog")[0]["inbound"]
    status, headers, body = get(inbound, "/products")
    assert status == 400
    assert headers["x-gossamer-flags"] == "mtls-required"
    assert b"mutual TLS" in body
