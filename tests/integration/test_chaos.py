"""Chaos scenarios of issue 4 (bench/chaoslib, the library behind bench/chaos): each within bounds.

Each scenario starts its own mesh from examples/chaos, breaks something under load and checks
what callers saw against bounds taken from the issue (see docs/chaos.md). The harness's pure
parts (metric parsing, the verdict, the table) are checked first, without processes.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from chaoslib import scenarios  # noqa: E402
from chaoslib.__main__ import table  # noqa: E402
from chaoslib.load import Sample, percentile  # noqa: E402
from chaoslib.mesh import metric_sum  # noqa: E402

METRICS = """\
# HELP gossamer_proxy_requests_total Requests answered.
# TYPE gossamer_proxy_requests_total counter
gossamer_proxy_requests_total{direction="inbound",cluster="inbound",status_class="2xx"} 40
gossamer_proxy_requests_total{direction="inbound",cluster="inbound",status_class="5xx"} 2
gossamer_proxy_requests_total{direction="outbound",cluster="backend.default",status_class="2xx"} 7
gossamer_proxy_requests_total_extra{direction="inbound"} 1000
gossamer_proxy_outlier_ejections_total 3
"""


def test_metric_sum_adds_the_matching_series_of_one_family_only() -> None:
    assert metric_sum(METRICS, "gossamer_proxy_requests_total", direction="inbound") == 42
    assert metric_sum(METRICS, "gossamer_proxy_requests_total") == 49
    assert metric_sum(METRICS, "gossamer_proxy_outlier_ejections_total") == 3
    assert metric_sum(METRICS, "gossamer_proxy_absent_total") == 0


def test_a_scenario_passes_only_with_every_check_passed_and_no_error() -> None:
    result = scenarios.Result("kill-replica")
    assert not result.passed  # nothing measured proves nothing
    result.check("failed < 0.1%", "0/5000", True)
    assert result.passed
    result.check("traffic leaves within 1 s", "1500 ms", False)
    assert not result.passed
    errored = scenarios.Result("redis-down", error="not yet: Global RateLimitPolicy")
    assert not errored.passed
    text = table([result, errored])
    assert "MISS" in text
    assert "not yet: Global RateLimitPolicy" in text
    assert text.count("pass") == 1


def test_counter_watch_reports_the_last_growth_after_a_time() -> None:
    watch = scenarios.CounterWatch("127.0.0.1:1", "x")
    watch.points = [(0.0, 1), (1.0, 5), (2.0, 9), (3.0, 9), (4.0, 9)]
    assert watch.last_growth(after=0.5) == 2.0
    assert watch.last_growth(after=2.5) is None


def test_circuit_open_means_a_fallback_served_without_a_try() -> None:
    def sample(flags: str) -> Sample:
        return Sample(0.0, 0.001, "/", 200, "", flags)

    assert scenarios.circuit_open(sample("fallback,no-healthy-endpoint"))
    assert scenarios.circuit_open(sample("fallback,overflow"))
    assert not scenarios.circuit_open(sample("fallback,connect-failure"))
    assert not scenarios.circuit_open(sample(""))
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_the_backend_names_its_replica_and_stays_dead_once_marked(tmp_path: Path) -> None:
    backend = scenarios.EXAMPLES / "backend.py"
    env = {**os.environ, "PORT": "0", "GOSSAMER_PROXY_ID": "backend-7", "CHAOS_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, str(backend)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the readiness signal: it prints its port once bound
        port = int(line.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/work")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("x-chaos-replica") == "backend-7"
        assert b'"replica": "backend-7"' in resp.read()
        conn.close()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    (tmp_path / "backend-7.dead").touch()
    dead = subprocess.run(
        [sys.executable, str(backend)], env=env, capture_output=True, text=True, timeout=30
    )
    assert dead.returncode == 1
    assert "marked dead by the chaos harness" in dead.stderr


@pytest.mark.integration
@pytest.mark.parametrize("name", list(scenarios.SCENARIOS))
def test_chaos_scenario_holds_its_bounds(name: str, tmp_path: Path) -> None:
    result = scenarios.run(name, tmp_path)
    report = "\n".join(f"{c.bound}: {c.measured} ({c.passed})" for c in result.checks)
    assert result.passed, (
        f"{name}: {result.error or 'missed a bound'}\n{report}\n{result.details.get('logs', '')}"
    )
    assert result.seconds <= scenarios.TIME_LIMIT
