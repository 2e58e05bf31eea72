"""The runtime's state dir: where a running mesh is found (status.json, supervisor.pid, logs/)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gossamer.files import write_atomically

ENV_STATE_DIR = "GOSSAMER_STATE_DIR"
DEFAULT_STATE_DIR = ".gossamer"


def resolve_state_dir(arg: str | None) -> Path:
    """`--state-dir`, else $GOSSAMER_STATE_DIR, else ./.gossamer/ (made absolute)."""
    chosen = arg or os.environ.get(ENV_STATE_DIR) or DEFAULT_STATE_DIR
    return Path(chosen).expanduser().absolute()


@dataclass(frozen=True)
class StateDir:
    """The layout of one mesh's state dir."""

    root: Path

    @property
    def status_path(self) -> Path:
        return self.root / "status.json"

    @property
    def pid_path(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run(self) -> Path:
        """Ready files of the processes of the current run."""
        return self.root / "run"

    @property
    def control_plane(self) -> Path:
        return self.root / "control-plane"

    def proxy_dir(self, proxy_id: str) -> Path:
        return self.root / "proxies" / proxy_id

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def ready_file(self, name: str) -> Path:
        return self.run / f"{name}.json"

    def create(self) -> None:
        """Make the layout for a new run, forgetting the control plane and proxies of the last one.

        Each `gossamer up` is a fresh mesh built from its file, like `docker compose up`: a stored
        resource or endpoint of an earlier run would otherwise linger in this one.
        """
        for stale_dir in (self.control_plane, self.root / "proxies"):
            shutil.rmtree(stale_dir, ignore_errors=True)
        for path in (self.root, self.logs, self.run, self.control_plane, self.root / "proxies"):
            path.mkdir(parents=True, exist_ok=True)
        for stale in self.run.glob("*.json"):
            stale.unlink(missing_ok=True)

    def read_status(self) -> dict[str, Any] | None:
        return read_json(self.status_path)

    def read_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def clear_run(self) -> None:
        """Forget the running mesh (its logs and the components' state stay)."""
        for path in (self.status_path, self.pid_path):
            path.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON atomically, so that a reader never sees half a file (read by live processes
    only, so no fsync)."""
    write_atomically(path, (json.dumps(data, indent=2) + "\n").encode(), fsync=False)


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when the file is missing or not (yet) a JSON object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        # The state is the first field after the parenthesised command name.
        if stat[stat.rindex(")") + 2 :].startswith("Z"):
            return False
    return True
