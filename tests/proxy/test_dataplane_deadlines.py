"""Unit tests of the shared deadline timer, driven by a fake loop clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from gossamer.proxy.deadlines import Deadlines


class FakeHandle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """Just enough of a loop: a clock we move and call_at handles we fire."""

    def __init__(self) -> None:
        self.now = 100.0
        self.handles: list[FakeHandle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle(when, callback)
        self.handles.append(handle)
        return handle

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for handle in list(self.handles):
            if not handle.cancelled and handle.when <= self.now:
                self.handles.remove(handle)
                handle.callback()

    @property
    def armed(self) -> list[FakeHandle]:
        return [h for h in self.handles if not h.cancelled]


class Entry:
    def __init__(self, deadline: float, log: list[str], name: str) -> None:
        self.deadline = deadline
        self.log = log
        self.name = name

    def on_deadline(self) -> None:
        self.log.append(self.name)


def make() -> tuple[FakeLoop, Deadlines]:
    loop = FakeLoop()
    return loop, Deadlines(cast(asyncio.AbstractEventLoop, cast(Any, loop)))


def test_one_timer_serves_many_entries_with_the_same_timeout() -> None:
    """Adding later deadlines does not touch the armed timer: one handle for all."""
    loop, deadlines = make()
    log: list[str] = []
    entries = [Entry(110.0 + i * 0.001, log, f"e{i}") for i in range(100)]
    for e in entries:
        deadlines.add(e)
    assert len(loop.handles) == 1
    for e in entries[:99]:
        deadlines.discard(e)
    loop.advance(10.0)
    assert log == []  # e99 is due 0.099 s later: the timer re-armed for it
    loop.advance(0.1)
    assert log == ["e99"]
    assert len(deadlines) == 0


def test_earlier_entry_rearms_and_removed_entries_never_fire() -> None:
    loop, deadlines = make()
    log: list[str] = []
    late = Entry(130.0, log, "late")
    early = Entry(105.0, log, "early")
    gone = Entry(101.0, log, "gone")
    deadlines.add(late)
    deadlines.add(early)
    assert [h.when for h in loop.armed] == [105.0]
    deadlines.add(gone)
    deadlines.discard(gone)
    loop.advance(6.0)
    assert log == ["early"]
    loop.advance(30.0)
    assert log == ["early", "late"]
    assert loop.armed == []


def test_entry_added_back_from_its_callback_fires_again() -> None:
    """An exchange whose try deadline passed re-adds itself for its request deadline."""
    loop, deadlines = make()
    log: list[str] = []

    class Twice(Entry):
        def on_deadline(self) -> None:
            super().on_deadline()
            if len(self.log) == 1:
                self.deadline += 5.0
                deadlines.add(self)

    deadlines.add(Twice(101.0, log, "t"))
    loop.advance(1.0)
    loop.advance(5.0)
    assert log == ["t", "t"]


def test_close_cancels_the_timer() -> None:
    loop, deadlines = make()
    deadlines.add(Entry(101.0, [], "x"))
    deadlines.close()
    assert loop.armed == []
    assert len(deadlines) == 0
