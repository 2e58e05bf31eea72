"""The last Snapshot this proxy ACKed, kept on disk so it can start without the control plane."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from gossamer import snapshot as snapshot_mod
from gossamer.files import write_atomically
from gossamer.snapshot import Snapshot

CACHE_FILE = "last-snapshot.json"


class CacheError(Exception):
    """The cache file exists but cannot be used; the message names the file and the problem."""


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
