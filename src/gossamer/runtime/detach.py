"""Running the supervisor detached (`gossamer up -d`) and stopping it again (`gossamer down`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gossamer.runtime.readiness import NotReady, wait_for
from gossamer.runtime.state import StateDir, pid_alive
from gossamer.runtime.supervisor import RUN_ID_ENV, default_gossamer_argv


class DetachError(Exception):
    """The detached supervisor failed to start the mesh; the message carries its error."""


def start_detached(
    argv: list[str],
    state: StateDir,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Start `argv` (a supervising `gossamer up`) in its own session and wait until it is ready.

    Its output goes to logs/up.log. Readiness is status.json saying state "ready" under its pid.

    Returns:
        The status document.

    Raises:
        DetachError: it exited first, or was not ready by the deadline (then it is stopped).
    """
    state.logs.mkdir(parents=True, exist_ok=True)
    log_path = state.logs / "up.log"
    start = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def probe() -> dict[str, Any] | None:
        status = state.read_status()
        if status and status.get("supervisorPid") == proc.pid and status.get("state") == "ready":
            return status
        return None

    def check() -> None:
        if proc.poll() is not None:
            raise DetachError(_failure(log_path, start))

    try:
        return wait_for(
            probe, deadline=clock() + timeout, what="the mesh", check=check, clock=clock
        )
    except NotReady:
        _stop_pid(proc.pid, 10.0, clock)
        raise DetachError(
            f"the mesh was not ready after {timeout:g}s; see {log_path}"
            + _failure(log_path, start, prefix="\n")
        ) from None
    except BaseException:
        _stop_pid(proc.pid, 10.0, clock)
        raise
    finally:
        # Reap it whenever it exits while we still run; after we exit, init does.
        threading.Thread(target=proc.wait, name="reap-supervisor", daemon=True).start()


def stop_mesh(state: StateDir, timeout: float, clock: Callable[[], float] = time.monotonic) -> bool:
    """Stop the mesh running from `state`: SIGTERM its supervisor and wait for it to finish.

    Whatever the status file lists that is still alive afterwards (a supervisor that was killed
    outright leaves its children behind) is killed by process group.

    Returns:
        Whether a running supervisor was found.
    """
    status = state.read_status()
    pid = state.read_pid()
    found = pid is not None and pid_alive(pid)
    if pid is not None and found:
        _stop_pid(pid, timeout, clock)
    if status is not None:
        kill_leftovers(status)
    state.clear_run()
    return found


def kill_leftovers(status: dict[str, Any]) -> list[int]:
    """SIGKILL the process groups of the status file's processes that are still of this run."""
    run_id = status.get("runId")
    killed = []
    for pid in _status_pids(status):
        if run_id and pid_alive(pid) and run_id_of(pid) == run_id:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def run_id_of(pid: int) -> str | None:
    """The GOSSAMER_RUN_ID in the environment of process `pid`, if it has one."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = f"{RUN_ID_ENV}=".encode()
    for item in environ.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def processes_of_run(run_id: str) -> list[int]:
    """Every live process whose environment carries this run's id (a /proc scan)."""
    pids = []
    for entry in Path("/proc").iterdir():
        pid = int(entry.name) if entry.name.isdigit() else 0
        if pid and run_id_of(pid) == run_id and pid_alive(pid):
            pids.append(pid)
    return pids


def _status_pids(status: dict[str, Any]) -> list[int]:
    pids = [status.get("controlPlanePid")]
    for replicas in (status.get("services") or {}).values():
        for r in replicas:
            pids += [r.get("pid"), r.get("proxyPid")]
    for pub in (status.get("publishers") or {}).values():
        pids.append(pub.get("pid"))
    return [p for p in pids if isinstance(p, int) and p > 0]


def _stop_pid(pid: int, timeout: float, clock: Callable[[], float]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    try:
        wait_for(
            lambda: True if not pid_alive(pid) else None,
            deadline=clock() + timeout,
            what=f"supervisor {pid} to stop",
            clock=clock,
            interval=0.05,
        )
    except NotReady:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _failure(log_path: Path, start: int, prefix: str = "") -> str:
    """What the supervisor said about its failure: its error line onwards, else its last lines."""
    try:
        with log_path.open("rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("gossamer up:"):
            return prefix + "\n".join([line.removeprefix("gossamer up: "), *lines[i + 1 :]])
    return prefix + "\n".join(lines[-15:] or [f"the supervisor exited; see {log_path}"])


def supervise_argv(file: Path, state: StateDir, timeout: float) -> list[str]:
    return [
        *default_gossamer_argv(),
        "up",
        str(file),
        "--state-dir",
        str(state.root),
        "--timeout",
        f"{timeout:g}",
        "--supervise",
    ]
