"""One child process of the mesh, in its own process group so that its whole tree dies with it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gossamer.runtime.logs import LogMux

Kind = Literal["control-plane", "sidecar", "workload", "publish"]


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
        """Start the process in a new session (its own process group, no controlling terminal).

        Raises:
            OSError: the command could not be started (not found, not executable, bad cwd).
        """
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # A fresh event per run: a restarted child must not look exited from its previous run.
        exited = threading.Event()
        self._exited = exited
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
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
