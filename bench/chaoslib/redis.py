"""A real redis-server on 127.0.0.1 (a free port, no persistence, killable): the chaos harness's
Redis scenario and the tests' (tests/redislib.py imports this module and adds the pytest fixture).

Redis cannot bind port 0 and report it, so a free port is found by binding a socket and closing
it; when another process takes the port meanwhile, the server fails to start and the next port is
tried. Nothing is persisted (`--save "" --appendonly no`); its output goes to
`WORKDIR/redis-PORT.log`. Readiness is a PING answered within a deadline, never a sleep.

    server = RedisServer.start(workdir)     # RedisError when it cannot start
    server.address                          # "127.0.0.1:PORT"
    server.stop(); server.start_again()     # killed (a crash), then back on the same port
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

from gossamer.runtime.ports import free_port

START_DEADLINE = 10.0
ATTEMPTS = 5


class RedisError(RuntimeError):
    """redis-server is not installed, or did not answer PING in time; says which and why."""


def executable() -> str | None:
    """The redis-server on PATH, or None (scripts/install-system-deps installs it)."""
    return shutil.which("redis-server")


def ping(port: int, timeout: float = 0.5) -> bool:
    """True when a Redis on 127.0.0.1:`port` answers PING with PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one command, return the raw reply (enough for FLUSHALL, KEYS, ...)."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        data = a.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"".join(parts))
        return s.recv(65536)


class RedisServer:
    """One redis-server process; see the module docstring."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port = port
        self.workdir = workdir
        self.log = workdir / f"redis-{port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path) -> RedisServer:
        """Start on a free port (trying other ports if one is taken meanwhile).

        Raises:
            RedisError: redis-server is not installed, or did not start in ATTEMPTS tries.
        """
        if executable() is None:
            raise RedisError("redis-server is not installed (scripts/install-system-deps has it)")
        last = ""
        for _ in range(ATTEMPTS):
            server = cls(free_port(), workdir)
            try:
                server.start_again()
                return server
            except RedisError as exc:
                last = str(exc)
        raise RedisError(f"redis-server did not start in {ATTEMPTS} attempts: {last}")

    def start_again(self) -> None:
        """(Re)start on this server's port; RedisError when it does not answer PING in time."""
        exe = executable()
        if exe is None:
            raise RedisError("redis-server is not installed (scripts/install-system-deps has it)")
        argv = [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "yes"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_DEADLINE
        while not ping(self.port):
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                self.stop()
                tail = self.log.read_text(errors="replace")[-300:]
                raise RedisError(f"redis-server on port {self.port} did not answer PING: {tail}")
            time.sleep(0.02)  # polling a readiness signal, bounded by the deadline

    def stop(self) -> None:
        """Kill it at once (a crash, not a shutdown) and wait until it is gone."""
        proc = self.proc
        self.proc = None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        proc.wait(timeout=10)

    def command(self, *args: str) -> bytes:
        return command(self.port, *args)
