"""The supervisor with fake components: start order, environment, status, shutdown, no orphans."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from runtime_fakes import FAKE_APP

from gossamer.control.translate import PUBLISH_LABEL as TRANSLATOR_PUBLISH_LABEL
from gossamer.runtime.detach import processes_of_run
from gossamer.runtime.readiness import wait_for
from gossamer.runtime.state import pid_alive
from gossamer.runtime.supervisor import PUBLISH_LABEL, StartError

MESH = f"""
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: web}}
spec:
  command: {FAKE_APP}
  publish: 0
  env: {{LEVEL: service}}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: pricing}}
spec:
  command: {FAKE_APP}
  env: {{LEVEL: service, EXTRA: service}}
  readinessProbe: {{path: /healthz}}
  subsets:
    - name: v1
      labels: {{version: v1}}
    - name: v2
      labels: {{version: v2}}
      replicas: 2
      env: {{EXTRA: subset}}
"""


def _all_pids(status: dict) -> list[int]:
    pids = [status["controlPlanePid"], status["supervisorPid"]]
    for replicas in status["services"].values():
        pids += [r["pid"] for r in replicas] + [r["proxyPid"] for r in replicas]
    pids += [p["pid"] for p in status["publishers"].values()]
    return pids


def test_starts_in_order_and_stops_in_reverse(make_supervisor, events) -> None:
    """Control plane, apply, sidecars, workloads, front door; stop runs the other way round."""
    sup, _, applied = make_supervisor(MESH)
    sup.start()
    names = ["web-0", "pricing-v1-0", "pricing-v2-0", "pricing-v2-1"]
    cp_start = events.index("start", "control-plane")
    apply_at = events.index("apply", sup.api)
    assert cp_start < apply_at
    sidecar_starts = [events.index("start", f"{n}.proxy") for n in names]
    app_starts = [events.index("start", n) for n in names]
    front = events.index("start", "web-publish")
    assert apply_at < min(sidecar_starts)
    # A workload starts only once every sidecar has announced its addresses.
    assert max(sidecar_starts) < min(app_starts)
    # The front door is launched after the workloads (which may still be booting).
    assert max(sidecar_starts) < front
    assert [r["kind"] for r in applied[0][1]] == ["Service", "Service"]

    pids = _all_pids(sup.status())
    sup.stop()
    terms = {n: i for i, (w, n, _) in enumerate(events.lines()) if w in ("term", "quit")}
    assert terms["web-publish"] < min(terms[n] for n in names)
    assert max(terms[n] for n in names) < min(terms[f"{n}.proxy"] for n in names)
    assert max(terms[f"{n}.proxy"] for n in names) < terms["control-plane"]
    # Proxies are asked to drain through their admin listener rather than signalled.
    asked = {n for w, n, _ in events.lines() if w == "quit"}
    assert asked == {"web-publish", *(f"{n}.proxy" for n in names)}
    assert all(not pid_alive(p) for p in pids if p != os.getpid())
    assert processes_of_run(sup.options.run_id) == []
    assert not sup.state.status_path.exists()
    assert not sup.state.pid_path.exists()


def test_waits_for_the_mesh_to_converge(make_supervisor) -> None:
    """start() returns only once the convergence probe agrees, asked about every proxy."""
    asked: list[tuple[list[str], list[str]]] = []
    apis: list[str] = []

    def probe_for(api: str):
        apis.append(api)

        def probe(replicas, proxies) -> bool:
            asked.append((list(replicas), list(proxies)))
            return len(asked) >= 3

        return probe

    sup, _, _ = make_supervisor(MESH, converge=probe_for)
    sup.start()
    assert apis == [sup.api]
    assert len(asked) == 3
    replicas = ["web-0", "pricing-v1-0", "pricing-v2-0", "pricing-v2-1"]
    assert asked[0] == (replicas, [*replicas, "web-publish"])


def test_status_shape(make_supervisor) -> None:
    """status.json has the documented keys, addresses as host:port, and the published URL."""
    sup, _, _ = make_supervisor(MESH)
    sup.start()
    status = json.loads(sup.state.status_path.read_text())
    assert status == sup.status()
    assert status["state"] == "ready"
    assert status["controlPlane"].startswith("http://127.0.0.1:")
    assert status["published"]["web"].startswith("http://127.0.0.1:")
    assert sorted(status["services"]) == ["pricing", "web"]
    pricing = status["services"]["pricing"]
    assert [(r["replica"], r["subset"]) for r in pricing] == [
        ("pricing-v1-0", "v1"),
        ("pricing-v2-0", "v2"),
        ("pricing-v2-1", "v2"),
    ]
    for replica in pricing + status["services"]["web"]:
        assert replica["ready"] is True
        assert isinstance(replica["pid"], int)
        for key in ("inbound", "outbound", "admin", "app"):
            host, _, port = replica[key].rpartition(":")
            assert host == "127.0.0.1"
            assert int(port) > 0


def test_workload_environment_and_sidecar_flags(make_supervisor, events) -> None:
    """The workload gets PORT, its sidecar as HTTP_PROXY, GOSSAMER_*, then service, subset env."""
    sup, _, _ = make_supervisor(MESH)
    sup.start()
    replica = sup.status()["services"]["pricing"][2]
    env = events.data("env", "pricing-v2-1")
    assert env["PORT"] == replica["app"].rpartition(":")[2]
    assert env["HTTP_PROXY"] == env["http_proxy"] == f"http://{replica['outbound']}"
    assert env["NO_PROXY"] == env["no_proxy"] == ""
    assert env["GOSSAMER_SERVICE"] == "pricing"
    assert env["GOSSAMER_NAMESPACE"] == "default"
    assert env["GOSSAMER_SUBSET"] == "v2"
    assert env["GOSSAMER_REPLICA"] == "1"
    assert env["GOSSAMER_PROXY_ID"] == "pricing-v2-1"
    assert env["GOSSAMER_OUTBOUND"] == replica["outbound"]
    assert env["GOSSAMER_ADMIN"] == replica["admin"]
    assert env["GOSSAMER_CONTROL_PLANE"] == sup.api
    assert env["LEVEL"] == "service"
    assert env["EXTRA"] == "subset"  # the subset's env wins over the service's

    args = events.data("args", "pricing-v2-1.proxy")
    flags = dict(zip(args[::2], args[1::2], strict=False))
    assert flags["--service"] == "pricing"
    assert flags["--subset"] == "v2"
    assert flags["--label"] == "version=v2"
    assert flags["--app-port"] == env["PORT"]
    assert flags["--control-plane"] == sup.api
    assert flags["--readiness-path"] == "/healthz"

    front = events.data("args", "web-publish")
    assert "--app-port" not in front
    assert front[front.index("--default-host") + 1] == "web"
    # The label that makes the control plane give it web's routes alone.
    assert front[front.index("--label") + 1] == f"{PUBLISH_LABEL}=web"
    assert PUBLISH_LABEL == TRANSLATOR_PUBLISH_LABEL
    assert front[front.index("--outbound") + 1] == "127.0.0.1:0"
    # Every sidecar writes its access log beside the processes' logs.
    logs = sup.state.logs
    assert flags["--access-log"] == str(logs / "pricing-v2-1.access.log")
    assert front[front.index("--access-log") + 1] == str(logs / "web-publish.access.log")


def test_workload_exiting_during_startup_fails_with_its_log(make_supervisor) -> None:
    """A workload that dies while starting fails start() naming it, its log and its last words."""
    sup, _, _ = make_supervisor(
        f"""
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: broken}}
spec:
  command: {FAKE_APP} --exit 3
"""
    )
    with pytest.raises(StartError) as err:
        sup.start()
    text = str(err.value)
    assert "workload broken-0 exited during start-up (exit status 3)" in text
    assert str(sup.state.log_path("broken-0")) in text
    assert "boom: the app cannot start" in text
    assert processes_of_run(sup.options.run_id) == []


def test_sidecar_failing_fails_start(make_supervisor, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_FAIL", "broken-0")
    sup, _, _ = make_supervisor(
        f"""
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: broken}}
spec:
  command: {FAKE_APP}
"""
    )
    with pytest.raises(StartError, match=r"sidecar broken-0.proxy exited during start-up"):
        sup.start()


def test_missing_command_is_a_clear_error(make_supervisor) -> None:
    sup, _, _ = make_supervisor(
        """
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: ghost}
spec:
  command: no-such-program-gossamer --flag
"""
    )
    with pytest.raises(StartError, match=r"cannot start workload ghost-0 \(no-such-program"):
        sup.start()


def test_group_is_killed_with_grandchildren(make_supervisor) -> None:
    """A workload's child that ignores SIGTERM dies too: the whole process group is killed."""
    sup, _, _ = make_supervisor(
        f"""
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: parent}}
spec:
  command: {FAKE_APP} --grandchild
""",
        stop_timeout=1.0,
    )
    sup.start()
    run = sup.options.run_id
    assert len(processes_of_run(run)) >= 4  # control plane, sidecar, app, grandchild
    sup.stop()
    assert processes_of_run(run) == []


def test_unexpected_exit_is_reported(make_supervisor) -> None:
    """A child dying after start is reported with its log, and its replica is marked not ready."""
    sup, out, _ = make_supervisor(
        f"""
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: solo}}
spec:
  command: {FAKE_APP}
""",
        restart_delay=30.0,  # keep it down while the report is checked
        restart_max_delay=30.0,
    )
    sup.start()
    pid = sup.status()["services"]["solo"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: True if "exited unexpectedly" in out.getvalue() else None,
        deadline=time.monotonic() + 10,
        what="the crash report",
    )
    text = out.getvalue()
    assert "workload solo-0 exited unexpectedly (killed by SIGKILL); restarting in 30s" in text
    assert "solo-0 listening on" in text  # its last lines
    status = json.loads(sup.state.status_path.read_text())
    assert status["services"]["solo"][0]["ready"] is False


def test_stop_during_start_aborts(make_supervisor, events) -> None:
    """A stop request while starting ends start() early and leaves nothing behind."""
    from gossamer.runtime.readiness import Aborted

    sup, _, _ = make_supervisor(MESH)

    def stop_once_the_control_plane_runs() -> None:
        wait_for(
            lambda: True if any(n == "control-plane" for _, n, _ in events.lines()) else None,
            deadline=time.monotonic() + 10,
            what="the control plane",
        )
        sup.request_stop()

    watcher = threading.Thread(target=stop_once_the_control_plane_runs)
    watcher.start()
    with pytest.raises(Aborted):
        sup.start()
    watcher.join()
    assert processes_of_run(sup.options.run_id) == []
    assert sup.phase == "stopped"


def test_logs_are_prefixed_and_written_per_process(make_supervisor) -> None:
    sup, out, _ = make_supervisor(MESH)
    sup.start()
    lines = out.getvalue().splitlines()
    width = len("pricing-v2-1.proxy")
    assert f"{'pricing-v2-1':<{width}} | pricing-v2-1 listening on" in "\n".join(lines)
    assert f"{'control-plane':<{width}} | control-plane up" in lines
    assert any(line.startswith(f"{'gossamer':<{width}} | control plane ready") for line in lines)
    assert "\x1b[" not in out.getvalue()  # not a terminal: no colour
    log = Path(sup.state.log_path("pricing-v2-1.proxy")).read_text()
    assert "pricing-v2-1.proxy up" in log
