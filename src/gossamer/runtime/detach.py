"""Running the supervisor detached (`gossamer up -d`) and stopping it again (`gossamer down`)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Stopped:
    """What `stop_mesh` found and did."""

    running: bool  # a live supervisor was found and stopped
    gone: bool  # the state dir had a mesh whose supervisor was no longer alive
    supervisor_pid: int | None
    leftovers: int  # processes of the run that were still alive after it, and were killed


def supervisor_gone(state: StateDir) -> int | None:
    """The pid of the supervisor that status.json names when it is gone, else None.

    status.json outlives a supervisor that was killed outright (it is removed on a clean stop);
    its processes may still run then, or its children may have got their death signal.
    Returns 0 when status.json names no pid.
    """
    status = state.read_status()
    if status is None:
        return None
    pid = status.get("supervisorPid")
    if not isinstance(pid, int):
        pid = state.read_pid()
    if pid is not None and pid_alive(pid):
        return None
    return pid or 0


def stop_mesh(
    state: StateDir, timeout: float, clock: Callable[[], float] = time.monotonic
) -> Stopped:
    """Stop the mesh running from `state`: SIGTERM its supervisor and wait for it to finish.

    Whatever of the run is still alive afterwards (a supervisor that was killed outright leaves
    its workloads' grandchildren, and children that ignore their death signal) is killed.
    """
    status = state.read_status()
    pid = state.read_pid()
    if pid is None and status is not None and isinstance(status.get("supervisorPid"), int):
        pid = status["supervisorPid"]
    running = pid is not None and pid_alive(pid)
    if pid is not None and running:
        _stop_pid(pid, timeout, clock)
    leftovers = clean_up_run(status, timeout, clock) if status is not None else 0
    state.clear_run()
    return Stopped(
        running=running,
        gone=status is not None and not running,
        supervisor_pid=pid,
        leftovers=leftovers,
    )


def clean_up_run(
    status: dict[str, Any], timeout: float = 5.0, clock: Callable[[], float] = time.monotonic
) -> int:
    """SIGKILL every process of the run that `status` describes; how many there were.

    The recorded children's process groups first, then anything else whose environment carries
    the run's id (a workload's grandchild that left its group). Waits, up to `timeout`, until they
    are gone, so that their ports are free for the next `gossamer up`.
    """
    run_id = status.get("runId")
    found = {p for p in processes_of_run(run_id) if p != os.getpid()} if run_id else set()
    found.update(kill_leftovers(status))
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(NotReady):
        wait_for(
            lambda: True if not any(pid_alive(p) for p in found) else None,
            deadline=clock() + timeout,
            what="the leftover processes to exit",
            clock=clock,
            interval=0.02,
        )
    return len(found)


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


def supervise_argv(
    file: Path, state: StateDir, timeout: float, svid_ttl: str | None = None
) -> list[str]:
    extra = ["--svid-ttl", svid_ttl] if svid_ttl else []
    return [
        *default_gossamer_argv(),
        "up",
        str(file),
        "--state-dir",
        str(state.root),
        "--timeout",
        f"{timeout:g}",
        *extra,
        "--supervise",
    ]
