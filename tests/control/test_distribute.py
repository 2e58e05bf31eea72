"""Distribution: snapshots rebuilt on change, long polls woken, ACK/NACK and proxy state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from gossamer import snapshot as snap
from gossamer.config.models import Resource, Service
from gossamer.control.distribute import Distributor, UnknownProxyError
from gossamer.control.registry import Registration, Registry
from gossamer.control.store.sqlite import SqliteStore
from gossamer.control.translate import Trust


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def service(name: str) -> Service:
    return Service.model_validate(
        {"apiVersion": "gossamer.dev/v1alpha1", "kind": "Service", "metadata": {"name": name}}
    )


def small_translate(
    resources: Sequence[Resource],
    endpoints: Sequence[Registration],
    proxy: snap.ProxyIdentity,
    *,
    trust: Trust | None = None,
) -> snap.Snapshot:
    """A stand-in translator for unit tests: one cluster per service, every endpoint in it."""
    clusters = [
        snap.Cluster(
            name=f"{r.metadata.name}.{r.metadata.namespace}",
            service=r.metadata.name,
            endpoints=[
                snap.Endpoint(address=e.inbound, healthy=e.healthy)
                for e in endpoints
                if e.service == r.metadata.name
            ],
        )
        for r in resources
        if isinstance(r, Service)
    ]
    return snap.seal(snap.Snapshot(proxy=proxy, clusters=clusters))


def registration(proxy_id: str, svc: str = "pricing") -> Registration:
    return Registration(
        proxy_id=proxy_id, service=svc, inbound="127.0.0.1:5000", app_port=8000, ready=True
    )


class World:
    def __init__(self, store: SqliteStore, clock: FakeClock, translate: object = small_translate):
        self.resources: list[Resource] = []
        self.clock = clock
        self.registry = Registry(store, ttl=3.0, clock=clock)
        self.distributor = Distributor(
            lambda: list(self.resources),
            self.registry,
            clock=clock,
            translate=translate,  # type: ignore[arg-type]
            debounce=0.01,
        )
        self.registry.subscribe(self.distributor.mark_dirty)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    store = await SqliteStore.open(tmp_path / "store.sqlite")
    w = World(store, FakeClock())
    task = asyncio.create_task(w.distributor.run())
    yield w
    task.cancel()
    await store.close()


async def test_poll_returns_new_version_or_times_out(world: World) -> None:
    await world.registry.register(registration("p-0"))
    first = await world.distributor.poll("p-0", None, 0)
    assert first is not None
    assert first.version
    assert await world.distributor.poll("p-0", first.version, 0.02) is None
    with pytest.raises(UnknownProxyError):
        await world.distributor.poll("nobody", None, 0)


async def test_long_poll_wakes_promptly_on_change(world: World) -> None:
    """A change reaches a waiting poll well within a second (debounce included)."""
    world.resources.append(service("pricing"))
    await world.registry.register(registration("p-0"))
    current = world.distributor.snapshot("p-0")
    loop = asyncio.get_running_loop()
    poll = asyncio.create_task(world.distributor.poll("p-0", current.version, 30))
    await asyncio.sleep(0)  # the poll is now waiting
    started = loop.time()
    await world.registry.register(registration("p-1"))  # a new endpoint of pricing
    got = await asyncio.wait_for(poll, 2)
    assert got is not None
    assert loop.time() - started < 1.0
    assert got.version != current.version
    assert len(got.clusters[0].endpoints) == 2


async def test_unchanged_snapshot_does_not_wake(world: World) -> None:
    """A change that leaves a proxy's snapshot as it was does not answer its poll."""
    await world.registry.register(registration("p-0"))
    current = world.distributor.snapshot("p-0")
    poll = asyncio.create_task(world.distributor.poll("p-0", current.version, 0.3))
    world.distributor.mark_dirty()  # nothing changed for p-0
    assert await asyncio.wait_for(poll, 2) is None


async def test_bursts_are_coalesced(tmp_path: Path) -> None:
    """Changes within the debounce window cost one recomputation."""
    store = await SqliteStore.open(tmp_path / "s.sqlite")
    w = World(store, FakeClock())
    w.distributor._debounce = 0.2  # wide enough that the whole burst below falls inside it
    w.resources.append(service("pricing"))
    await w.registry.register(registration("p-0"))
    current = w.distributor.snapshot("p-0")
    before = w.distributor.recomputations
    task = asyncio.create_task(w.distributor.run())
    try:
        for _ in range(20):
            w.distributor.mark_dirty()
        await w.registry.register(registration("p-1"))
        got = await asyncio.wait_for(w.distributor.poll("p-0", current.version, 5), 2)
        assert got is not None
        assert w.distributor.recomputations == before + 1
    finally:
        task.cancel()
        await store.close()


async def test_ack_nack_pending_stale(world: World) -> None:
    d = world.distributor
    await world.registry.register(registration("p-0"))
    d.touch("p-0")
    assert d.state("p-0") == "PENDING"
    s1 = await d.poll("p-0", None, 0)
    assert s1 is not None
    d.ack("p-0", s1.version, ok=True, error=None)
    assert d.state("p-0") == "ACK"

    world.resources.append(service("pricing"))
    d.recompute()
    s2 = await d.poll("p-0", s1.version, 0)
    assert s2 is not None
    assert d.state("p-0") == "PENDING"  # sent, not answered yet
    d.ack("p-0", s2.version, ok=False, error="cluster pricing.default: bad thing")
    assert d.state("p-0") == "NACK"
    ((_, status, state),) = d.statuses()
    assert (status.acked_version, status.sent_version, status.error, state) == (
        s1.version,
        s2.version,
        "cluster pricing.default: bad thing",
        "NACK",
    )

    world.clock.now += 3.5
    assert d.state("p-0") == "STALE"
    with pytest.raises(UnknownProxyError):
        d.ack("ghost", "v", ok=True, error=None)


async def test_waiting_poll_is_not_stale(world: World) -> None:
    d = world.distributor
    await world.registry.register(registration("p-0"))
    current = d.snapshot("p-0")
    poll = asyncio.create_task(d.poll("p-0", current.version, 30))
    await asyncio.sleep(0)
    world.clock.now += 10
    assert d.state("p-0") != "STALE"
    poll.cancel()


async def test_failing_translate_for_one_proxy_spares_others(tmp_path: Path) -> None:
    def picky(
        resources: Sequence[Resource],
        endpoints: Sequence[Registration],
        proxy: snap.ProxyIdentity,
        *,
        trust: Trust | None = None,
    ) -> snap.Snapshot:
        if proxy.proxy_id == "bad":
            raise ValueError("cannot translate")
        return small_translate(resources, endpoints, proxy, trust=trust)

    store = await SqliteStore.open(tmp_path / "s.sqlite")
    try:
        w = World(store, FakeClock(), translate=picky)
        await w.registry.register(registration("bad"))
        await w.registry.register(registration("good"))
        w.distributor.recompute()
        assert w.distributor.snapshot("good").version
        with pytest.raises(RuntimeError, match="cannot build"):
            w.distributor.snapshot("bad")
    finally:
        await store.close()


async def test_real_translator_by_default(tmp_path: Path) -> None:
    """Without an injected translator the distributor uses gossamer.control.translate."""
    store = await SqliteStore.open(tmp_path / "s.sqlite")
    try:
        registry = Registry(store, ttl=3.0, clock=FakeClock())
        resources: list[Resource] = [service("pricing")]
        d = Distributor(lambda: resources, registry, clock=FakeClock())
        await registry.register(registration("pricing-0"))
        built = d.snapshot("pricing-0")
        assert [vh.name for vh in built.virtual_hosts] == ["pricing.default"]
        assert built.clusters[0].endpoints[0].address == "127.0.0.1:5000"
    finally:
        await store.close()
