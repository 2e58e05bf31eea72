"""Circuit-breaker limits on a real ClusterRuntime under random interleavings (Hypothesis).

The cluster, its pools and their connection bookkeeping are the real ones; what is faked is the
outside: the loop (a clock and timers, test_outlier.FakeLoop), the network (a pool's `connect`
records the attempt and the test decides when it succeeds or fails) and the exchanges (a small
stand-in that follows Exchange's contract with the cluster). After every event the counters
must be within their limits and agree with the pools.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_outlier import FakeLoop

from gossamer import snapshot as snap
from gossamer.proxy.breaker import resilience_metrics
from gossamer.proxy.cluster import ClusterRuntime, Overflow
from gossamer.proxy.loadbalance.base import EndpointState
from gossamer.proxy.stats import DataPlaneMetrics
from gossamer.proxy.upstream import EndpointPool, UpstreamConnection
from gossamer.telemetry.metrics import Registry

if TYPE_CHECKING:
    from gossamer.proxy.exchange import Exchange


class World:
    """The cluster under test and everything in flight around it."""

    def __init__(self, limits: snap.ConnectionPool, endpoints: int) -> None:
        self.loop = FakeLoop()
        spec = snap.Cluster(
            name="c.default",
            service="c",
            connection_pool=limits,
            endpoints=[snap.Endpoint(address=f"10.0.0.{i + 1}:80") for i in range(endpoints)],
        )
        self.rt = ClusterRuntime(
            self.loop.as_loop(),
            spec,
            DataPlaneMetrics(Registry()),
            "outbound",
            rand=random.Random(0),
        )
        self.opening: list[tuple[EndpointPool, FakeExchange]] = []
        self.offline(self.rt)
        self.exchanges: list[FakeExchange] = []
        self.retries = 0
        self.refused = {"requests": 0, "retries": 0, "pending": 0}

    def offline(self, rt: ClusterRuntime) -> None:
        """Give `rt` pools whose connection attempts wait for the test to finish them."""
        self.rt = rt
        rt.pools = {a: OfflinePool(rt, p.endpoint, self) for a, p in rt.pools.items()}

    # --- events ---------------------------------------------------------------------------------

    def request(self, which: int) -> None:
        if not self.rt.start_request():
            self.refused["requests"] += 1
            return
        pools = list(self.rt.pools.values())
        ex = FakeExchange(self, pools[which % len(pools)])
        self.exchanges.append(ex)
        try:
            conn = self.rt.acquire(ex, ex.pool)  # type: ignore[arg-type]
        except Overflow:
            self.refused["pending"] += 1
            ex.finish()
            return
        if conn is not None:
            ex.conn = conn
        elif ex.waiting_pool is None:
            ex.awaiting = True

    def connect_done(self, which: int, ok: bool) -> None:
        if not self.opening:
            return
        pool, ex = self.opening.pop(which % len(self.opening))
        pool.connecting -= 1
        if not ok:
            self.rt.on_connection_gone(pool)
            ex.on_connect_failure(pool, "refused")
            return
        pool.busy += 1
        conn = UpstreamConnection(pool)
        ex.on_connection(conn, reused=False)

    def response_end(self, which: int, keep_alive: bool) -> None:
        busy = [ex for ex in self.exchanges if ex.conn is not None]
        if not busy:
            return
        ex = busy[which % len(busy)]
        conn = ex.conn
        assert conn is not None
        ex.conn = None
        ex.finish()
        if keep_alive:
            conn.pool.release(conn)
        else:
            conn.close()

    def client_gone(self, which: int) -> None:
        """A request finishes early, wherever it is (queued, connecting or sending)."""
        if not self.exchanges:
            return
        ex = self.exchanges[which % len(self.exchanges)]
        if ex.waiting_pool is not None:
            self.rt.cancel_pending(ex)  # type: ignore[arg-type]
            ex.waiting_pool = None
        conn = ex.conn
        ex.conn = None
        ex.finish()
        if conn is not None:
            conn.close()

    def retry(self, start: bool) -> None:
        if start:
            if self.rt.start_retry():
                self.retries += 1
            else:
                self.refused["retries"] += 1
        elif self.retries:
            self.retries -= 1
            self.rt.end_retry()

    def idle_close(self, which: int) -> None:
        idle = [c for p in self.rt.pools.values() for c in p.idle]
        if idle:
            idle[which % len(idle)].close()

    # --- the invariants ---------------------------------------------------------------------------

    def check(self) -> None:
        rt = self.rt
        assert 0 <= rt.active_requests <= rt.max_requests
        assert rt.active_requests == len(self.exchanges)
        assert 0 <= rt.active_retries <= rt.max_retries
        assert rt.active_retries == self.retries
        assert 0 <= rt.connections <= rt.max_connections
        assert rt.connections == sum(p.size for p in rt.pools.values())
        for pool in rt.pools.values():
            assert pool.busy >= 0
            assert pool.connecting >= 0
        assert 0 <= len(rt.pending) <= rt.max_pending
        # Nobody waits while a connection slot is free.
        assert not rt.pending or rt.connections >= rt.max_connections
        assert all(ex.waiting_pool is not None for ex in rt.pending)
        o = rt.overflows
        assert o.requests.value == self.refused["requests"]
        assert o.retries.value == self.refused["retries"]
        assert o.pending.value == self.refused["pending"]


class OfflinePool(EndpointPool):
    """A real pool whose `connect` counts the attempt as EndpointPool.connect does, and leaves
    the outcome to the test (World.connect_done)."""

    __slots__ = ("world",)

    def __init__(self, cluster: ClusterRuntime, endpoint: EndpointState, world: World) -> None:
        super().__init__(cluster, endpoint)
        self.world = world

    def connect(self, exchange: Exchange) -> None:
        self.connecting += 1
        self.cluster.connections += 1
        self.world.opening.append((self, cast(FakeExchange, exchange)))


@dataclass(eq=False)
class FakeExchange:
    """The exchange's side of the contract with the cluster (see Exchange.on_connection)."""

    world: World
    pool: EndpointPool
    conn: UpstreamConnection | None = None
    waiting_pool: EndpointPool | None = None
    awaiting: bool = False
    finished: bool = False
    log: list[str] = field(default_factory=list)

    def on_connection(self, conn: UpstreamConnection, reused: bool) -> None:
        wanted = not self.finished and self.conn is None and conn.pool is self.pool
        if not wanted or not (self.awaiting or reused):
            conn.pool.release(conn)
            return
        self.awaiting = False
        self.conn = conn

    def on_connect_failure(self, pool: EndpointPool, reason: str) -> None:
        if self.finished or not self.awaiting or pool is not self.pool:
            return
        self.awaiting = False
        self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.awaiting = False
        self.world.exchanges.remove(self)
        self.world.rt.end_request()


# Weighted towards the events that move connections around, so hand-overs between endpoints
# (a connection released while a request waits for another endpoint) come up often.
EVENT_NAMES = (
    ["request"] * 4
    + ["connect_ok"] * 3
    + ["end_keep"] * 3
    + ["connect_fail", "end_close", "client_gone", "retry_start", "retry_end", "idle_close"]
)
EVENTS = st.tuples(st.sampled_from(EVENT_NAMES), st.integers(0, 5))


def run(world: World, events: list[tuple[str, int]]) -> None:
    for name, n in events:
        step(world, name, n)
        world.check()


def step(world: World, name: str, n: int) -> None:
    if name == "request":
        world.request(n)
    elif name == "connect_ok":
        world.connect_done(n, True)
    elif name == "connect_fail":
        world.connect_done(n, False)
    elif name == "end_keep":
        world.response_end(n, True)
    elif name == "end_close":
        world.response_end(n, False)
    elif name == "client_gone":
        world.client_gone(n)
    elif name == "retry_start":
        world.retry(True)
    elif name == "retry_end":
        world.retry(False)
    else:
        world.idle_close(n)


@settings(max_examples=300, deadline=None)
@example(  # a released connection to one endpoint while the waiter wants another
    max_connections=1,
    max_pending=2,
    max_requests=4,
    max_retries=0,
    endpoints=2,
    events=[("request", 0), ("connect_ok", 0), ("request", 1), ("end_keep", 0)],
)
@given(
    max_connections=st.integers(1, 4),
    max_pending=st.integers(0, 3),
    max_requests=st.integers(1, 6),
    max_retries=st.integers(0, 2),
    endpoints=st.integers(1, 3),
    events=st.lists(EVENTS, max_size=80),
)
def test_limits_hold_under_any_interleaving(
    max_connections: int,
    max_pending: int,
    max_requests: int,
    max_retries: int,
    endpoints: int,
    events: list[tuple[str, int]],
) -> None:
    """Counters stay within [0, limit], agree with the pools, and every refusal is counted."""
    limits = snap.ConnectionPool(
        max_connections=max_connections,
        max_pending_requests=max_pending,
        max_requests=max_requests,
        max_retries=max_retries,
    )
    world = World(limits, endpoints)
    run(world, events)
    # Drain: everything in flight finishes; all counters return to zero.
    while world.opening:
        world.connect_done(0, True)
        world.check()
    while world.exchanges:
        world.client_gone(0)
        world.check()
    while world.retries:
        world.retry(False)
    world.check()
    assert world.rt.active_requests == 0
    assert world.rt.active_retries == 0
    assert not world.rt.pending


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_limits_hold_on_long_random_walks(seed: int) -> None:
    """The same invariants over long walks drawn from a seed: Hypothesis's own lists stay short
    and rarely build the queue-and-hand-over states the first test is after."""
    r = random.Random(seed)
    limits = snap.ConnectionPool(
        max_connections=r.randint(1, 4),
        max_pending_requests=r.randint(0, 3),
        max_requests=r.randint(1, 6),
        max_retries=r.randint(0, 2),
    )
    world = World(limits, r.randint(1, 3))
    run(world, [(r.choice(EVENT_NAMES), r.randint(0, 5)) for _ in range(200)])


@settings(max_examples=100, deadline=None)
@given(
    first=st.integers(1, 5),
    second=st.integers(1, 5),
    events=st.lists(EVENTS, max_size=40),
    more=st.lists(EVENTS, max_size=40),
)
def test_a_lowered_limit_refuses_new_work_until_under_it(
    first: int, second: int, events: list[tuple[str, int]], more: list[tuple[str, int]]
) -> None:
    """After an update the count may be above the new limit (nothing in flight is cut), but no
    start_request succeeds until it is below, and it never grows past the old one."""
    world = World(snap.ConnectionPool(max_requests=first, max_retries=first), 2)
    run(world, events)
    spec = snap.Cluster(
        name="c.default",
        service="c",
        connection_pool=snap.ConnectionPool(max_requests=second, max_retries=second),
        endpoints=world.rt.spec.endpoints,
    )
    world.rt.update(spec)
    high = world.rt.active_requests
    for name, n in more:
        before = world.rt.active_requests
        if name == "request":
            world.request(n)
            if before >= second:
                assert world.rt.active_requests <= before
        elif name == "retry_start":
            before_r = world.rt.active_retries
            world.retry(True)
            if before_r >= second:
                assert world.rt.active_retries == before_r
        else:
            step(world, name, n)
        assert world.rt.active_requests <= max(high, second)
        assert world.rt.active_requests >= 0
        assert world.rt.active_retries >= 0


def test_overflow_metric_counts_each_limit() -> None:
    """One refusal of each kind is counted under its own `limit` label."""
    registry = Registry()
    metrics = DataPlaneMetrics(registry)
    for family in resilience_metrics(metrics).families():
        registry.register(family)
    limits = snap.ConnectionPool(
        max_connections=1, max_pending_requests=1, max_requests=3, max_retries=0
    )
    world = World(limits, 1)
    world.rt = ClusterRuntime(
        world.loop.as_loop(),
        world.rt.spec,
        metrics,
        "outbound",
        rand=random.Random(0),
    )
    world.offline(world.rt)
    world.request(0)  # connects
    world.request(0)  # waits: a `connections` overflow
    world.request(0)  # the queue is full: `pending` (and `connections`)
    world.retry(True)  # max_retries 0: `retries`
    world.check()
    world.connect_done(0, True)  # the first request has its connection; the second waits
    world.request(0)  # 3rd in flight: waits? no: the queue is full (`connections`, `pending`)
    world.check()
    assert world.rt.active_requests == 2
    world.rt.max_pending = 2
    world.request(0)  # queued: 3 in flight (`connections`)
    world.request(0)  # max_requests 3: `requests`
    world.check()
    text = registry.render().decode()
    for limit, value in (("connections", 4), ("pending", 2), ("requests", 1), ("retries", 1)):
        line = f'gossamer_proxy_overflows_total{{cluster="c.default",limit="{limit}"}} {value}'
        assert line in text, text
