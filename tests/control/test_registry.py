"""The registry: registration, heartbeat TTL on a driven clock, persistence across restarts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from gossamer.control.registry import (
    Registration,
    RegistrationLimitError,
    Registry,
    registry_key,
)
from gossamer.control.store.sqlite import SqliteStore


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reg(
    proxy_id: str = "pricing-0", *, ready: bool = True, service: str = "pricing"
) -> Registration:
    return Registration(
        proxy_id=proxy_id,
        service=service,
        subset="v1",
        labels={"version": "v1"},
        inbound="127.0.0.1:4000",
        outbound="127.0.0.1:4001",
        admin="127.0.0.1:4002",
        app_port=8080,
        ready=ready,
    )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(tmp_path / "store.sqlite")
    yield s
    await s.close()


async def test_register_heartbeat_and_ttl_expiry(store: SqliteStore) -> None:
    """A silent proxy turns unhealthy once the TTL has passed, and healthy on its next heartbeat."""
    clock = FakeClock()
    registry = Registry(store, ttl=3.0, clock=clock)
    changes: list[int] = []
    registry.subscribe(lambda: changes.append(1))

    got = await registry.register(reg())
    assert got.healthy
    assert got.last_heartbeat == clock.now
    assert len(changes) == 1

    clock.now += 2.9
    assert not registry.sweep()
    assert registry.endpoints()[0].healthy

    clock.now += 0.1  # exactly the TTL since the last heartbeat
    assert registry.sweep()
    assert not registry.endpoints()[0].healthy
    assert len(changes) == 2

    assert await registry.heartbeat("pricing-0")
    assert registry.endpoints()[0].healthy
    assert len(changes) == 3
    assert registry.next_expiry() == clock.now + 3.0


async def test_not_ready_is_not_healthy(store: SqliteStore) -> None:
    registry = Registry(store, ttl=3.0, clock=FakeClock())
    await registry.register(reg(ready=False))
    assert not registry.endpoints()[0].healthy
    await registry.heartbeat("pricing-0", ready=True)
    assert registry.endpoints()[0].healthy
    await registry.heartbeat("pricing-0", ready=False)
    assert not registry.endpoints()[0].healthy


async def test_unknown_proxy(store: SqliteStore) -> None:
    registry = Registry(store, ttl=3.0, clock=FakeClock())
    assert not await registry.heartbeat("nobody")
    assert not await registry.deregister("nobody")


async def test_heartbeats_do_not_write_the_store(store: SqliteStore) -> None:
    """Heartbeats stay in memory: the store's revision moves only for real changes."""
    clock = FakeClock()
    registry = Registry(store, ttl=3.0, clock=clock)
    await registry.register(reg())
    rev = await store.revision()
    for _ in range(5):
        clock.now += 1
        await registry.heartbeat("pricing-0", ready=True)
    await registry.register(reg())  # the same registration again
    assert await store.revision() == rev
    await registry.heartbeat("pricing-0", ready=False)
    assert await store.revision() == rev + 1


async def test_endpoints_by_service_and_deregister(store: SqliteStore) -> None:
    registry = Registry(store, ttl=3.0, clock=FakeClock())
    await registry.register(reg("b-0", service="b"))
    await registry.register(reg("a-1", service="a"))
    await registry.register(reg("a-0", service="a"))
    assert [r.proxy_id for r in registry.endpoints()] == ["a-0", "a-1", "b-0"]
    assert [r.proxy_id for r in registry.endpoints("a")] == ["a-0", "a-1"]
    assert await registry.deregister("a-0")
    assert await store.get(registry_key("a-0")) is None
    assert [r.proxy_id for r in registry.endpoints("a")] == ["a-1"]


async def test_a_proxy_without_an_app_is_registered_but_no_endpoint(store: SqliteStore) -> None:
    """A `publish` front door (appPort 0) is a known proxy, never an endpoint of its service."""
    registry = Registry(store, ttl=3.0, clock=FakeClock())
    await registry.register(reg("frontend-0", service="frontend"))
    front = msgspec.structs.replace(reg("frontend-publish", service="frontend"), app_port=0)
    await registry.register(front)
    assert [r.proxy_id for r in registry.endpoints("frontend")] == [
        "frontend-0",
        "frontend-publish",
    ]
    assert [r.proxy_id for r in registry.app_endpoints("frontend")] == ["frontend-0"]
    assert [r.proxy_id for r in registry.app_endpoints()] == ["frontend-0"]
    assert registry.get("frontend-publish") is not None
    assert await store.get(registry_key("frontend-publish")) is not None


async def test_restart_serves_persisted_endpoints_with_fresh_ttl(tmp_path: Path) -> None:
    """A restarted control plane knows every registration at once, each with a new TTL."""
    path = tmp_path / "store.sqlite"
    clock = FakeClock()
    store = await SqliteStore.open(path)
    registry = Registry(store, ttl=3.0, clock=clock)
    await registry.register(reg("p-0"))
    await registry.register(reg("p-1", ready=False))
    clock.now += 10
    registry.sweep()
    await store.close()

    clock.now += 100
    store = await SqliteStore.open(path)
    try:
        restarted = Registry(store, ttl=3.0, clock=clock)
        assert await restarted.load() == 2
        p0, p1 = restarted.endpoints()
        assert (p0.proxy_id, p0.healthy, p0.last_heartbeat) == ("p-0", True, clock.now)
        assert (p1.proxy_id, p1.ready, p1.healthy) == ("p-1", False, False)
        assert p0.labels == {"version": "v1"}
        assert p0.app_port == 8080
        assert await restarted.heartbeat("p-0")
    finally:
        await store.close()


async def test_run_loop_marks_silent_proxy_unhealthy(store: SqliteStore) -> None:
    """The loop timer, on the real clock, expires a silent proxy within the TTL (plus slack)."""
    ttl = 0.2
    registry = Registry(store, ttl=ttl, clock=time.time)
    expired = asyncio.Event()
    started = time.time()
    await registry.register(reg())
    registry.subscribe(lambda: None if registry.endpoints()[0].healthy else expired.set())
    task = asyncio.create_task(registry.run())
    try:
        await asyncio.wait_for(expired.wait(), 5)
    finally:
        task.cancel()
    elapsed = time.time() - started
    assert ttl <= elapsed < ttl + 0.5


def test_bad_ttl_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ttl must be positive"):
        Registry(None, ttl=0, clock=time.time)  # type: ignore[arg-type]


async def test_a_silent_registration_expires_and_is_removed(store: SqliteStore) -> None:
    """20 x ttl (at least 60 s) after its last heartbeat a registration is gone, store too."""
    clock = FakeClock()
    registry = Registry(store, ttl=3.0, clock=clock)
    assert registry.expire_after == 60.0
    assert Registry(store, ttl=10.0, clock=clock).expire_after == 200.0
    await registry.register(reg("gone"))
    await registry.register(reg("alive"))
    clock.now += 59
    assert await registry.heartbeat("alive")
    assert registry.next_removal() == clock.now + 1
    assert await registry.expire() == []
    clock.now += 1
    assert await registry.expire() == ["gone"]
    assert registry.get("gone") is None
    assert await store.get(registry_key("gone")) is None
    assert registry.get("alive") is not None
    with pytest.raises(ValueError, match="longer than the heartbeat ttl"):
        Registry(store, ttl=3.0, clock=clock, expire_after=3.0)


async def test_the_registry_task_removes_expired_registrations(store: SqliteStore) -> None:
    registry = Registry(store, ttl=0.05, clock=time.time, expire_after=0.2)
    await registry.register(reg())
    task = asyncio.create_task(registry.run())
    try:
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while registry.get("pricing-0") is not None:
            assert loop.time() < end, "the registration did not expire within 5s"
            await asyncio.sleep(0.01)
        assert await store.get(registry_key("pricing-0")) is None
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_one_identity_holds_a_bounded_number_of_registrations(store: SqliteStore) -> None:
    registry = Registry(store, ttl=3.0, clock=FakeClock(), max_per_identity=2)
    mine = "spiffe://gossamer.local/ns/default/sa/pricing"
    for i in range(2):
        await registry.register(msgspec.structs.replace(reg(f"p-{i}"), identity=mine))
    # Re-registering an id it holds is no new registration.
    await registry.register(msgspec.structs.replace(reg("p-1", ready=False), identity=mine))
    with pytest.raises(RegistrationLimitError, match="already holds 2 proxy registrations"):
        await registry.register(msgspec.structs.replace(reg("p-2"), identity=mine))
    assert registry.get("p-2") is None
    other = "spiffe://gossamer.local/ns/default/sa/web"
    await registry.register(msgspec.structs.replace(reg("w-0"), identity=other))
    assert registry.count_identity(mine) == 2
