"""Global rate limits against a real redis-server on 127.0.0.1 (tests/redislib.py).

Two `RedisClient`s stand for two proxies sharing one Redis: together they never get more than
the bucket gives. Redis stopped mid-run: FailOpen keeps allowing, FailClosed refuses, both at
once during the backoff; Redis back: limits again. A Redis that accepts but never answers is a
timeout, bounded by `RedisServer.timeout`.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest

from gossamer import snapshot as snap
from gossamer.filters import ratelimit as rl
from gossamer.proxy.ratelimit_redis import GlobalRule, RedisClient, encode_command
from gossamer.telemetry.metrics import Registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from redislib import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, used by name


def rule(**kw: object) -> snap.RateLimitRule:
    base: dict[str, object] = {"name": "default/shared#0", "requests": 20, "period": 10.0}
    base.update(kw)
    return snap.RateLimitRule(scope="Global", **base)  # type: ignore[arg-type]


class Proxy:
    """One proxy's Redis client and metrics."""

    def __init__(self, address: str, timeout: float = 0.5) -> None:
        self.registry = Registry()
        self.metrics = rl.RateLimitMetrics(self.registry)
        server = snap.RedisServer(address=address, timeout=timeout, key_prefix="gtest")
        self.client = RedisClient(asyncio.get_running_loop(), server, self.metrics)
        self.waited = 0

    def rule(self, spec: snap.RateLimitRule) -> GlobalRule:
        return self.client.rule(spec)

    async def ask(self, g: GlobalRule, key: rl.Key = ()) -> rl.Outcome:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[rl.Outcome] = loop.create_future()
        outcome = g.acquire(key, future.set_result)
        if outcome is not None:
            return outcome
        self.waited += 1
        async with asyncio.timeout(5.0):
            return await future

    def errors(self) -> float:
        total = 0.0
        for line in self.registry.render().decode().splitlines():
            if line.startswith("gossamer_proxy_rate_limit_redis_errors_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture
async def proxies(redis_server: RedisServer) -> AsyncIterator[tuple[Proxy, Proxy]]:
    a, b = Proxy(redis_server.address), Proxy(redis_server.address)
    yield a, b
    a.client.close()
    b.client.close()


def test_commands_are_resp_arrays_of_bulk_strings() -> None:
    assert (
        encode_command(b"GET", "k", 3, 0.5)
        == b"*4\r\n$3\r\nGET\r\n$1\r\nk\r\n$1\r\n3\r\n$3\r\n0.5\r\n"
    )


async def test_two_proxies_together_stay_within_the_shared_limit(
    proxies: tuple[Proxy, Proxy], redis_server: RedisServer
) -> None:
    """Total allowed <= capacity + rate * elapsed; most requests are decided without waiting."""
    a, b = proxies
    spec = rule(requests=20, period=10.0, burst=10)  # capacity 30, 2 tokens/s, batch 2
    ga, gb = a.rule(spec), b.rule(spec)
    loop = asyncio.get_running_loop()
    started = loop.time()
    allowed = 0
    for _ in range(60):
        for proxy, g in ((a, ga), (b, gb)):
            kind, _, _ = await proxy.ask(g, ("user-1",))
            allowed += kind == rl.ALLOWED
    elapsed = loop.time() - started
    assert allowed <= 30 + 2.0 * elapsed + 1e-6
    # Reserved but unspent tokens may be lost: at most a batch per proxy.
    assert allowed >= 30 - 2 * 2
    assert a.waited + b.waited < 120 // 2  # limited ones come from the local "empty" note
    keys = redis_server.command("KEYS", "gtest:*")
    assert b"gtest:default/shared#0:user-1" in keys


async def test_the_budget_spares_redis_most_requests(proxies: tuple[Proxy, Proxy]) -> None:
    a, _ = proxies
    g = a.rule(rule(requests=1000, period=1.0))  # batches of 100, prefetched at half
    outcomes = [await a.ask(g) for _ in range(400)]
    assert all(kind == rl.ALLOWED for kind, _, _ in outcomes)
    assert a.waited <= 4


async def test_redis_down_fails_open_or_closed_then_limits_again_when_back(
    redis_server: RedisServer,
) -> None:
    proxy = Proxy(redis_server.address, timeout=0.3)
    try:
        open_rule = proxy.rule(rule(name="open", requests=2, period=60.0))
        closed_rule = proxy.rule(
            rule(name="closed", requests=2, period=60.0, failure_mode="FailClosed")
        )
        assert (await proxy.ask(open_rule, ("k0",)))[0] == rl.ALLOWED
        assert (await proxy.ask(closed_rule, ("k0",)))[0] == rl.ALLOWED

        redis_server.stop()
        for i in range(1, 4):
            kind, _, why = await proxy.ask(open_rule, (f"k{i}",))
            assert kind == rl.FAIL_OPEN
            assert f"Redis at {redis_server.address} is unavailable" in why
            kind, wait, _ = await proxy.ask(closed_rule, (f"k{i}",))
            assert kind == rl.FAIL_CLOSED
            assert wait >= 1.0
        assert proxy.errors() >= 1
        # During the backoff nobody waits: decided at once.
        before = proxy.waited
        await proxy.ask(closed_rule, ("k9",))
        assert proxy.waited == before

        redis_server.start_again()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while (await proxy.ask(closed_rule, ("back",)))[0] != rl.ALLOWED:
            assert loop.time() < deadline, "the limiter did not use Redis again"
            await asyncio.sleep(0.05)  # polling the backoff's end, bounded by the deadline
        kinds = [(await proxy.ask(closed_rule, ("back",)))[0] for _ in range(3)]
        assert kinds[0] == rl.ALLOWED
        assert kinds[1:] == [rl.LIMITED, rl.LIMITED]
    finally:
        proxy.client.close()


async def test_a_redis_that_never_answers_times_out_within_the_timeout() -> None:
    hung: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hung.append(writer)  # reads nothing, answers nothing

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = Proxy(f"127.0.0.1:{port}", timeout=0.1)
    try:
        g = proxy.rule(rule(failure_mode="FailClosed"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        kind, _, why = await proxy.ask(g)
        assert kind == rl.FAIL_CLOSED
        assert loop.time() - started < 1.0
        assert "unavailable" in why
        assert proxy.errors() >= 1
    finally:
        proxy.client.close()
        for w in hung:
            w.close()
        server.close()
        await server.wait_closed()


def test_the_redis_client_is_loaded_only_for_global_limits() -> None:
    """A sidecar whose Snapshot has only Local limits never imports the Redis module."""
    code = (
        "import asyncio, sys\n"
        "from gossamer import snapshot as snap\n"
        "from gossamer.proxy.dataplane import DataPlane, ProxySettings\n"
        "from gossamer.telemetry.metrics import Registry\n"
        "loop = asyncio.new_event_loop()\n"
        "dp = DataPlane(loop, ProxySettings(), Registry())\n"
        "rule = snap.RateLimitRule(name='l', requests=1, period=1.0)\n"
        "dp.apply(snap.Snapshot(proxy=snap.ProxyIdentity(proxy_id='p', service='s'),\n"
        "    rate_limits=snap.RateLimits(inbound=[rule])))\n"
        "print('gossamer.proxy.ratelimit_redis' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=30)
    assert out.stdout.decode().strip() == "False"


# --- regressions: nobody waits forever, keys stay small ------------------------------------------


class HungRedis:
    """Accepts connections, reads what comes, never answers; `heard` is set on the first byte."""

    def __init__(self) -> None:
        self.heard = asyncio.Event()
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)
            while await reader.read(65536):
                self.heard.set()

        self.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"127.0.0.1:{port}"

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def hung() -> AsyncIterator[HungRedis]:
    server = HungRedis()
    yield server
    await server.stop()


async def settled(future: asyncio.Future[rl.Outcome], within: float = 1.0) -> rl.Outcome:
    async with asyncio.timeout(within):
        return await future


async def test_a_rule_closed_before_its_fetch_ran_still_answers_its_waiter(hung: HungRedis) -> None:
    """The fetch task is cancelled before its first step (its body never runs): the waiter is
    answered anyway, and as allowed, since the rule no longer applies. The Redis timeout is
    long, so only `close` can have answered."""
    proxy = Proxy(await hung.start(), timeout=30.0)
    try:
        g = proxy.rule(rule(failure_mode="FailClosed"))
        future: asyncio.Future[rl.Outcome] = asyncio.get_running_loop().create_future()
        assert g.acquire(("k",), future.set_result) is None
        g.close()  # same loop iteration: the task has not started
        assert not future.done()  # answered from the loop, not from within close
        assert await settled(future) == (rl.ALLOWED, 0.0, "")
        assert g.acquire(("k",), future.set_result) == (rl.ALLOWED, 0.0, "")
        assert g.tasks == set()
    finally:
        proxy.client.close()


async def test_a_rule_closed_while_its_fetch_waits_on_redis_allows_its_waiters(
    hung: HungRedis,
) -> None:
    proxy = Proxy(await hung.start(), timeout=30.0)
    try:
        g = proxy.rule(rule(failure_mode="FailClosed"))
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(3)]
        for i, f in enumerate(futures):
            assert g.acquire((f"k{i % 2}",), f.set_result) is None
        async with asyncio.timeout(2.0):
            await hung.heard.wait()  # the fetch is in flight: connected, script sent
        g.close()
        outcomes = [await settled(f) for f in futures]
        assert outcomes == [(rl.ALLOWED, 0.0, "")] * 3
        assert proxy.errors() == 0
    finally:
        proxy.client.close()


async def test_a_waiter_gets_the_failure_mode_by_the_backstop_if_the_call_never_ends(
    hung: HungRedis,
) -> None:
    """A call that outlives its own timeout (a bug) must not hold the request: past
    2 * timeout + margin the waiter gets the failure mode, once."""
    proxy = Proxy(await hung.start(), timeout=0.05)
    never = asyncio.Event()

    async def stuck(key: str, capacity: int, rate: float, wanted: int) -> tuple[int, int, int]:
        await never.wait()  # the injected bug: take() ignores its timeout
        return (0, 0, 0)

    proxy.client.take = stuck  # type: ignore[method-assign]
    try:
        g = proxy.rule(rule(failure_mode="FailClosed"))
        assert g.backstop == pytest.approx(2 * 0.05 + 1.0)
        g.backstop = 0.2  # the margin shortened to keep the test fast
        loop = asyncio.get_running_loop()
        calls: list[rl.Outcome] = []
        future: asyncio.Future[rl.Outcome] = loop.create_future()

        def done(outcome: rl.Outcome) -> None:
            calls.append(outcome)
            future.set_result(outcome)

        started = loop.time()
        assert g.acquire(("k",), done) is None
        kind, wait, why = await settled(future, within=2.0)
        assert loop.time() - started >= 0.2
        assert (kind, wait) == (rl.FAIL_CLOSED, 1.0)
        assert "no answer from Redis" in why
        assert proxy.errors() == 1
        g.close()  # cancels the stuck fetch: the waiter, already answered, is not called again
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert len(calls) == 1
    finally:
        proxy.client.close()


async def test_long_key_values_are_kept_and_named_in_redis_by_a_fixed_size_hash(
    proxies: tuple[Proxy, Proxy], redis_server: RedisServer
) -> None:
    a, _ = proxies
    g = a.rule(rule(name="default/big#0", requests=2, period=60.0))
    huge = b"v" * 60_000
    assert (await a.ask(g, (huge,)))[0] == rl.ALLOWED
    assert (await a.ask(g, (b"short",)))[0] == rl.ALLOWED
    keys = [k for k in redis_server.command("KEYS", "gtest:default/big*").split(b"\r\n")]
    names = sorted(k for k in keys if k.startswith(b"gtest:"))
    assert len(names) == 2
    hashed = "#" + hashlib.blake2b(huge, digest_size=16).hexdigest()
    assert names == sorted(
        [b"gtest:default/big#0:short", b"gtest:default/big#0:" + quote(hashed).encode()]
    )
    # The same long value is the same bucket, here and in Redis; another one is another.
    assert (await a.ask(g, (huge,)))[0] == rl.ALLOWED
    assert (await a.ask(g, (huge,)))[0] == rl.LIMITED
    assert (await a.ask(g, (b"w" * 60_000,)))[0] == rl.ALLOWED
    assert all(len(p) <= rl.KEY_PART_MAX for key in g.budgets for p in key)
    assert all(len(b.redis_key) < 100 for b in g.budgets.values())
