"""Rate limits for log lines: at most one line per key per interval, counting those held back."""

from __future__ import annotations

from collections.abc import Callable


class RateLimit:
    """Says when a line is due: at most once per key per `interval` seconds of `clock`.

    Callers ask `due` before formatting anything, so a flood of suppressed lines costs a dict
    lookup each, and each key has its own limit: a flood of one kind cannot hide another.
    """

    __slots__ = ("_clock", "_held", "_interval", "_next")

    def __init__(self, clock: Callable[[], float], interval: float) -> None:
        self._clock = clock
        self._interval = interval
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def due(self, key: str = "") -> int | None:
        """None when the line is suppressed, else how many were held back since the last one."""
        now = self._clock()
        if now < self._next.get(key, 0.0):
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._next[key] = now + self._interval
        return self._held.pop(key, 0)
