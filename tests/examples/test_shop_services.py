"""The demo shop without the mesh: its files validate, and the services talk through HTTP_PROXY.

A tiny forward proxy stands in for the sidecar here, so these run fast and on their own; the real
sidecars are exercised by test_shop.py (integration).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from gossamer.config.loader import load_files
from gossamer.config.validate import check_against, load_and_check
from gossamer.runtime.ports import free_port
from gossamer.runtime.readiness import http_ok, wait_for

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def test_mesh_and_canary_files_are_valid() -> None:
    mesh = load_and_check([SHOP / "mesh.yaml"])
    kinds = sorted(r.key for r in mesh)
    assert "HTTPRoute/default/pricing" in kinds
    assert "HTTPRoute/default/inventory" in kinds
    canary = load_files([SHOP / "canary-50.yaml"])
    assert check_against(canary, mesh) == []
    weights = [b.weight for b in canary[0].resource.spec.rules[0].backend_refs]
    assert weights == [50, 50]


class Shop:
    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.proxied: list[str] = []

    def start(self, name: str, script: str, env: dict[str, str]) -> None:
        port = free_port()
        self.ports[name] = port
        full = {**os.environ, "PORT": str(port), "GOSSAMER_PROXY_ID": f"{name}-0", **env}
        proc = subprocess.Popen(
            [sys.executable, str(SHOP / "services" / script)],
            env=full,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        wait_for(
            lambda: True if http_ok(f"http://127.0.0.1:{port}/healthz") else None,
            deadline=time.monotonic() + 15,
            what=f"{name} /healthz",
            check=lambda: None if proc.poll() is None else pytest.fail(f"{name} exited"),
        )


@pytest.fixture
def shop() -> Iterator[Shop]:
    shop = Shop()
    # Stands in for the sidecar's outbound listener: takes absolute-form requests
    # ("GET http://pricing/price/1") from urllib and sends them to the service by host.

    class Forward(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            shop.proxied.append(self.path)
            target = f"http://127.0.0.1:{shop.ports[url.hostname or '']}{url.path}"
            try:
                with DIRECT.open(target, timeout=5) as resp:
                    status, body = resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                status, body = exc.code, exc.read()
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
    threading.Thread(target=proxy.serve_forever, args=(0.05,), daemon=True).start()
    shop.ports["proxy"] = proxy.server_address[1]
    try:
        yield shop
    finally:
        for proc in shop.procs:
            proc.terminate()
        for proc in shop.procs:
            proc.wait(10)
        proxy.shutdown()
        proxy.server_close()


def test_frontend_calls_the_others_through_http_proxy(shop: Shop) -> None:
    via = {"HTTP_PROXY": f"http://127.0.0.1:{shop.ports['proxy']}", "NO_PROXY": ""}
    shop.start("catalog", "catalog.py", {})
    shop.start("pricing", "pricing.py", {"PRICING_VERSION": "v2"})
    shop.start("inventory", "inventory.py", {"FAIL_RATE": "0"})
    shop.start("frontend", "frontend.py", via)
    front = f"http://127.0.0.1:{shop.ports['frontend']}"
    with DIRECT.open(f"{front}/api/products", timeout=10) as resp:
        data = json.loads(resp.read())
    first = data["products"][0]
    assert first["name"] == "Silk thread"
    assert first["price"] == {
        "text": "EUR 4.05 (was 4.50)",
        "version": "v2",
        "replica": "pricing-0",
    }
    assert first["stock"] == {"inStock": 120, "replica": "inventory-0"}
    assert data["pricingVersions"] == {"v2": 5}
    assert "http://catalog/products" in shop.proxied
    assert "http://pricing/price/1" in shop.proxied
    with DIRECT.open(f"{front}/", timeout=10) as resp:
        page = resp.read().decode()
    assert "EUR 4.05 (was 4.50)" in page
    assert "pricing v2" in page


def test_inventory_fails_at_its_rate(shop: Shop) -> None:
    shop.start("inventory", "inventory.py", {"FAIL_RATE": "1"})
    with pytest.raises(urllib.error.HTTPError) as err:
        DIRECT.open(f"http://127.0.0.1:{shop.ports['inventory']}/stock/1", timeout=5)
    assert err.value.code == 503
    err.value.close()
