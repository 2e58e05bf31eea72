"""A supervisor killed outright: its children die with it, and status/down/up say what happened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from runtime_fakes import FAKE_APP, HERE

from gossamer.cli.main import main as gossamer_main
from gossamer.runtime.detach import processes_of_run, stop_mesh, supervisor_gone
from gossamer.runtime.process import DIE_WITH_SUPERVISOR
from gossamer.runtime.readiness import wait_for
from gossamer.runtime.state import StateDir, pid_alive

MESH = f"""
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: web}}
spec:
  command: {FAKE_APP}
  publish: 0
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: api}}
spec:
  command: {FAKE_APP}
"""

# A workload run by a shell that leaves a grandchild behind (it ignores SIGTERM and has no death
# signal of its own): only a clean-up by the run's id finds it.
LEAKY = f"""
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: leaky}}
spec:
  command: {FAKE_APP} --grandchild
"""


def start_supervisor(tmp_path: Path, mesh: str) -> tuple[subprocess.Popen[bytes], StateDir, dict]:
    file = tmp_path / "mesh.yaml"
    file.write_text(mesh)
    state = StateDir(tmp_path / "state")
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "fake_supervisor.py"), str(file), str(state.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def ready() -> dict[str, Any] | None:
        if proc.poll() is not None:
            raise AssertionError(f"the supervisor exited ({proc.returncode}); see {state.logs}")
        status = state.read_status()
        if status and status.get("state") == "ready" and status.get("supervisorPid") == proc.pid:
            return status
        return None

    status = wait_for(ready, deadline=time.monotonic() + 30, what="the supervisor", interval=0.05)
    return proc, state, status


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[list[tuple[subprocess.Popen[bytes], StateDir, dict]]]:
    started: list[tuple[subprocess.Popen[bytes], StateDir, dict]] = []
    yield started
    for proc, state, status in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        stop_mesh(state, 5.0)
        assert processes_of_run(status["runId"]) == [], "processes of the mesh survived"


def kill_9(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def children_of(status: dict[str, Any]) -> list[int]:
    pids = [status["controlPlanePid"]]
    for replicas in status["services"].values():
        pids += [p for r in replicas for p in (r["pid"], r["proxyPid"])]
    pids += [p["pid"] for p in status["publishers"].values()]
    return pids


@pytest.mark.skipif(not DIE_WITH_SUPERVISOR, reason="the death signal is Linux-only")
def test_children_die_with_a_killed_supervisor(tmp_path: Path, supervised: list) -> None:
    """kill -9 of the supervisor: control plane, sidecars, front door and workloads all exit."""
    proc, state, status = start_supervisor(tmp_path, MESH)
    supervised.append((proc, state, status))
    pids = children_of(status)
    assert len(pids) == 6
    assert all(pid_alive(p) for p in pids)

    kill_9(proc)
    wait_for(
        lambda: True if not processes_of_run(status["runId"]) else None,
        deadline=time.monotonic() + 10,
        what="every process of the mesh to exit after its supervisor died",
        interval=0.05,
    )
    assert not any(pid_alive(p) for p in pids)


def test_status_down_and_up_after_the_supervisor_died(
    tmp_path: Path, supervised: list, capsys: pytest.CaptureFixture[str]
) -> None:
    """status names the dead supervisor (exit 1); down cleans up what it left and says so."""
    proc, state, status = start_supervisor(tmp_path, LEAKY)
    supervised.append((proc, state, status))
    run_id = status["runId"]
    kill_9(proc)
    assert supervisor_gone(state) == proc.pid

    code = gossamer_main(["status", "--state-dir", str(state.root)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"the supervisor of the mesh in {state.root} is gone (pid {proc.pid})" in err
    assert f"run `gossamer down --state-dir {state.root}` to clean up" in err

    # The grandchild ignores SIGTERM and has no death signal: it is left until down.
    wait_for(
        lambda: True if len(processes_of_run(run_id)) >= 1 else None,
        deadline=time.monotonic() + 5,
        what="the grandchild",
    )
    assert gossamer_main(["down", "--state-dir", str(state.root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"the supervisor of the mesh in {state.root} was gone (pid {proc.pid}); ")
    assert "leftover process" in out or "none of its processes were still running" in out
    assert processes_of_run(run_id) == []
    assert supervisor_gone(state) is None  # down forgot the dead mesh

    assert gossamer_main(["down", "--state-dir", str(state.root)]) == 0
    assert capsys.readouterr().out == f"no mesh running from {state.root}\n"


def test_down_counts_the_processes_it_cleaned_up(tmp_path: Path, supervised: list) -> None:
    proc, state, status = start_supervisor(tmp_path, LEAKY)
    supervised.append((proc, state, status))
    run_id = status["runId"]
    kill_9(proc)
    stopped = stop_mesh(state, 5.0)
    assert (stopped.running, stopped.gone, stopped.supervisor_pid) == (False, True, proc.pid)
    # Children die with the supervisor (at their own pace), but the workload's grandchild never
    # gets the death signal: `down` must have found and stopped at least that one.
    assert stopped.leftovers >= 1
    assert processes_of_run(run_id) == []
