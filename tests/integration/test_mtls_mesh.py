"""A mesh where every proxy has an SVID: identities reported to the control plane, and SVID
renewal under load (4-second SVIDs, several renewals per proxy) without a failed request."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshlib import Load, Mesh, shop_yaml, wait_for

pytestmark = pytest.mark.integration

TD = "shop.test"  # not the default: `gossamer up` must hand the Mesh's trustDomain to the CA
SVID_TTL = "4s"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("mtls")
    file = root / "mesh.yaml"
    file.write_text(
        shop_yaml(
            sys.executable,
            mesh_spec=f"{{trustDomain: {TD}}}",
            extra={"pricing": "  serviceAccount: prices\n"},
        )
    )
    m = Mesh(root, file)
    try:
        m.up("--svid-ttl", SVID_TTL)
        yield m
    finally:
        m.down()
        leftovers = m.mesh_processes()
        m.kill_all()
    assert leftovers == [], f"processes of the mesh survived `gossamer down`: {leftovers}"


def svids(mesh: Mesh) -> dict[str, dict[str, object]]:
    return {p["proxyId"]: p["svid"] for p in mesh.api("GET", "/v1/proxies")["items"] if p["svid"]}


def test_every_proxy_reports_its_svid(mesh: Mesh) -> None:
    status = mesh.status()
    assert status["controlPlaneInternal"] == status["controlPlane"]
    assert status["controlPlane"].startswith("https://")
    proxies = [p["proxyId"] for p in mesh.api("GET", "/v1/proxies")["items"]]
    assert sorted(proxies) == sorted(
        ["frontend-0", "catalog-0", "pricing-0", "inventory-0", "frontend-publish"]
    )
    found = wait_for("every proxy's SVID", lambda: len(svids(mesh)) == 5 and svids(mesh))
    account = {"pricing-0": "prices", "frontend-publish": "frontend"}
    for proxy_id, svid in found.items():
        expected = account.get(proxy_id, proxy_id.rsplit("-", 1)[0])
        assert svid["spiffeId"] == f"spiffe://{TD}/ns/default/sa/{expected}", proxy_id
        assert isinstance(svid["notAfter"], float)
        assert svid["signer"]
    # The SVIDs and keys live in each proxy's state dir; the key is private.
    key = Path(mesh.state_dir / "proxies" / "catalog-0" / "svid-key.pem")
    assert key.stat().st_mode & 0o077 == 0


def test_svid_renewal_under_load_fails_no_request(mesh: Mesh) -> None:
    """Requests cross two sidecars (the front door, then frontend's to catalog/pricing) while every
    proxy renews its 4-second SVID at least twice."""
    published = mesh.status()["published"]["frontend"].removeprefix("http://")
    first = wait_for("every proxy's SVID", lambda: len(svids(mesh)) == 5 and svids(mesh))
    seen = {proxy_id: {str(s["serial"])} for proxy_id, s in first.items()}
    load = Load(published, "frontend", "/api/products", workers=2, max_seconds=40).start()
    try:
        end = time.monotonic() + 30

        def renewed_twice() -> bool:
            for proxy_id, svid in svids(mesh).items():
                seen.setdefault(proxy_id, set()).add(str(svid["serial"]))
            return all(len(serials) >= 3 for serials in seen.values())

        while not renewed_twice():
            assert time.monotonic() < end, f"not every proxy renewed twice: {seen}"
            time.sleep(0.2)
        load.wait_count(20)
    finally:
        load.stop()
    assert load.failures == []
    assert load.count() > 0


def metric(admin: str, name: str, labels: str) -> float:
    """One sample from a sidecar's /metrics (0 when absent)."""
    import urllib.request

    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(part in line for part in labels.split(",")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_sidecars_call_each_other_over_mutual_tls_only(mesh: Mesh) -> None:
    published = mesh.status()["published"]["frontend"].removeprefix("http://")
    load = Load(published, "frontend", "/api/products", workers=1, max_seconds=20).start()
    try:
        load.wait_count(10)
    finally:
        load.stop()
    assert load.failures == []
    catalog = mesh.replicas("catalog")[0]["admin"]
    tls = "gossamer_proxy_inbound_connections_by_tls_total"
    assert metric(catalog, tls, 'tls="mtls"') > 0
    assert metric(catalog, tls, 'tls="plaintext"') == 0
    peer = f'peer="spiffe://{TD}/ns/default/sa/frontend"'
    assert metric(catalog, "gossamer_proxy_inbound_requests_by_peer_total", peer) >= 10
