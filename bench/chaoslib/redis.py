"""A real redis-server on loopback for the Redis scenario: a free port, no persistence, killable."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from chaoslib.mesh import ChaosError


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (redis-server cannot report port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ping(port: int, timeout: float = 0.5) -> bool:
    """True when a Redis on 127.0.0.1:`port` answers PING with PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class Redis:
    """redis-server bound to 127.0.0.1 on a free port, with its log in `work`."""

    def __init__(self, work: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise ChaosError("redis-server is not installed (scripts/install-system-deps has it)")
        self.port = free_port()
        self.log = work / "redis.log"
        argv = [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(work), "--logfile", str(self.log)]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        end = time.monotonic() + 10
        while not ping(self.port):
            if self.proc.poll() is not None or time.monotonic() >= end:
                self.stop()
                tail = self.log.read_text(errors="replace")[-300:] if self.log.exists() else ""
                raise ChaosError(f"redis-server on port {self.port} did not answer PING: {tail}")
            time.sleep(0.02)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Kill it at once (a crash, not a shutdown) and wait until its port refuses."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
