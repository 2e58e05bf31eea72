"""Detached start (readiness via status.json, failures with the supervisor's words) and stop."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from gossamer.runtime.detach import DetachError, start_detached, stop_mesh
from gossamer.runtime.state import StateDir, pid_alive

# A stand-in supervisor: announces itself ready the way the real one does, then waits for SIGTERM.
READY = """
import json, os, sys, time
from pathlib import Path
root = Path(sys.argv[1])
(root / "supervisor.pid").write_text(f"{os.getpid()}\\n")
doc = {"supervisorPid": os.getpid(), "state": "starting"}
(root / "status.json").write_text(json.dumps(doc))
print("starting", flush=True)
doc["state"] = "ready"
(root / ".s.tmp").write_text(json.dumps(doc))
os.replace(root / ".s.tmp", root / "status.json")
while True:
    time.sleep(1)
"""
FAILS = """
import sys
print("control plane ready", flush=True)
print("gossamer up: workload web-0 exited during start-up (exit status 1)", file=sys.stderr)
print("    Traceback: boom", file=sys.stderr)
sys.exit(1)
"""
HANGS = "import time\nwhile True: time.sleep(1)"


def test_returns_once_the_supervisor_is_ready_and_down_stops_it(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    status = start_detached([sys.executable, "-c", READY, str(tmp_path)], state, timeout=20)
    pid = status["supervisorPid"]
    assert status["state"] == "ready"
    assert pid_alive(pid)
    assert (tmp_path / "logs" / "up.log").read_text() == "starting\n"
    assert stop_mesh(state, timeout=10).running
    assert not pid_alive(pid)
    assert not state.status_path.exists()
    stopped = stop_mesh(state, timeout=10)
    assert (stopped.running, stopped.gone) == (False, False)


def test_failure_shows_the_supervisors_error(tmp_path: Path) -> None:
    with pytest.raises(DetachError) as err:
        start_detached([sys.executable, "-c", FAILS], StateDir(tmp_path), timeout=20)
    assert str(err.value) == (
        "workload web-0 exited during start-up (exit status 1)\n    Traceback: boom"
    )


def test_deadline_stops_the_supervisor(tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(DetachError, match=r"the mesh was not ready after 0.5s; see .*up.log"):
        start_detached([sys.executable, "-c", HANGS], StateDir(tmp_path), timeout=0.5)
    assert time.monotonic() - start < 10
