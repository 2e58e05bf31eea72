"""Tests for the on-disk cache of the last ACKed snapshot."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_agent_fakes import make_snapshot

from gossamer.files import write_atomically
from gossamer.proxy.cache import CACHE_FILE, CacheError, SnapshotCache


def test_round_trip(tmp_path: Path) -> None:
    """What is saved loads back equal, at STATE_DIR/last-snapshot.json, with no temp files left."""
    cache = SnapshotCache(tmp_path / "state")
    snap = make_snapshot()
    cache.save(snap)
    assert cache.path == tmp_path / "state" / CACHE_FILE
    assert cache.load() == snap
    assert sorted(p.name for p in cache.path.parent.iterdir()) == [CACHE_FILE]


def test_missing_cache_is_none(tmp_path: Path) -> None:
    """No file is not an error: there is simply nothing to start from."""
    assert SnapshotCache(tmp_path).load() is None


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"{not json", "not a valid snapshot: JSON is malformed"),
        (b'{"proxy": {"service": "x"}}', "not a valid snapshot: Object missing required field"),
        (b"", "not a valid snapshot"),
    ],
)
def test_corrupt_cache_is_a_clear_error(tmp_path: Path, content: bytes, expected: str) -> None:
    """A damaged file raises CacheError naming the file and the problem, not a traceback."""
    cache = SnapshotCache(tmp_path)
    cache.path.write_bytes(content)
    with pytest.raises(CacheError) as info:
        cache.load()
    assert str(info.value).startswith(f"{cache.path}: ")
    assert expected in str(info.value)


def test_replace_and_failed_write(tmp_path: Path) -> None:
    """A new save replaces the old content whole; a write that fails leaves no temp file behind."""
    cache = SnapshotCache(tmp_path)
    cache.save(make_snapshot(cluster="a.default"))
    second = make_snapshot(cluster="b.default")
    cache.save(second)
    assert cache.load() == second

    target = tmp_path / "occupied"
    (target / "child").mkdir(parents=True)  # rename onto a non-empty directory fails
    with pytest.raises(OSError, match="occupied"):
        write_atomically(target, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [CACHE_FILE, "occupied"]
    assert cache.load() == second
