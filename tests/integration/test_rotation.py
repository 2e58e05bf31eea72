"""Root rotation on a real mesh under load: `gossamer ca rotate --wait`, no failed request."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshlib import SHOP, Load, Mesh, wait_for

from gossamer.security.bundle import TrustBundle

pytestmark = pytest.mark.integration


def mesh_yaml(python: str) -> str:
    """A front door and two catalog replicas: every request crosses two sidecars over mTLS."""
    run = lambda name: f"[{python}, {SHOP / 'services' / name}]"  # noqa: E731
    return f"""
apiVersion: gossamer.dev/v1alpha1
kind: Mesh
metadata: {{name: rotation}}
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
  replicas: 2
  readinessProbe: {{path: /healthz}}
"""


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    file = tmp_path / "mesh.yaml"
    file.write_text(mesh_yaml(sys.executable))
    m = Mesh(tmp_path, file)
    try:
        m.up()
        yield m
    finally:
        m.down()
        m.kill_all()


def svids(mesh: Mesh) -> dict[str, str | None]:
    """Each proxy's reported SVID signer (None: it reports none)."""
    status = mesh.api("GET", "/v1/ca")
    return {p["proxyId"]: (p["svid"] or {}).get("signer") for p in status["proxies"]}


def test_root_rotation_under_load_fails_no_request(mesh: Mesh) -> None:
    before = mesh.api("GET", "/v1/ca")
    old_signer = before["signer"]
    (old_root,) = before["roots"]
    # Every proxy serves an SVID from the current root before the rotation starts.
    wait_for(
        "every proxy to report an SVID",
        lambda: (s := svids(mesh)) and all(v == old_signer for v in s.values()),
    )
    outbound = mesh.replicas("frontend")[0]["outbound"]
    load = Load(outbound, "catalog", "/products", workers=4, max_seconds=90).start()
    try:
        load.wait_count(50)
        result = mesh.run("ca", "rotate", "--wait", "--timeout", "60s", timeout=90)
        load.wait_count(50)
    finally:
        load.stop()
    assert load.failures == [], load.failures[:10]
    assert "done" in result.stdout, result.stdout

    after = mesh.api("GET", "/v1/ca")
    new_signer = after["signer"]
    assert new_signer != old_signer
    assert old_root not in after["roots"]
    assert after["rotation"]["phase"] == "done"
    assert set(svids(mesh).values()) == {new_signer}
    bundle_file = mesh.state_dir / "control-plane" / "ca-bundle.pem"
    assert old_root not in TrustBundle.from_pem(bundle_file.read_bytes()).fingerprints()
    check = mesh.run("check", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
