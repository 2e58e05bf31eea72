"""The embedded store: etcd's semantics on one SQLite file in WAL mode."""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, TypeVar, cast

from gossamer.control.store.base import (
    CompactedError,
    KeyValue,
    StoreClosedError,
    WatchEvent,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    revision INTEGER NOT NULL,
    type TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    create_revision INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS history_revision ON history (revision);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 0), ('compacted', 0);
"""


def _prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix` (None: no bound)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


_Events = list[WatchEvent]
_KeyValues = list[KeyValue]
_Items = list[tuple[str, bytes]]
_Flags = list[bool]


class _Watcher:
    __slots__ = ("prefix", "queue")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()


class SqliteStore:
    """A `Store` on SQLite. One worker thread runs every statement, so calls never overlap.

    Writes also take an asyncio lock that covers commit and fan-out, so live watchers see events
    in revision order. History of changes is kept in a table (trimmed to `history_limit`
    revisions) so that a watch from an old revision replays what it missed.
    """

    def __init__(self, conn: sqlite3.Connection, executor: ThreadPoolExecutor, history_limit: int):
        self._conn = conn
        self._executor = executor
        self._history_limit = history_limit
        self._write_lock = asyncio.Lock()
        self._watchers: set[_Watcher] = set()
        self._closed = False
        self._revision = 0  # the last committed revision, kept in step by `_write`

    @classmethod
    async def open(cls, path: str | Path, *, history_limit: int = 10_000) -> SqliteStore:
        """Open (creating if needed) the store file at `path`."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gossamer-store")

        def connect() -> sqlite3.Connection:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # WAL with synchronous=NORMAL survives a process crash; only power loss may drop the
            # last commits, which the proxies' own last-snapshot files cover.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            return conn

        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, connect)
        except Exception:
            executor.shutdown(wait=False)
            raise
        store = cls(conn, executor, history_limit)
        store._revision = await store._run(store._current_revision)
        return store

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StoreClosedError("the store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # --- reads -----------------------------------------------------------------------------------

    def _current_revision(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
        return int(row[0])

    async def revision(self) -> int:
        return await self._run(self._current_revision)

    async def get(self, key: str) -> KeyValue | None:
        def read() -> KeyValue | None:
            row = self._conn.execute(
                "SELECT key, value, create_revision, mod_revision FROM kv WHERE key = ?", (key,)
            ).fetchone()
            return None if row is None else KeyValue(row[0], bytes(row[1]), row[2], row[3])

        return await self._run(read)

    async def list(self, prefix: str) -> tuple[_KeyValues, int]:
        def read() -> tuple[_KeyValues, int]:
            self._conn.execute("BEGIN")
            try:
                sql, args = self._range_sql(prefix)
                rows = self._conn.execute(
                    f"SELECT key, value, create_revision, mod_revision FROM kv WHERE {sql} "
                    "ORDER BY key",
                    args,
                ).fetchall()
                rev = self._current_revision()
            finally:
                self._conn.execute("COMMIT")
            return [KeyValue(r[0], bytes(r[1]), r[2], r[3]) for r in rows], rev

        return await self._run(read)

    @staticmethod
    def _range_sql(prefix: str, column: str = "key") -> tuple[str, tuple[str, ...]]:
        end = _prefix_end(prefix)
        if end is None:
            return f"{column} >= ?", (prefix,)
        return f"{column} >= ? AND {column} < ?", (prefix, end)

    # --- writes ----------------------------------------------------------------------------------

    def _bump(self) -> int:
        rev = self._current_revision() + 1
        self._conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (rev,))
        return rev

    def _put_locked(self, rev: int, key: str, value: bytes) -> WatchEvent:
        row = self._conn.execute("SELECT create_revision FROM kv WHERE key = ?", (key,)).fetchone()
        create = rev if row is None else int(row[0])
        self._conn.execute(
            "INSERT INTO kv (key, value, create_revision, mod_revision) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
            "mod_revision = excluded.mod_revision",
            (key, value, create, rev),
        )
        self._conn.execute(
            "INSERT INTO history (revision, type, key, value, create_revision) "
            "VALUES (?, 'PUT', ?, ?, ?)",
            (rev, key, value, create),
        )
        return WatchEvent("PUT", KeyValue(key, value, create, rev), rev)

    def _compact_locked(self, rev: int) -> None:
        # Trim in steps rather than on every write: one DELETE per `step` revisions.
        step = max(1, min(1000, self._history_limit))
        floor = rev - self._history_limit
        if floor > 0 and rev % step == 0:
            self._conn.execute("DELETE FROM history WHERE revision <= ?", (floor,))
            self._conn.execute("UPDATE meta SET value = ? WHERE name = 'compacted'", (floor,))

    def _transaction(
        self, body: Callable[[], tuple[int, _Events]]
    ) -> Callable[[], tuple[int, _Events]]:
        def run() -> tuple[int, _Events]:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = body()
                if result[1]:
                    self._compact_locked(result[0])
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

        return run

    async def _write(self, body: Callable[[], tuple[int, _Events]]) -> int:
        async with self._write_lock:
            rev, events = await self._run(self._transaction(body))
            self._revision = max(self._revision, rev)
            self._publish(events)
            return rev

    def _publish(self, events: _Events) -> None:
        for watcher in self._watchers:
            for event in events:
                if event.kv.key.startswith(watcher.prefix):
                    watcher.queue.put_nowait(event)

    async def put(self, key: str, value: bytes) -> int:
        def body() -> tuple[int, _Events]:
            rev = self._bump()
            return rev, [self._put_locked(rev, key, value)]

        return await self._write(body)

    async def txn_put_many(self, items: _Items) -> int:
        def body() -> tuple[int, _Events]:
            if not items:
                return self._current_revision(), []
            rev = self._bump()
            return rev, [self._put_locked(rev, key, value) for key, value in items]

        return await self._write(body)

    async def delete(self, key: str) -> int | None:
        deleted: _Flags = []

        def body() -> tuple[int, _Events]:
            row = self._conn.execute(
                "SELECT create_revision FROM kv WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                return self._current_revision(), []
            rev = self._bump()
            self._conn.execute("DELETE FROM kv WHERE key = ?", (key,))
            self._conn.execute(
                "INSERT INTO history (revision, type, key, value, create_revision) "
                "VALUES (?, 'DELETE', ?, X'', ?)",
                (rev, key, int(row[0])),
            )
            deleted.append(True)
            return rev, [WatchEvent("DELETE", KeyValue(key, b"", int(row[0]), rev), rev)]

        rev = await self._write(body)
        return rev if deleted else None

    # --- watch -----------------------------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        """Changes under `prefix` from `start_revision` on (<= 0: from this call on).

        The watch subscribes at once, so a write made after this call returns is never missed even
        before the first `anext`. Close it with `aclose()` (or drop it) when done.
        """
        if self._closed:
            raise StoreClosedError("the store is closed")
        return _Watch(self, prefix, start_revision)

    def _history(self, prefix: str, start: int) -> tuple[_Events, int]:
        compacted = int(
            self._conn.execute("SELECT value FROM meta WHERE name = 'compacted'").fetchone()[0]
        )
        if start <= compacted:
            raise CompactedError(start, compacted)
        sql, args = self._range_sql(prefix)
        self._conn.execute("BEGIN")
        try:
            rows = self._conn.execute(
                f"SELECT revision, type, key, value, create_revision FROM history "
                f"WHERE revision >= ? AND {sql} ORDER BY id",
                (start, *args),
            ).fetchall()
            current = self._current_revision()
        finally:
            self._conn.execute("COMMIT")
        events = [
            WatchEvent(
                cast(Literal["PUT", "DELETE"], r[1]),
                KeyValue(r[2], bytes(r[3]), r[4], r[0]),
                r[0],
            )
            for r in rows
        ]
        return events, current

    # --- lifecycle -------------------------------------------------------------------------------

    async def close(self) -> None:
        if self._closed:
            return
        async with self._write_lock:
            self._closed = True
            for watcher in self._watchers:
                watcher.queue.put_nowait(None)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._conn.close)
            self._executor.shutdown(wait=True)


class _Watch:
    """One watch: history from the start revision first, then live events past it."""

    def __init__(self, store: SqliteStore, prefix: str, start: int) -> None:
        self._store = store
        self._prefix = prefix
        self._start = start
        self._watcher = _Watcher(prefix)
        store._watchers.add(self._watcher)
        # Live events at or below `_last` were already seen (in history, or before this watch).
        self._last = store._revision if start <= 0 else start - 1
        self._replay: collections.deque[WatchEvent] | None = (
            None if start > 0 else collections.deque()
        )
        self._done = False

    def __aiter__(self) -> _Watch:
        return self

    async def __anext__(self) -> WatchEvent:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._replay is None:
                store = self._store
                events, current = await store._run(
                    lambda: store._history(self._prefix, self._start)
                )
                self._replay = collections.deque(events)
                self._last = max(current, self._start - 1)
            if self._replay:
                return self._replay.popleft()
            while True:
                event = await self._watcher.queue.get()
                if event is None:
                    break
                if event.revision > self._last:
                    return event
        except Exception:
            # A cancelled wait leaves the watch usable; a failed one (compacted) ends it.
            self._close()
            raise
        self._close()
        raise StopAsyncIteration

    def _close(self) -> None:
        self._done = True
        self._store._watchers.discard(self._watcher)

    async def aclose(self) -> None:
        self._close()

    def __del__(self) -> None:
        self._store._watchers.discard(self._watcher)
