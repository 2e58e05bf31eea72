"""A real `redis-server` on 127.0.0.1 for tests: started on a free port, stopped at the end.

Redis cannot bind port 0 and report it, so a free port is found by binding a socket and closing
it; when another process takes the port meanwhile, the server fails to start and the next port is
tried. Nothing is persisted (`--save "" --appendonly no`). Readiness is a PING answered within a
deadline, never a sleep.

    server = RedisServer.start()       # or the `redis_server` fixture in a test module
    server.address                     # "127.0.0.1:PORT"
    server.stop(); server.start_again()   # the same port: Redis "down" and "back"
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_DEADLINE = 5.0
ATTEMPTS = 5


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def ping(port: int, timeout: float = 0.2) -> bool:
    """True when a Redis on 127.0.0.1:port answers PING with PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def command(port: int, *args: str, timeout: float = 1.0) -> bytes:
    """Send one command, return the raw reply (enough for tests' FLUSHALL, KEYS, ...)."""
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
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path) -> RedisServer:
        """Start on a free port (retrying other ports if one is taken meanwhile)."""
        if not Path(REDIS_SERVER).exists():
            pytest.skip("redis-server is not installed (scripts/install-system-deps)")
        last = ""
        for _ in range(ATTEMPTS):
            server = cls(free_port(), workdir)
            try:
                server.start_again()
                return server
            except RuntimeError as exc:
                last = str(exc)
        raise RuntimeError(f"redis-server did not start in {ATTEMPTS} attempts: {last}")

    def start_again(self) -> None:
        """(Re)start on this server's port; RuntimeError when it does not answer in time."""
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                "--protected-mode",
                "yes",
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_DEADLINE
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
                self.proc = None
                raise RuntimeError(f"redis-server on port {self.port} exited: {out[-300:]}")
            if ping(self.port):
                return
            time.sleep(0.02)  # polling a readiness signal, bounded by the deadline
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING in time")

    def stop(self) -> None:
        proc = self.proc
        self.proc = None
        if proc is None:
            return
        proc.kill()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()

    def command(self, *args: str) -> bytes:
        return command(self.port, *args)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test."""
    server = RedisServer.start(tmp_path)
    try:
        yield server
    finally:
        server.stop()
