"""Tests for the log rate limit, driven by an injected clock."""

from __future__ import annotations

from gossamer.telemetry.ratelimit import RateLimit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_first_line_is_due_then_held_back_until_the_interval_passes() -> None:
    clock = Clock()
    limit = RateLimit(clock, 5.0)
    assert limit.due() == 0
    clock.now += 1.0
    assert limit.due() is None
    clock.now += 3.9
    assert limit.due() is None
    clock.now += 0.1
    assert limit.due() == 2  # two held back since the last line
    assert limit.due() is None
    clock.now += 5.0
    assert limit.due() == 1
    clock.now += 5.0
    assert limit.due() == 0  # the count restarts after each line


def test_each_key_has_its_own_limit_and_count() -> None:
    clock = Clock()
    limit = RateLimit(clock, 1.0)
    assert limit.due("timeout") == 0
    assert limit.due("timeout") is None
    assert limit.due("timeout") is None
    assert limit.due("bad-identity") == 0  # a flood of one kind does not hide another
    assert limit.due("bad-identity") is None
    clock.now += 1.0
    assert limit.due("timeout") == 2
    assert limit.due("bad-identity") == 1
