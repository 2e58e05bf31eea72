"""The real `gossamer control-plane` process: ready file, HTTP, restart with state, clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gossamer.control.client import ApiError, ControlPlaneClient

pytestmark = pytest.mark.integration

API = "gossamer.dev/v1alpha1"


def wait_ready(
    proc: subprocess.Popen[bytes], ready: Path, deadline: float = 15.0
) -> dict[str, Any]:
    """Wait for the ready file (the process's own readiness signal), failing fast if it dies."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            pytest.fail(f"control plane exited with {proc.returncode} before it was ready")
        if ready.exists():
            data: dict[str, Any] = json.loads(ready.read_text())
            return data
        time.sleep(0.02)
    pytest.fail(f"control plane not ready within {deadline}s")


class Runner:
    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "state"
        self.ready = tmp / "ready.json"
        self.log = tmp / "cp.log"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> tuple[subprocess.Popen[bytes], ControlPlaneClient]:
        self.ready.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gossamer.cli.main",
                    "control-plane",
                    "--listen",
                    "127.0.0.1:0",
                    "--state-dir",
                    str(self.state),
                    "--ready-file",
                    str(self.ready),
                    "--heartbeat-ttl",
                    "3",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        info = wait_ready(proc, self.ready)
        assert info["pid"] == proc.pid
        assert info["api"].startswith("http://127.0.0.1:")
        return proc, ControlPlaneClient(info["api"], timeout=5)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[Runner]:
    r = Runner(tmp_path)
    yield r
    r.stop_all()


def test_apply_kill_restart_state_intact(runner: Runner) -> None:
    proc, client = runner.start()
    assert client.healthz()["status"] == "ok"
    result = client.apply(
        [
            {"apiVersion": API, "kind": "Service", "metadata": {"name": "pricing"}},
            {
                "apiVersion": API,
                "kind": "HTTPRoute",
                "metadata": {"name": "pricing"},
                "spec": {"parentRefs": [{"name": "pricing"}], "hostnames": ["prices.example"]},
            },
        ]
    )
    assert [r["action"] for r in result["results"]] == ["created", "created"]
    assert result["revision"] == 1
    client.request(
        "POST",
        "/v1/proxies/pricing-0/register",
        body={"service": "pricing", "inbound": "127.0.0.1:4100", "appPort": 8080, "ready": True},
    )
    with pytest.raises(ApiError) as caught:
        client.apply([{"apiVersion": API, "kind": "HTTPRoute", "metadata": {"name": "x"},
                       "spec": {"parentRefs": [{"name": "pricng"}]}}])  # fmt: skip
    assert caught.value.status == 422
    assert caught.value.code == "invalid"
    assert "did you mean 'pricing'" in caught.value.message

    revision = client.healthz()["revision"]  # the registration was written too
    proc.kill()  # no chance to clean up: the store must already be durable
    proc.wait(10)

    proc, client = runner.start()
    assert client.healthz()["revision"] == revision
    assert client.get("HTTPRoute", "default", "pricing")["spec"]["hostnames"] == ["prices.example"]
    names = [i["metadata"]["name"] for i in client.list_resources("Service")["items"]]
    assert names == ["pricing"]
    (endpoint,) = client.endpoints("pricing")
    assert (endpoint["address"], endpoint["healthy"]) == ("127.0.0.1:4100", True)
    snapshot = client.proxy_snapshot("pricing-0")
    assert "prices.example" in snapshot["virtualHosts"][0]["domains"]
    again = client.apply([{"apiVersion": API, "kind": "Service", "metadata": {"name": "pricing"}}])
    assert again["results"][0]["action"] == "unchanged"
    with pytest.raises(ApiError) as missing:
        client.get("Service", "default", "nope")
    assert (missing.value.status, missing.value.code) == (404, "not_found")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    with pytest.raises(ApiError) as gone:
        client.healthz()
    assert gone.value.code == "unreachable"


def test_sigint_stops_cleanly_during_long_poll(runner: Runner) -> None:
    """A stop does not wait for long polls to run out."""
    proc, client = runner.start()
    client.request(
        "POST",
        "/v1/proxies/p-0/register",
        body={"service": "a", "inbound": "127.0.0.1:4100", "ready": True},
    )
    version = client.proxy_snapshot("p-0")["version"]
    poller = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=60).read()",
            f"{client.base_url}/v1/proxies/p-0/snapshot?version={version}&wait=60",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        # The poll is in flight once the proxy shows as in contact with no new version sent.
        end = time.monotonic() + 10
        while time.monotonic() < end and poller.poll() is None:
            items = client.proxies()
            if items and items[0]["sentVersion"] == version:
                break
            time.sleep(0.02)
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 5
    finally:
        poller.kill()
        poller.wait(10)


def test_bad_listen_address_is_one_clear_line(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gossamer.cli.main", "control-plane", "--listen", "nowhere",
         "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    assert out.returncode == 2
    assert "--listen must be host:port" in out.stderr
    assert "Traceback" not in out.stderr
