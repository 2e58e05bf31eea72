"""A real `redis-server` on 127.0.0.1 for tests: the chaos harness's (bench/chaoslib/redis.py).

Started on a free port, nothing persisted, readiness a PING within a deadline; a test is skipped
where redis-server is not installed.

    def test_x(redis_server: RedisServer) -> None:   # a fresh server for one test
        redis_server.address                         # "127.0.0.1:PORT"
        redis_server.stop(); redis_server.start_again()   # Redis "down" and "back", same port
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from chaoslib.redis import RedisServer, command, executable, ping  # noqa: E402

__all__ = ["RedisServer", "command", "ping", "redis_server"]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for one test."""
    if executable() is None:
        pytest.skip("redis-server is not installed (scripts/install-system-deps)")
    server = RedisServer.start(tmp_path)
    try:
        yield server
    finally:
        server.stop()
