"""Planning replicas from resources, the state dir, ports from the OS, leftovers after a crash."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gossamer.config.loader import load_text
from gossamer.runtime.detach import kill_leftovers, processes_of_run
from gossamer.runtime.plan import build_plan
from gossamer.runtime.ports import PortReservation, free_port, split_address
from gossamer.runtime.readiness import NotReady, http_ok, wait_for
from gossamer.runtime.state import StateDir, pid_alive, resolve_state_dir, write_json_atomic
from gossamer.runtime.supervisor import RUN_ID_ENV

YAML = """
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: pricing, namespace: shop}
spec:
  command: python3 pricing.py
  workingDir: services
  env: {A: service, B: service}
  readinessProbe: {path: /ready}
  subsets:
    - {name: v1, labels: {version: v1}, replicas: 2}
    - {name: v2, labels: {version: v2}, command: [python3, v2.py], env: {B: subset}}
    - {name: off, replicas: 0}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  command: ./web
  replicas: 2
  publish: 8080
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: external}
---
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata: {name: pricing, namespace: shop}
spec:
  parentRefs: [{name: pricing}]
  rules:
    - backendRefs:
        - {name: pricing, subset: v1, weight: 90}
        - {name: pricing, subset: v2, weight: 10}
"""


def test_plan_replicas_per_subset(tmp_path: Path) -> None:
    plan = build_plan([x.resource for x in load_text(YAML)], tmp_path)
    names = [r.name for r in plan.replicas]
    assert names == ["pricing-v1-0", "pricing-v1-1", "pricing-v2-0", "web-0", "web-1"]
    v1, _, v2, web, _ = plan.replicas
    assert (v1.service, v1.namespace, v1.subset, v1.index) == ("pricing", "shop", "v1", 0)
    assert v1.labels == {"version": "v1"}
    assert v1.command == ["python3", "pricing.py"]
    assert v1.env == {"A": "service", "B": "service"}
    assert v2.command == ["python3", "v2.py"]
    assert v2.env == {"A": "service", "B": "subset"}
    assert v1.cwd == (tmp_path / "services").resolve()
    assert v1.readiness_path == "/ready"
    assert (web.subset, web.readiness_path, web.cwd) == (None, None, tmp_path.resolve())
    assert v1.proxy_name == "pricing-v1-0.proxy"
    assert [(p.service, p.port, p.proxy_id) for p in plan.publishes] == [
        ("web", 8080, "web-publish")
    ]
    assert plan.notes == ["Service external has no command: nothing to run for it"]
    assert [r["kind"] for r in plan.resources] == ["Service", "Service", "Service", "HTTPRoute"]
    # What is sent to the API is what the user wrote, in its own words.
    route = plan.resources[3]
    assert route["spec"]["rules"][0]["backendRefs"][1] == {
        "name": "pricing",
        "subset": "v2",
        "weight": 10,
    }
    assert "timeouts" not in route["spec"]["rules"][0]


def test_state_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GOSSAMER_STATE_DIR", raising=False)
    assert resolve_state_dir(None) == tmp_path / ".gossamer"
    monkeypatch.setenv("GOSSAMER_STATE_DIR", "from-env")
    assert resolve_state_dir(None) == tmp_path / "from-env"
    assert resolve_state_dir("flag") == tmp_path / "flag"


def test_state_files(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "s")
    state.create()
    (state.run / "old.json").write_text("{}")
    (state.control_plane / "store.sqlite").write_text("old")
    state.proxy_dir("web-0").mkdir(parents=True)
    state.create()
    # Ready files, the store and the proxies' caches all belong to the previous run.
    assert not (state.run / "old.json").exists()
    assert list(state.control_plane.iterdir()) == []
    assert not state.proxy_dir("web-0").exists()
    assert state.read_status() is None
    write_json_atomic(state.status_path, {"state": "ready"})
    assert state.read_status() == {"state": "ready"}
    state.pid_path.write_text("123\n")
    assert state.read_pid() == 123
    state.clear_run()
    assert state.read_status() is None
    assert state.read_pid() is None
    assert [p.name for p in state.root.iterdir() if p.name.startswith(".")] == []


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
    assert split_address(f"127.0.0.1:{port}") == ("127.0.0.1", port)
    with pytest.raises(ValueError, match="not a host:port"):
        split_address("localhost")


def test_port_reservation_holds_the_port_until_released() -> None:
    reservation = PortReservation()
    with socket.socket() as sock, pytest.raises(OSError, match="in use"):
        sock.bind(("127.0.0.1", reservation.port))
    assert reservation.release() == reservation.port
    assert reservation.release() == reservation.port  # idempotent
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", reservation.port))


def test_wait_for_gives_up_at_the_deadline() -> None:
    now = [0.0]

    def clock() -> float:
        now[0] += 0.001  # each look at the clock moves it: no real waiting
        return now[0]

    with pytest.raises(NotReady, match="the thing was not ready in time"):
        wait_for(lambda: None, deadline=0.01, what="the thing", clock=clock, interval=0)
    assert wait_for(lambda: 7, deadline=0, what="x") == 7


def test_http_ok_is_false_when_nothing_listens() -> None:
    assert http_ok(f"http://127.0.0.1:{free_port()}/ready", timeout=0.5) is False


def test_kill_leftovers_kills_only_this_run(tmp_path: Path) -> None:
    """After a supervisor is killed outright, `down` kills what its status file lists."""
    code = "import time\nwhile True: time.sleep(1)"
    mine = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, RUN_ID_ENV: "run-1"},
        start_new_session=True,
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, RUN_ID_ENV: "run-2"},
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: True if processes_of_run("run-1") and processes_of_run("run-2") else None,
            deadline=time.monotonic() + 10,
            what="the sleepers",
        )
        status = {
            "runId": "run-1",
            "controlPlanePid": mine.pid,
            "services": {"x": [{"pid": other.pid, "proxyPid": None}]},
        }
        assert kill_leftovers(status) == [mine.pid]
        mine.wait(10)
        assert not pid_alive(mine.pid)
        assert other.poll() is None
    finally:
        for p in (mine, other):
            p.kill()
            p.wait()
