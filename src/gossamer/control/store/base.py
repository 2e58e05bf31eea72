"""The store interface: etcd's key-value semantics (global revision, prefix reads, watch)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as stored: its value and the revisions that created and last changed it."""

    key: str
    value: bytes
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change to one key. For DELETE, `kv.value` is empty and `kv.mod_revision` is `revision`."""

    type: Literal["PUT", "DELETE"]
    kv: KeyValue
    revision: int


class StoreError(Exception):
    """The store cannot do what was asked."""


class CompactedError(StoreError):
    """A watch asked for history older than the store still keeps."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(
            f"revision {requested} has been compacted (history starts after revision {compacted}); "
            "list again and watch from the revision it returns"
        )
        self.requested = requested
        self.compacted = compacted


class StoreClosedError(StoreError):
    """The store was closed."""


_Events = list[WatchEvent]
_KeyValues = list[KeyValue]
_Items = list[tuple[str, bytes]]


class Store(Protocol):
    """Desired state with revisions. Every write bumps one global revision, which only grows.

    `watch(prefix, start_revision)` yields every change to keys under `prefix` with revision >=
    `start_revision` (history first, then live changes); `start_revision <= 0` means "from now on".
    A transaction's changes share one revision. The iterator ends when the store closes.
    """

    async def get(self, key: str) -> KeyValue | None: ...

    async def list(self, prefix: str) -> tuple[_KeyValues, int]: ...

    async def put(self, key: str, value: bytes) -> int: ...

    async def delete(self, key: str) -> int | None: ...

    async def txn_put_many(self, items: _Items) -> int: ...

    def watch(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]: ...

    async def revision(self) -> int: ...

    async def close(self) -> None: ...
