"""The SQLite store keeps etcd's semantics: revisions, prefixes, transactions, watch, durability."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gossamer.control.store.base import CompactedError, StoreClosedError, WatchEvent
from gossamer.control.store.sqlite import SqliteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await SqliteStore.open(tmp_path / "store.sqlite")
    yield s
    await s.close()


async def next_event(it: AsyncIterator[WatchEvent]) -> WatchEvent:
    return await asyncio.wait_for(anext(it), 2.0)


async def test_put_get_revisions(store: SqliteStore) -> None:
    """Every write bumps the global revision; create_revision stays, mod_revision moves."""
    assert await store.revision() == 0
    assert await store.get("/a") is None
    assert await store.put("/a", b"1") == 1
    assert await store.put("/b", b"2") == 2
    assert await store.put("/a", b"3") == 3
    kv = await store.get("/a")
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision) == (b"3", 1, 3)
    assert await store.revision() == 3


async def test_list_by_prefix(store: SqliteStore) -> None:
    """list returns only keys under the prefix, sorted, with the store's revision."""
    for key in ("/r/b", "/r/a", "/rx/c", "/s/d"):
        await store.put(key, key.encode())
    items, rev = await store.list("/r/")
    assert [kv.key for kv in items] == ["/r/a", "/r/b"]
    assert rev == 4
    everything, _ = await store.list("")
    assert len(everything) == 4
    none, _ = await store.list("/nothing/")
    assert none == []


async def test_delete(store: SqliteStore) -> None:
    """delete returns the new revision, or None (and no new revision) when the key is absent."""
    await store.put("/a", b"1")
    assert await store.delete("/a") == 2
    assert await store.get("/a") is None
    assert await store.delete("/a") is None
    assert await store.revision() == 2
    # A key created again starts a new life.
    await store.put("/a", b"2")
    kv = await store.get("/a")
    assert kv is not None
    assert kv.create_revision == 3


async def test_txn_shares_one_revision(store: SqliteStore) -> None:
    """A transaction's writes share one revision; an empty one writes nothing."""
    assert await store.txn_put_many([("/a", b"1"), ("/b", b"2")]) == 1
    a, b = await store.get("/a"), await store.get("/b")
    assert a is not None
    assert b is not None
    assert a.mod_revision == b.mod_revision == 1
    assert await store.txn_put_many([]) == 1


async def test_txn_all_or_nothing(store: SqliteStore) -> None:
    """A transaction that fails part way leaves no key written and the revision unchanged."""
    await store.put("/keep", b"old")
    bad: object = object()  # sqlite cannot bind it: the second write fails inside the transaction
    with pytest.raises(Exception, match=r"bind|type"):
        await store.txn_put_many([("/keep", b"new"), ("/other", bad)])  # type: ignore[list-item]
    kv = await store.get("/keep")
    assert kv is not None
    assert kv.value == b"old"
    assert await store.get("/other") is None
    assert await store.revision() == 1


async def test_watch_replays_from_old_revision(store: SqliteStore) -> None:
    """A watch from an old revision yields the missed events, then live ones, in order."""
    await store.put("/w/a", b"1")
    await store.put("/x/ignored", b"-")
    await store.put("/w/b", b"2")
    await store.delete("/w/a")
    it = store.watch("/w/", 2)
    first = await next_event(it)
    assert (first.type, first.kv.key, first.revision) == ("PUT", "/w/b", 3)
    second = await next_event(it)
    assert (second.type, second.kv.key, second.revision) == ("DELETE", "/w/a", 4)
    await store.put("/x/also-ignored", b"-")
    await store.put("/w/c", b"3")
    live = await next_event(it)
    assert (live.type, live.kv.key, live.kv.value, live.revision) == ("PUT", "/w/c", b"3", 6)
    await it.aclose()  # type: ignore[attr-defined]


async def test_watch_cancelled_wait_keeps_watch(store: SqliteStore) -> None:
    """A timed-out wait for the next event does not end the watch."""
    it = store.watch("/w/", 0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(it), 0.01)
    await store.put("/w/a", b"1")
    assert (await next_event(it)).kv.key == "/w/a"


async def test_watch_live_only(store: SqliteStore) -> None:
    """start_revision 0 means from now on: history is not replayed."""
    await store.put("/w/old", b"1")
    it = store.watch("/w/", 0)  # subscribed from here on, before the first anext
    await store.txn_put_many([("/w/n1", b"a"), ("/w/n2", b"b")])
    e1 = await next_event(it)
    e2 = await next_event(it)
    assert [e1.kv.key, e2.kv.key] == ["/w/n1", "/w/n2"]
    assert e1.revision == e2.revision == 2
    await it.aclose()  # type: ignore[attr-defined]


async def test_watch_sees_concurrent_writes_in_order(store: SqliteStore) -> None:
    """Concurrent writers: a watcher gets every event once, in revision order."""
    it = store.watch("/c/", 1)
    await asyncio.gather(*(store.put(f"/c/{i}", b"x") for i in range(40)))
    revisions = [(await next_event(it)).revision for _ in range(40)]
    assert revisions == list(range(1, 41))
    await it.aclose()  # type: ignore[attr-defined]


async def test_watch_compacted(tmp_path: Path) -> None:
    """A watch from a revision older than the kept history fails clearly."""
    s = await SqliteStore.open(tmp_path / "s.sqlite", history_limit=5)
    try:
        for i in range(12):
            await s.put(f"/k/{i}", b"x")
        with pytest.raises(CompactedError, match="compacted"):
            await next_event(s.watch("/k/", 1))
        recent = await next_event(s.watch("/k/", 10))
        assert recent.revision == 10
    finally:
        await s.close()


async def test_watch_ends_when_store_closes(tmp_path: Path) -> None:
    s = await SqliteStore.open(tmp_path / "s.sqlite")
    it = s.watch("/", 0)
    waiter = asyncio.ensure_future(anext(it))
    await s.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiter, 2)
    with pytest.raises(StoreClosedError):
        await s.get("/a")


async def test_state_survives_reopen(tmp_path: Path) -> None:
    """Keys, revisions and history persist; revisions keep growing after a reopen."""
    path = tmp_path / "store.sqlite"
    s = await SqliteStore.open(path)
    await s.put("/a", b"1")
    await s.txn_put_many([("/b", b"2"), ("/c", b"3")])
    await s.delete("/c")
    await s.close()

    s = await SqliteStore.open(path)
    try:
        assert await s.revision() == 3
        items, rev = await s.list("/")
        assert [(kv.key, kv.value) for kv in items] == [("/a", b"1"), ("/b", b"2")]
        assert rev == 3
        replay = s.watch("/", 2)
        events = [await next_event(replay) for _ in range(3)]
        assert [(e.type, e.kv.key) for e in events] == [
            ("PUT", "/b"),
            ("PUT", "/c"),
            ("DELETE", "/c"),
        ]
        assert await s.put("/d", b"4") == 4
        await replay.aclose()  # type: ignore[attr-defined]
    finally:
        await s.close()
