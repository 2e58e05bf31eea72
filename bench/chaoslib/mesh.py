"""A chaos scenario's mesh: `gossamer up -d` in a work dir of its own, status, kills, metrics.

Like tests/integration/meshlib.py (which the integration tests use for the shop; both build on
`StateDir`), but for the scenario meshes in examples/chaos: the scenario's YAML and services are
copied into the work dir (with the scenario's substitutions, e.g. the address of the Redis the
harness started), so that a run never writes into the repository, and the services' `CHAOS_DIR`
is the work dir's `dead/`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gossamer import snapshot
from gossamer.snapshot import Snapshot

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "chaos"
GOSSAMER = [sys.executable, "-m", "gossamer"]


class ChaosError(Exception):
    """A scenario step failed (the mesh did not start, a deadline passed); says which and why."""


class NotYet(ChaosError):
    """A feature the scenario exercises is missing (not accepted, or not in the Snapshot)."""


def validate(file: Path) -> str | None:
    """None when `gossamer validate` accepts `file`, else its first problem, in one line."""
    proc = subprocess.run(
        [*GOSSAMER, "validate", str(file)], capture_output=True, text=True, timeout=60
    )
    if proc.returncode == 0:
        return None
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return lines[0] if lines else f"gossamer validate exited {proc.returncode}"


class StateDir:
    """A mesh's state dir: the `gossamer` commands run against it, its processes, its logs.

    The base of this module's Mesh and of tests/integration/meshlib.py's, which differ in what
    they start and in how a failure is reported (ChaosError here, AssertionError in a test).
    """

    def __init__(self, cwd: Path, state_dir: Path) -> None:
        self.cwd = cwd
        self.state_dir = state_dir
        self.env = {**os.environ, "GOSSAMER_STATE_DIR": str(state_dir), "NO_COLOR": "1"}
        for key in ("HTTP_PROXY", "http_proxy"):
            self.env.pop(key, None)

    def gossamer(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run `gossamer ARGS` in `cwd`; subprocess.TimeoutExpired after `timeout` seconds."""
        return subprocess.run(
            [*GOSSAMER, *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def mesh_processes(self) -> list[int]:
        """Every live process of this mesh (its state dir in its command line or environment)."""
        marker = str(self.state_dir).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if (entry / "stat").read_text().split(") ", 1)[1].startswith("Z"):
                    continue
                blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in blob:
                found.append(int(entry.name))
        return found

    def kill_all(self) -> None:
        """SIGKILL every live process of this mesh."""
        for pid in self.mesh_processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def logs_tail(self, lines: int = 15) -> str:
        """The last `lines` lines of each of the mesh's logs, each under its file name."""
        logs = self.state_dir / "logs"
        if not logs.is_dir():
            return ""
        out = []
        for path in sorted(logs.glob("*.log")):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(out)


class Mesh(StateDir):
    """One scenario's mesh, from examples/chaos/<yaml>, run in `work` (its own state dir)."""

    def __init__(self, work: Path, yaml: str, replace: Mapping[str, str] | None = None) -> None:
        super().__init__(work, work / "state")
        self.work = work
        self.dead_dir = work / "dead"
        self.dead_dir.mkdir(parents=True, exist_ok=True)
        for service in EXAMPLES.glob("*.py"):
            shutil.copy2(service, work / service.name)
        text = (EXAMPLES / yaml).read_text()
        for old, new in (replace or {}).items():
            if old not in text:
                raise ChaosError(f"examples/chaos/{yaml} has no {old!r} to replace")
            text = text.replace(old, new)
        self.file = work / yaml
        self.file.write_text(text)
        self.env["CHAOS_DIR"] = str(self.dead_dir)
        self.env.pop("PYTHONPATH", None)

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        try:
            return self.gossamer(*args, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ChaosError(f"`gossamer {' '.join(args)}` took longer than {timeout:g}s") from None

    def up(self) -> None:
        proc = self.run("up", "-d", str(self.file), "--timeout", "60", timeout=90)
        if proc.returncode != 0:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
            raise ChaosError(f"gossamer up {self.file.name} failed ({proc.returncode}): {tail}")

    def down(self) -> None:
        """Stop the mesh; SIGKILL whatever of it survived `gossamer down`."""
        self.run("down", timeout=60)
        self.kill_all()

    def status(self) -> dict[str, Any]:
        """What `gossamer status --json` says (its documented shape)."""
        proc = self.run("status", "--json", timeout=30)
        if proc.returncode != 0:
            raise ChaosError(f"gossamer status failed: {proc.stderr.strip()[:300]}")
        status: dict[str, Any] = json.loads(proc.stdout)
        return status

    def replicas(self, service: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.status()["services"][service]
        return found

    def front_door(self, service: str) -> tuple[str, str]:
        """The published proxy of `service`: (its outbound address, its admin address)."""
        pub = self.status()["publishers"][service]
        return str(pub["outbound"]), str(pub["admin"])

    def kill_for_good(self, replica: dict[str, Any]) -> None:
        """SIGKILL a replica's app and keep it dead: its restarts exit at once (backend.py)."""
        (self.dead_dir / f"{replica['replica']}.dead").touch()
        pid = replica["pid"]
        if not isinstance(pid, int):
            raise ChaosError(f"replica {replica['replica']} has no app pid in gossamer status")
        os.kill(pid, signal.SIGKILL)


def metrics(admin: str, timeout: float = 2.0) -> str:
    """A proxy's Prometheus text from its admin listener."""
    host, port = admin.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read().decode()
        if resp.status != 200:
            raise ChaosError(f"GET {admin}/metrics: HTTP {resp.status}")
        return body
    finally:
        conn.close()


def snapshot_of(admin: str) -> Snapshot:
    """The Snapshot a proxy runs, from its admin /config."""
    host, port = admin.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/config")
        resp = conn.getresponse()
        doc = json.loads(resp.read())
    finally:
        conn.close()
    if resp.status != 200 or not doc.get("snapshot"):
        raise ChaosError(f"GET {admin}/config: HTTP {resp.status}, no snapshot")
    return snapshot.decode(json.dumps(doc["snapshot"]))


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        series, _, rest = head.partition("{")
        if series != name or not all(w in rest for w in wanted):
            continue
        total += float(value)
    return total
