"""Start and stop the servers a benchmark uses: own process groups, CPU pinning, bounded waits."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class BenchError(Exception):
    """A benchmark step failed; the message says which and why, in one line."""


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (for servers that cannot report port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: int | None, argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if cpu is not None else list(argv)


class Server:
    """One server process (and its children) in its own process group, logging to the work dir."""

    def __init__(
        self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
    ):
        self.name = name
        self.argv = list(argv)
        self.log_path = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise BenchError(
                f"{self.name} exited with status {code}; see {self.log_path}: {self.tail()}"
            )

    def tail(self, lines: int = 3) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    def pids(self) -> list[int]:
        """Every live process in this server's process group (nginx's master and worker, ...)."""
        out = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                if os.getpgid(int(entry)) == self.proc.pid:
                    out.append(int(entry))
            except (ProcessLookupError, PermissionError):
                continue
        return sorted(out)

    def stop(self, timeout: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        # Children that outlived the leader (an nginx worker) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


def rss_kib(pid: int) -> int:
    """VmRSS of one process, in KiB, from /proc/PID/status."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        raise BenchError(f"process {pid} is gone; cannot read its RSS") from None
    raise BenchError(f"/proc/{pid}/status has no VmRSS line")


def http_get(addr: str, host: str | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    h, _, p = addr.rpartition(":")
    conn = http.client.HTTPConnection(h, int(p), timeout=timeout)
    try:
        conn.request("GET", "/", headers={"Host": host} if host else {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_until(
    what: str, check: Callable[[], bool], deadline_s: float, server: Server | None = None
) -> None:
    """Poll `check` (with a short back-off) until it is true; fail after `deadline_s` seconds."""
    end = time.monotonic() + deadline_s
    delay = 0.01
    last_error = ""
    while True:
        if server is not None:
            server.check_alive()
        try:
            if check():
                return
        except (OSError, http.client.HTTPException, ValueError) as exc:
            last_error = f" (last error: {exc})"
        if time.monotonic() >= end:
            raise BenchError(f"{what} not ready after {deadline_s:g}s{last_error}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def wait_http_ok(
    name: str, addr: str, deadline_s: float, server: Server | None, host: str | None = None
) -> None:
    def ok() -> bool:
        status, _ = http_get(addr, host)
        return status == 200

    wait_until(f"{name} at http://{addr}/", ok, deadline_s, server)


def read_ready_file(path: Path, deadline_s: float, server: Server) -> dict[str, object]:
    """Wait for a process's JSON ready file (written atomically by rename) and return it."""
    result: dict[str, object] = {}

    def present() -> bool:
        if not path.exists():
            return False
        result.update(json.loads(path.read_text()))
        return True

    wait_until(f"{server.name}'s ready file {path}", present, deadline_s, server)
    return result
