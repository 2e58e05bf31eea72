"""The last Snapshot this proxy ACKed, kept on disk so it can start without the control plane."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import msgspec

from gossamer import snapshot as snapshot_mod
from gossamer.snapshot import Snapshot

CACHE_FILE = "last-snapshot.json"


class CacheError(Exception):
    """The cache file exists but cannot be used; the message names the file and the problem."""


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync it, then rename: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class SnapshotCache:
    """`STATE_DIR/last-snapshot.json`: saved after every ACK, read once at start."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.path = Path(state_dir) / CACHE_FILE

    def save(self, snapshot: Snapshot) -> None:
        write_atomically(self.path, snapshot_mod.encode(snapshot))

    def load(self) -> Snapshot | None:
        """The cached Snapshot, or None when there is none.

        Raises:
            CacheError: the file cannot be read or is not a valid Snapshot.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CacheError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        try:
            return snapshot_mod.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise CacheError(f"{self.path}: not a valid snapshot: {exc}") from None
