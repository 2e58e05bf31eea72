"""Writing files that other processes read while we write them (ready files, status, caches)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(
    path: Path,
    data: bytes,
    *,
    fsync: bool = True,
    mode: int | None = None,
    make_parents: bool = True,
) -> None:
    """Write `data` to a temp file beside `path`, then rename it: readers never see half a file.

    Args:
        fsync: flush to disk before the rename, for files that must survive a crash (caches);
            files only read by live processes (ready files, status) can skip it.
        mode: the file's permissions; None keeps mkstemp's 0600. Set before any data is
            written, so a secret is never readable by others.
        make_parents: create missing folders; False lets a missing folder fail (OSError).
    """
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
