"""Request deadlines on one loop timer: a per-request `call_later` costs more than the request.

Entries are objects with a `deadline` (loop time) and an `on_deadline()` method. The timer is
armed for the earliest deadline and moved only when a new entry is due sooner than that; with a
fixed timeout per route that almost never happens, so adding and removing an entry is a set
operation. When the timer fires, expired entries are called and it re-arms for the next one.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class HasDeadline(Protocol):
    deadline: float

    def on_deadline(self) -> None: ...


class Deadlines:
    """The pending deadlines of one event loop."""

    __slots__ = ("_active", "_handle", "_loop", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._active: set[HasDeadline] = set()
        self._handle: asyncio.TimerHandle | None = None
        self._when = 0.0

    def __len__(self) -> int:
        return len(self._active)

    def add(self, entry: HasDeadline) -> None:
        """Watch `entry` (its `deadline` is set); adding it again after a change re-checks it."""
        self._active.add(entry)
        if self._handle is None or entry.deadline < self._when:
            self._arm(entry.deadline)

    def discard(self, entry: HasDeadline) -> None:
        self._active.discard(entry)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._when = when
        self._handle = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = self._loop.time()
        expired = [e for e in self._active if e.deadline <= now]
        for entry in expired:
            self._active.discard(entry)
        for entry in expired:
            entry.on_deadline()  # may add entries back with a later deadline
        if self._active and self._handle is None:
            self._arm(min(e.deadline for e in self._active))

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._active.clear()
