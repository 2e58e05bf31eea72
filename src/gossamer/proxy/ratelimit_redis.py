"""Global rate limits: token buckets kept in Redis, spent through a local budget per key.

Every proxy enforcing a Global rule shares one bucket per key in Redis (`<keyPrefix>:<rule>:<key>`,
the key's values percent-encoded and joined by "|", a value longer than 64 bytes as "#" and its
hash: filters/ratelimit.py `bound_key_part`), a hash holding the tokens and the server time of
the last refill; it expires once it would be full again. One Lua script (`_SCRIPT`, run by
EVALSHA, atomic in Redis) refills the bucket on Redis's own clock and hands out up to `wanted`
tokens at once.

The local budget: a proxy does not ask Redis for each request. It reserves a batch (a tenth of
the rule's `requests`, at least 1, and fewer when Redis reports few left) and spends it locally;
once half of it is gone it fetches the next batch in the background, so a steady stream of
requests never waits. Only a request that finds the budget empty waits (that request, not the
event loop) for the fetch. Reserved tokens were already taken from the shared bucket, so all
proxies together never get more than the bucket gives; a reservation is dropped unused after
`batch / rate` seconds (at least 50 ms, at most a period), which bounds how late a token can be
spent, i.e. the overshoot of any window, to about one batch per proxy. When Redis says the bucket
is empty, the proxy refuses that key locally until Redis says a token will be back.

Failures: a call (connect included) that takes longer than `RedisServer.timeout`, a refused
connection, a closed connection or an error reply fails the waiting requests with the rule's
failure mode (FailOpen lets them through, FailClosed answers 429) and marks Redis down for a
jittered backoff (100 ms doubling to 2 s): meanwhile requests without budget are decided by the
failure mode at once, without waiting; the first request after the backoff tries again. As a
backstop, a request is never kept waiting longer than `2 * timeout + BACKSTOP_MARGIN` (a fetch
can be one call behind, then one call of its own): past it, it gets the failure mode whatever
happened to the call.

A rule that a new Snapshot removes or changes (`close`) no longer applies: the requests waiting
on it are allowed, from the event loop soon after, and so are later `acquire`s on it.

The Redis protocol (RESP2) is spoken here directly over one pipelined asyncio connection: replies
come in request order, so each call is a future in a FIFO.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Union
from urllib.parse import quote

from gossamer import snapshot as snap
from gossamer.filters.ratelimit import (
    ALLOWED,
    FAIL_CLOSED,
    FAIL_OPEN,
    LIMITED,
    MAX_KEYS,
    Key,
    Outcome,
    RateLimitMetrics,
    bound_key,
    bound_key_part,
)
from gossamer.telemetry.ratelimit import RateLimit

log = logging.getLogger("gossamer.proxy.ratelimit")

BACKOFF_BASE = 0.1
BACKOFF_MAX = 2.0
MIN_HOLD = 0.05  # a reservation lives at least this long (seconds)
MAX_PENDING = 10_000  # calls in flight on the connection; past it the call fails at once
ERROR_LOG_INTERVAL = 5.0
BACKSTOP_MARGIN = 1.0  # seconds past two Redis timeouts before a waiting request is decided

_EVICT_SCAN = 16

# KEYS[1]: the bucket; ARGV: capacity, refill rate (tokens/s), tokens wanted.
# Returns {granted, whole tokens left, milliseconds until a token (0 if one is left)}.
_SCRIPT = b"""
if redis.replicate_commands then pcall(redis.replicate_commands) end
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1])
local stamp = tonumber(state[2])
if tokens == nil or stamp == nil then
  tokens = capacity
elseif now > stamp then
  tokens = math.min(capacity, tokens + (now - stamp) * rate)
end
local granted = math.min(wanted, math.floor(tokens))
if granted < 0 then granted = 0 end
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'stamp',
  string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
local wait = 0
if tokens < 1 then wait = math.ceil((1 - tokens) / rate * 1000) end
return {granted, math.floor(tokens), wait}
"""

Reply = Union[bytes, int, None, "RedisErrorReply", list["Reply"]]


class RedisErrorReply:
    """A RESP error reply (`-ERR ...`): a value, not raised, so the reader keeps going."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"RedisErrorReply({self.message!r})"


class RedisUnavailable(Exception):
    """Redis could not answer; `reason` is the metric label (connect, timeout, closed, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def encode_command(*args: bytes | str | int | float) -> bytes:
    """A RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, float):
            data = repr(arg).encode("ascii")
        else:
            data = str(arg).encode("utf-8")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


async def read_reply(reader: asyncio.StreamReader) -> Reply:
    """Read one RESP2 reply; raises RedisUnavailable("protocol") on anything else."""
    line = await reader.readuntil(b"\r\n")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        return RedisErrorReply(rest.decode("utf-8", "replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = await reader.readexactly(size + 2)
        return data[:-2]
    if kind == b"*":
        count = int(rest)
        if count < 0:
            return None
        return [await read_reply(reader) for _ in range(count)]
    raise RedisUnavailable("protocol", f"unexpected reply from Redis: {line[:40]!r}")


class RedisClient:
    """One pipelined connection to the rate-limit Redis, shared by every Global rule."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        server: snap.RedisServer,
        metrics: RateLimitMetrics,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.loop = loop
        self.server = server
        host, _, port = server.address.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self.metrics = metrics
        self.rand = rand
        self.down_until = 0.0  # loop time before which no call is tried
        self.backoff = 0.0
        self.last_error = ""
        self.closed = False
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: deque[asyncio.Future[Reply]] = deque()
        self._connecting: asyncio.Future[None] | None = None
        self._sha = b""
        self._log = RateLimit(loop.time, ERROR_LOG_INTERVAL)

    def rule(self, spec: snap.RateLimitRule) -> GlobalRule:
        return GlobalRule(self, spec)

    def available(self, now: float) -> bool:
        return not self.closed and now >= self.down_until

    def retry_in(self, now: float) -> float:
        return max(0.0, self.down_until - now)

    async def take(self, key: str, capacity: int, rate: float, wanted: int) -> tuple[int, int, int]:
        """Run the bucket script: (granted, tokens left, ms until a token).

        Raises:
            RedisUnavailable: no answer within the timeout (connect included), or a failure.
        """
        try:
            async with asyncio.timeout(self.server.timeout):
                await self._ensure()
                reply = await self._call(
                    b"EVALSHA", self._sha, b"1", key, capacity, repr(rate), wanted
                )
                if isinstance(reply, RedisErrorReply) and reply.message.startswith("NOSCRIPT"):
                    await self._load_script()
                    reply = await self._call(
                        b"EVALSHA", self._sha, b"1", key, capacity, repr(rate), wanted
                    )
        except TimeoutError:
            raise self._failed(
                "timeout", f"no answer within the {self.server.timeout:g}s timeout"
            ) from None
        except RedisUnavailable as exc:
            raise self._failed(exc.reason, str(exc)) from None
        except OSError as exc:
            raise self._failed("connect", exc.strerror or str(exc)) from None
        if isinstance(reply, RedisErrorReply):
            raise self._failed("error", reply.message, drop=False)
        if (
            not isinstance(reply, list)
            or len(reply) != 3
            or not all(isinstance(v, int) for v in reply)
        ):
            raise self._failed("protocol", f"unexpected script result {reply!r}")
        self.backoff = 0.0
        granted, left, wait = (int(v) for v in reply if isinstance(v, int))
        return granted, left, wait

    def _failed(self, reason: str, message: str, drop: bool = True) -> RedisUnavailable:
        self.metrics.redis_errors.labels(reason).inc()
        if drop:
            self._drop(RedisUnavailable("closed", "the connection to Redis was dropped"))
        now = self.loop.time()
        self.backoff = min(BACKOFF_MAX, self.backoff * 2 if self.backoff else BACKOFF_BASE)
        self.down_until = now + self.backoff * (0.5 + self.rand() / 2)
        text = f"Redis at {self.server.address} is unavailable ({reason}: {message})"
        self.last_error = text
        suppressed = self._log.due()
        if suppressed is not None:
            more = f"; {suppressed} more failures since the last line" if suppressed else ""
            log.warning("%s; retrying in %.2fs%s", text, self.down_until - now, more)
        return RedisUnavailable(reason, text)

    async def _ensure(self) -> None:
        if self.closed:
            raise RedisUnavailable("closed", "the rate limits were reconfigured")
        if self._writer is not None and not self._writer.is_closing():
            return
        if self._connecting is None:
            self._connecting = self.loop.create_future()
            task = self.loop.create_task(self._connect(self._connecting))
            task.add_done_callback(_ignore)
        await asyncio.shield(self._connecting)

    async def _connect(self, done: asyncio.Future[None]) -> None:
        try:
            async with asyncio.timeout(self.server.timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
                if self.closed:  # closed while connecting: nobody would close this one
                    writer.close()
                    raise RedisUnavailable("closed", "the rate limits were reconfigured")
                self._reader, self._writer = reader, writer
                self._reader_task = self.loop.create_task(self._read_loop(reader))
                await self._load_script()
        except BaseException as exc:
            self._drop(RedisUnavailable("closed", "connect failed"))
            if isinstance(exc, TimeoutError):
                exc = RedisUnavailable("connect", "connect timed out")
            elif isinstance(exc, OSError):
                exc = RedisUnavailable("connect", exc.strerror or str(exc))
            if not done.done():
                done.set_exception(exc)
                done.exception()  # retrieved: a failure with no waiter left is not an error
        else:
            done.set_result(None)
        finally:
            self._connecting = None

    async def _load_script(self) -> None:
        reply = await self._call(b"SCRIPT", b"LOAD", _SCRIPT)
        if not isinstance(reply, bytes):
            raise RedisUnavailable("error", f"SCRIPT LOAD failed: {reply!r}")
        self._sha = reply

    def _call(self, *args: bytes | str | int | float) -> asyncio.Future[Reply]:
        writer = self._writer
        if writer is None or writer.is_closing():
            raise RedisUnavailable("closed", "not connected")
        if len(self._pending) >= MAX_PENDING:
            raise RedisUnavailable("timeout", "too many calls waiting for Redis")
        future: asyncio.Future[Reply] = self.loop.create_future()
        self._pending.append(future)
        writer.write(encode_command(*args))
        return future

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                reply = await read_reply(reader)
                if not self._pending:
                    raise RedisUnavailable("protocol", "a reply nobody asked for")
                future = self._pending.popleft()
                if not future.done():  # a caller that timed out left its future behind
                    future.set_result(reply)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            self._drop(RedisUnavailable("closed", "Redis closed the connection"))
        except RedisUnavailable as exc:
            self.metrics.redis_errors.labels(exc.reason).inc()
            self._drop(exc)
        except ValueError:
            self.metrics.redis_errors.labels("protocol").inc()
            self._drop(RedisUnavailable("protocol", "a reply that is not RESP"))

    def _drop(self, exc: RedisUnavailable) -> None:
        writer = self._writer
        self._writer = self._reader = None
        if writer is not None:
            writer.close()
        task = self._reader_task
        self._reader_task = None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        pending = self._pending
        self._pending = deque()
        for future in pending:
            if not future.done():
                future.set_exception(exc)
                future.exception()

    def close(self) -> None:
        """Close the connection; calls in flight fail (their requests get the failure mode)."""
        self.closed = True
        self._drop(RedisUnavailable("closed", "the rate limits were reconfigured"))


def _ignore(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


class _Waiter:
    """A request waiting for a key's next batch, with its backstop timer."""

    __slots__ = ("done", "timer")

    def __init__(self, done: Callable[[Outcome], None], timer: asyncio.TimerHandle) -> None:
        self.done = done
        self.timer = timer


class _Budget:
    """One key's reserved tokens and the requests waiting for the next batch."""

    __slots__ = ("batch", "empty_until", "expires", "fetching", "redis_key", "tokens", "waiters")

    def __init__(self, redis_key: str, batch: int) -> None:
        self.redis_key = redis_key
        self.batch = batch
        self.tokens = 0
        self.expires = 0.0
        self.empty_until = 0.0
        self.fetching: asyncio.Task[None] | None = None  # the fetch in flight
        self.waiters: list[_Waiter] = []


_ALLOWED: Outcome = (ALLOWED, 0.0, "")


class GlobalRule:
    """One Global rule's keys: local budgets over the shared buckets in Redis."""

    def __init__(
        self, client: RedisClient, spec: snap.RateLimitRule, max_keys: int = MAX_KEYS
    ) -> None:
        self.client = client
        self.loop = client.loop
        self.clock = client.loop.time
        self.backstop = 2 * client.server.timeout + BACKSTOP_MARGIN
        self.spec = spec
        self.capacity = spec.requests + spec.burst
        self.rate = spec.requests / spec.period
        self.base_batch = max(1, spec.requests // 10)
        self.hold = max(MIN_HOLD, min(spec.period, self.base_batch / self.rate))
        self.failure = FAIL_CLOSED if spec.failure_mode == "FailClosed" else FAIL_OPEN
        self.prefix = f"{client.server.key_prefix}:{spec.name}:"
        self.max_keys = max_keys
        self.budgets: OrderedDict[Key, _Budget] = OrderedDict()
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def redis_key(self, key: Key) -> str:
        parts = []
        for part in key:
            part = bound_key_part(part)
            parts.append(quote(part if isinstance(part, str) else part.decode("latin-1"), safe=""))
        return self.prefix + "|".join(parts)

    def acquire(self, key: Key, done: Callable[[Outcome], None]) -> Outcome | None:
        if self.closed:
            return _ALLOWED  # a request that was past an earlier rule when this one went
        now = self.clock()
        budgets = self.budgets
        budget = budgets.get(key)
        if budget is None:
            key = bound_key(key)  # as filters/ratelimit.py makes it; kept bounded regardless
            budget = budgets.get(key)
        if budget is None:
            if len(budgets) >= self.max_keys:
                self._evict()
            budget = budgets[key] = _Budget(self.redis_key(key), self.base_batch)
        else:
            budgets.move_to_end(key)
        client = self.client
        if budget.tokens > 0:
            if now < budget.expires:
                budget.tokens -= 1
                if (
                    budget.tokens <= budget.batch // 2
                    and budget.fetching is None
                    and now >= budget.empty_until
                    and client.available(now)
                ):
                    self._fetch(budget)
                return _ALLOWED
            budget.tokens = 0
        if now < budget.empty_until:
            return (LIMITED, budget.empty_until - now, "")
        if not client.available(now):
            return (self.failure, max(1.0, client.retry_in(now)), client.last_error)
        timer = self.loop.call_later(self.backstop, self._overdue, budget, done)
        budget.waiters.append(_Waiter(done, timer))
        if budget.fetching is None:
            self._fetch(budget)
        return None

    def _overdue(self, budget: _Budget, done: Callable[[Outcome], None]) -> None:
        # Only a call that outlived its own timeout (a bug) gets here: decide, don't hang.
        for i, waiter in enumerate(budget.waiters):
            if waiter.done is done:
                del budget.waiters[i]
                break
        else:
            return
        self.client.metrics.redis_errors.labels("timeout").inc()
        why = (
            f"no answer from Redis at {self.client.server.address} within {self.backstop:g}s "
            "for a waiting request"
        )
        log.warning("rate limit %r: %s", self.spec.name, why)
        _notify(done, (self.failure, 1.0, why))

    def _evict(self) -> None:
        for i, (key, budget) in enumerate(self.budgets.items()):
            if i >= _EVICT_SCAN:
                break
            if budget.fetching is None and not budget.waiters:
                del self.budgets[key]
                return
        # Every bucket looked at is waiting on Redis: let the table grow a little.

    def _fetch(self, budget: _Budget) -> None:
        task = self.loop.create_task(self._run_fetch(budget))
        budget.fetching = task
        self.tasks.add(task)
        task.add_done_callback(functools.partial(self._fetch_ended, budget))

    def _fetch_ended(self, budget: _Budget, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if budget.fetching is not task:
            return  # the fetch handed over to a newer one (or was settled)
        # A task cancelled before its first step never ran its body: whoever still waits on
        # it is answered here.
        budget.fetching = None
        waiters, budget.waiters = budget.waiters, []
        if not waiters:
            return
        if self.closed:
            outcome = _ALLOWED
        else:
            why = f"the call to Redis at {self.client.server.address} ended without an answer"
            outcome = (self.failure, 1.0, why)
        for waiter in waiters:
            _resolve(waiter, outcome)

    async def _run_fetch(self, budget: _Budget) -> None:
        wanted = budget.batch + len(budget.waiters)
        try:
            granted, left, wait_ms = await self.client.take(
                budget.redis_key, self.capacity, self.rate, wanted
            )
        except (RedisUnavailable, asyncio.CancelledError) as exc:
            budget.fetching = None
            waiters, budget.waiters = budget.waiters, []
            failed: Outcome
            if isinstance(exc, RedisUnavailable):
                now = self.clock()
                failed = (self.failure, max(1.0, self.client.retry_in(now)), str(exc))
            else:
                failed = _ALLOWED  # cancelled by `close`: the rule no longer applies
            for waiter in waiters:
                _resolve(waiter, failed)
            return
        now = self.clock()
        budget.fetching = None
        budget.tokens += granted
        budget.expires = now + self.hold
        # Few tokens left in Redis: take smaller batches so other proxies still get some.
        budget.batch = max(1, min(self.base_batch, left // 2))
        if granted < wanted and wait_ms > 0:
            budget.empty_until = now + wait_ms / 1000.0
        waiters = budget.waiters
        served = 0
        budget.waiters = []
        # The list is taken first: a request resumed here may come back for another token.
        while served < len(waiters) and budget.tokens > 0:
            budget.tokens -= 1
            _resolve(waiters[served], _ALLOWED)
            served += 1
        rest = waiters[served:]
        if not rest:
            return
        if now < budget.empty_until:
            outcome: Outcome = (LIMITED, budget.empty_until - now, "")
            for waiter in rest:
                _resolve(waiter, outcome)
        elif self.closed:
            for waiter in rest:
                _resolve(waiter, _ALLOWED)
        else:
            # Redis had more than was asked for (requests came in meanwhile): ask again.
            budget.waiters = rest + budget.waiters
            if budget.fetching is None:
                self._fetch(budget)

    def close(self) -> None:
        """The rule no longer applies (see the module docstring)."""
        if self.closed:
            return
        self.closed = True
        waiters: list[_Waiter] = []
        for budget in self.budgets.values():
            waiters.extend(budget.waiters)
            budget.waiters = []
        self.budgets.clear()
        for task in list(self.tasks):
            task.cancel()
        for waiter in waiters:
            waiter.timer.cancel()
        if not waiters:
            return
        # Not from within close: it runs in the middle of a Snapshot swap.
        if self.loop.is_closed():
            _notify_all(waiters, _ALLOWED)
        else:
            self.loop.call_soon(_notify_all, waiters, _ALLOWED)


def _notify_all(waiters: list[_Waiter], outcome: Outcome) -> None:
    for waiter in waiters:
        _notify(waiter.done, outcome)


def _resolve(waiter: _Waiter, outcome: Outcome) -> None:
    waiter.timer.cancel()
    _notify(waiter.done, outcome)


def _notify(waiter: Callable[[Outcome], None], outcome: Outcome) -> None:
    try:
        waiter(outcome)
    except Exception:
        log.exception("unexpected error resuming a request after a rate-limit decision")
