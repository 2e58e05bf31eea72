"""A real Prometheus (Debian's `prometheus`) on loopback scrapes a running mesh's sidecars, and
its query API shows the mesh's edges in the golden metrics; every sidecar's real /metrics also
passes `promtool check metrics`.

The scrape config is the one docs/metrics.md shows: static targets, the sidecars' admin
addresses from `gossamer status --json`, every second.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from meshlib import SHOP_SERVICES, Load, Mesh, running_mesh, shop_yaml, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("prometheus") is None or shutil.which("promtool") is None,
        reason="prometheus is not installed (scripts/install-system-deps)",
    ),
]

TD = "shop.test"
SERVICES = SHOP_SERVICES


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    yaml = shop_yaml(sys.executable, mesh_spec=f"{{trustDomain: {TD}}}")
    with running_mesh(tmp_path_factory.mktemp("prom-mesh"), yaml) as m:
        yield m


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape_config(status: dict[str, Any]) -> str:
    """The docs' static scrape config: one target per sidecar admin address, labelled."""
    targets = [
        {"targets": [replica["admin"]], "labels": {"service": service, "replica": r}}
        for service, replicas in sorted(status["services"].items())
        for replica in replicas
        for r in (replica["replica"],)
    ]
    return json.dumps(
        {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{"job_name": "gossamer", "static_configs": targets}],
        }
    )


class Prometheus:
    """One `prometheus` process on 127.0.0.1, its TSDB in a temp dir; stopped by `stop()`."""

    def __init__(self, root: Path, config: str) -> None:
        self.root = root
        (root / "prometheus.yml").write_text(config)  # JSON is YAML
        self.log = (root / "prometheus.log").open("wb")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={root / 'prometheus.yml'}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, deadline: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.tail()}")
            return self.get("/-/ready")[0] == 200

        wait_for("prometheus /-/ready", ready, deadline, every=0.1)

    def query(self, promql: str) -> list[dict[str, Any]]:
        status, body = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert status == 200, body[:500]
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def tail(self) -> str:
        self.log.flush()
        return (self.root / "prometheus.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def test_prometheus_scrapes_the_mesh_and_sees_its_edges(mesh: Mesh, tmp_path: Path) -> None:
    started = time.monotonic()
    status = mesh.status()
    published = status["published"]["frontend"].removeprefix("http://")
    prom = Prometheus(tmp_path, scrape_config(status))
    try:
        prom.wait_ready()
        targets = sum(len(r) for r in status["services"].values())

        def all_up() -> bool:
            return len(prom.query('up{job="gossamer"} == 1')) == targets

        wait_for("every sidecar scraped and up", all_up, 15.0, every=0.25)
        # Load while Prometheus scrapes every second, so that rate() has points to work with.
        load = Load(published, "frontend", "/api/products", workers=1, max_seconds=20).start()
        try:
            load.wait_count(5)
            by_edge = (
                "sum by (direction, source_service, destination_service) "
                "(rate(gossamer_requests_total[30s]))"
            )

            def edges() -> dict[tuple[str, str, str], float]:
                return {
                    (
                        s["metric"]["direction"],
                        s["metric"]["source_service"],
                        s["metric"]["destination_service"],
                    ): float(s["value"][1])
                    for s in prom.query(by_edge)
                }

            expected = {
                (direction, "frontend.default", f"{callee}.default")
                for callee in ("catalog", "pricing", "inventory")
                for direction in ("outbound", "inbound")
            }

            def edges_with_traffic() -> bool:
                seen = edges()
                return expected <= seen.keys() and all(seen[e] > 0 for e in expected)

            wait_for("the mesh's edges, with a rate, in Prometheus", edges_with_traffic, 15.0)
        finally:
            load.stop()
        assert load.failures == []
        # The caller's side names the server's verified identity, and the route rule.
        [series] = prom.query(
            "sum by (source_identity, destination_identity, route, status_code) "
            '(gossamer_requests_total{direction="outbound",destination_service="catalog.default"})'
        )
        assert series["metric"] == {
            "source_identity": f"spiffe://{TD}/ns/default/sa/frontend",
            "destination_identity": f"spiffe://{TD}/ns/default/sa/catalog",
            "route": "default",
            "status_code": "200",
        }
        # The callee's side names the caller by its verified identity's service.
        [inbound] = prom.query(
            "sum by (source_service, source_identity) "
            '(gossamer_requests_total{direction="inbound",destination_service="pricing.default"})'
        )
        assert inbound["metric"] == {
            "source_service": "frontend.default",
            "source_identity": f"spiffe://{TD}/ns/default/sa/frontend",
        }
        p99 = prom.query(
            "histogram_quantile(0.99, sum by (le) "
            '(rate(gossamer_request_duration_seconds_bucket{direction="inbound"}[30s])))'
        )
        assert len(p99) == 1
        assert 0.0 < float(p99[0]["value"][1]) <= 10.0
    finally:
        prom.stop()
    # Every sidecar's real exposition (agent, identity, data plane) passes promtool.
    for replicas in status["services"].values():
        for replica in replicas:
            with urllib.request.urlopen(f"http://{replica['admin']}/metrics", timeout=5) as r:
                text = r.read()
            done = subprocess.run(
                ["promtool", "check", "metrics"], input=text, capture_output=True, timeout=30
            )
            assert done.returncode == 0, (replica["replica"], done.stdout + done.stderr)
    assert time.monotonic() - started < 40.0
