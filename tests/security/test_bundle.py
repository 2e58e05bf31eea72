"""The bundle helpers `gossamer check` uses: half-life and how long is left, for people."""

from __future__ import annotations

import datetime as dt

from gossamer.security.bundle import describe_remaining, past_half_life

NOW = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(hours=24)


def test_past_half_life() -> None:
    assert not past_half_life(NOW + dt.timedelta(hours=13), DAY, NOW)
    assert not past_half_life(NOW + dt.timedelta(hours=12), DAY, NOW)
    assert past_half_life(NOW + dt.timedelta(hours=11, minutes=59), DAY, NOW)
    assert past_half_life(NOW - dt.timedelta(hours=1), DAY, NOW)


def test_describe_remaining() -> None:
    assert describe_remaining(dt.timedelta(days=12, hours=4, minutes=5)) == "12d 4h"
    assert describe_remaining(dt.timedelta(hours=3, minutes=20, seconds=9)) == "3h 20m"
    assert describe_remaining(dt.timedelta(minutes=2, seconds=5)) == "2m 5s"
    assert describe_remaining(dt.timedelta(seconds=45)) == "45s"
    assert describe_remaining(dt.timedelta(days=-2, hours=-1)) == "expired 2d 1h ago"
