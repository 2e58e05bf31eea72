"""One child process of the mesh, in its own process group so that its whole tree dies with it.

On Linux each child also dies with the supervisor: it is started through a small exec wrapper
that sets PR_SET_PDEATHSIG (SIGTERM) and then execs the command, so a supervisor killed outright
(kill -9, the OOM killer) leaves no control plane, sidecar or workload behind: they get SIGTERM
and drain.
Not preexec_fn: the supervisor runs threads (log pumps, restarts), and Python code between fork
and exec in a threaded process can deadlock. The death signal fires when the *thread* that forked
the child ends, not the process, so every child is started from one long-lived spawner thread
(restarts happen on log threads that end). A grandchild a workload forks does not inherit the
setting; `gossamer down` finds those by GOSSAMER_RUN_ID.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gossamer.runtime.logs import LogMux

Kind = Literal["control-plane", "sidecar", "workload", "publish"]

PR_SET_PDEATHSIG = 1

# argv: PARENT_PID PROGRAM_PATH ARGV0 ARGS... Runs with -I -S: no site, no PYTHON* variables, so
# the child's environment cannot change what it does, and it starts in a few milliseconds.
EXEC_WRAPPER = f"""\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGTERM, 0, 0, 0)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit("gossamer: the supervisor exited before this process started")
try:
    os.execv(sys.argv[2], sys.argv[3:])
except OSError as exc:
    sys.exit(f"gossamer: cannot run {{sys.argv[2]}}: {{exc.strerror or exc}}")
"""

# The death signal needs a prctl that only Linux has.
DIE_WITH_SUPERVISOR = sys.platform.startswith("linux")

_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gossamer-spawner")


def _spawn(argv: list[str], env: dict[str, str], cwd: Path | None) -> subprocess.Popen[bytes]:
    """Popen `argv` from the spawner thread, through the exec wrapper where it is supported."""
    if DIE_WITH_SUPERVISOR:
        program = _resolve(argv[0], env, cwd)
        argv = [sys.executable, "-I", "-S", "-c", EXEC_WRAPPER, str(os.getpid()), program, *argv]

    def popen() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    return _spawner.submit(popen).result()


def _resolve(program: str, env: Mapping[str, str], cwd: Path | None) -> str:
    """The file `program` names, as exec would find it (PATH from `env`).

    Raises:
        OSError: no such program, or it is not executable: the same errors Popen raises for it,
            so a bad command fails in the supervisor, with its name, not in the wrapper.
    """
    if os.sep not in program:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
        if found is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
        return found
    path = Path(program) if os.path.isabs(program) else (cwd or Path.cwd()) / program
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)
    if not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), program)
    return str(path)


@dataclass
class Child:
    name: str
    kind: Kind
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    stopping: bool = False
    restarts: int = 0
    _exited: threading.Event = field(default_factory=threading.Event)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, mux: LogMux, on_exit: Callable[[Child], None]) -> None:
        """Start the process in a new session (its own process group, no controlling terminal),
        set to get SIGTERM when the supervisor dies (Linux).

        Raises:
            OSError: the command could not be started (not found, not executable, bad cwd).
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # A fresh event per run: a restarted child must not look exited from its previous run.
        exited = threading.Event()
        self._exited = exited
        self.proc = _spawn(self.argv, self.env, self.cwd)
        proc = self.proc

        def eof() -> None:
            proc.wait()
            exited.set()
            on_exit(self)

        assert proc.stdout is not None
        mux.pump(self.name, proc.stdout, self.log_path, on_eof=eof)

    def exit_reason(self) -> str:
        """How the last run ended: "exit status 3" or "killed by SIGKILL"."""
        code = self.returncode
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit status {code}"

    def signal_group(self, sig: int) -> None:
        """Send `sig` to the child's whole process group (the group outlives its leader)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float) -> bool:
        """Wait for the leader to exit; whether it did within `timeout` seconds."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return False
        return True


def stop_all(
    children: Sequence[Child],
    timeout: float,
    clock: Callable[[], float],
    asked: Mapping[str, Callable[[], bool]] | None = None,
) -> list[str]:
    """Stop `children` together, SIGKILLing at the deadline whatever is left.

    Each child is first asked politely by its `asked` hook (a proxy's /quitquitquit); one whose hook
    returns False, or that has none, gets SIGTERM. Not both: a second signal cuts a drain short.

    Returns the names of those that had to be killed.
    """
    live = [c for c in children if c.proc is not None]
    for child in live:
        child.stopping = True
        hook = (asked or {}).get(child.name)
        if hook is None or not hook():
            child.signal_group(signal.SIGTERM)
    deadline = clock() + timeout
    killed = []
    for child in live:
        if not child.wait(deadline - clock()):
            killed.append(child.name)
            child.signal_group(signal.SIGKILL)
            child.wait(timeout)
        # Whatever the leader left behind in its group goes with it.
        child.signal_group(signal.SIGKILL)
    return killed
