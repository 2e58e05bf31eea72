"""Integration-test helpers: a real mesh started with `gossamer up -d`, and bounded load.

The mesh's state-dir plumbing (running `gossamer`, finding and killing its processes, its logs)
is bench/chaoslib/mesh.py's `StateDir`, shared with the chaos harness.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHOP = REPO / "examples" / "shop"
BENCH = REPO / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from chaoslib.mesh import StateDir  # noqa: E402


def wait_for(
    what: str, check: Callable[[], Any], deadline: float = 20.0, every: float = 0.05
) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `deadline` s."""
    end = time.monotonic() + deadline
    last: Any = None
    while time.monotonic() < end:
        try:
            last = check()
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {deadline}s waiting for {what} (last: {last!r})")


class Mesh(StateDir):
    """A mesh started by `gossamer up -d` in its own state dir; every command runs against it."""

    def __init__(self, root: Path, file: Path) -> None:
        super().__init__(root, root / "state")
        self.root = root
        self.file = file

    def run(
        self, *args: str, check: bool = True, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        proc = self.gossamer(*args, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"gossamer {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\n{self.logs_tail()}"
            )
        return proc

    def up(self, *flags: str) -> None:
        self.run("up", "-d", str(self.file), *flags, timeout=120)

    def down(self) -> None:
        self.run("down", check=False, timeout=60)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.run("status", "--json").stdout)
        return out

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """Call the operator API over HTTPS with the admin token, as an operator would."""
        url = self.status()["controlPlane"]
        host, port = url.removeprefix("https://").split(":")
        cp_dir = self.state_dir / "control-plane"
        context = ssl.create_default_context(cafile=str(cp_dir / "ca-bundle.pem"))
        conn = http.client.HTTPSConnection(host, int(port), timeout=10, context=context)
        headers = {
            "content-type": "application/json",
            "authorization": "Bearer " + (cp_dir / "admin.token").read_text().strip(),
        }
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            if resp.status >= 400:
                raise AssertionError(f"{method} {path}: {resp.status} {payload[:500]!r}")
            return json.loads(payload)
        finally:
            conn.close()

    def replicas(self, service: str) -> list[dict[str, Any]]:
        replicas: list[dict[str, Any]] = self.status()["services"][service]
        return replicas

    def all_acked(self) -> dict[str, str] | None:
        """The proxies' versions when every proxy ACKed what it was last sent, else None."""
        items = self.api("GET", "/v1/proxies")["items"]
        if not items or any(
            p["state"] != "ACK" or p["ackedVersion"] != p["sentVersion"] for p in items
        ):
            return None
        return {p["proxyId"]: p["ackedVersion"] for p in items}


def split(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host, int(port)


@dataclass
class Load:
    """Closed-loop load through a sidecar: `workers` keep-alive connections, bounded in count and
    time. Every answer is recorded: its status, the `version` field of a JSON body if any, and every
    error, so that a test can assert that no request failed while something changed underneath.
    """

    address: str
    host: str
    path: str
    workers: int = 4
    max_requests: int = 20_000
    max_seconds: float = 60.0
    results: list[tuple[float, int, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        self._deadline = time.monotonic() + self.max_seconds
        for _ in range(self.workers):
            t = threading.Thread(target=self._work, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _work(self) -> None:
        host, port = split(self.address)
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            with self._lock:
                if len(self.results) + len(self.failures) >= self.max_requests:
                    break
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=10)
                conn.request("GET", self.path, headers={"host": self.host})
                resp = conn.getresponse()
                body = resp.read()
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                with self._lock:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
                continue
            if resp.status != 200:
                flags = resp.getheader("x-gossamer-flags", "")
                with self._lock:
                    self.failures.append(f"HTTP {resp.status} [{flags}] {body[:200]!r}")
                continue
            try:
                version = str(json.loads(body).get("version", ""))
            except ValueError:
                version = ""
            with self._lock:
                self.results.append((time.monotonic(), resp.status, version))
        if conn is not None:
            conn.close()

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def wait_total(self, n: int, deadline: float = 30.0) -> None:
        """Wait until `n` answers in all arrived (for loads bounded by `max_requests`)."""
        wait_for(f"{n} answers through {self.address}", lambda: self.count() >= n, deadline)

    def wait_count(self, n: int, deadline: float = 30.0) -> None:
        """Wait for `n` more answers than so far."""
        target = self.count() + n
        wait_for(
            f"{n} more answers through {self.address}", lambda: self.count() >= target, deadline
        )

    def versions_since(self, t0: float) -> Counter[str]:
        with self._lock:
            return Counter(v for t, _, v in self.results if t >= t0)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)


SHOP_SERVICES = ("frontend", "catalog", "pricing", "inventory")


def shop_yaml(
    python: str, *, mesh_spec: str | None = None, extra: Mapping[str, str] | None = None
) -> str:
    """The demo shop's four services run from their files: frontend published, inventory never
    failing on purpose. `mesh_spec` adds a Mesh with that spec (flow YAML); `extra` adds spec
    lines (each ending in a newline) to a service."""
    docs = []
    if mesh_spec is not None:
        docs.append(
            f"apiVersion: gossamer.dev/v1alpha1\nkind: Mesh\nmetadata: {{name: shop}}\n"
            f"spec: {mesh_spec}\n"
        )
    for name in SHOP_SERVICES:
        more = "  publish: 0\n" if name == "frontend" else ""
        more += '  env: {FAIL_RATE: "0"}\n' if name == "inventory" else ""
        more += (extra or {}).get(name, "")
        docs.append(
            f"""apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: {name}}}
spec:
  command: [{python}, {SHOP / "services" / (name + ".py")}]
  workingDir: {SHOP}
  readinessProbe: {{path: /healthz}}
{more}"""
        )
    return "---\n".join(docs)


@contextlib.contextmanager
def running_mesh(root: Path, yaml: str, *up_flags: str) -> Iterator[Mesh]:
    """`gossamer up -d` of `yaml` in `root`; down, and every process of it killed, at the end."""
    file = root / "mesh.yaml"
    file.write_text(yaml)
    mesh = Mesh(root, file)
    try:
        mesh.up(*up_flags)
        yield mesh
    finally:
        mesh.down()
        mesh.kill_all()
