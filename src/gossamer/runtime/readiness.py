"""Waiting on readiness signals (ready files, /ready endpoints) with a deadline, never blindly."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from gossamer.runtime.state import read_json

T = TypeVar("T")

# Direct connections only: the runtime's own environment may carry an HTTP_PROXY.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class NotReady(Exception):
    """Something did not become ready before its deadline."""


class Aborted(Exception):
    """The wait was cut short because the runtime was asked to stop."""


def wait_for(
    probe: Callable[[], T | None],
    *,
    deadline: float,
    what: str,
    check: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
    interval: float = 0.02,
) -> T:
    """Call `probe` until it returns something other than None and return that.

    Args:
        deadline: a time on `clock` after which to give up.
        what: names what is awaited, for the error message.
        check: called each round; raises to fail early (e.g. the process died).
        stop: when set, the wait ends with Aborted.

    Raises:
        NotReady: the deadline passed.
        Aborted: `stop` was set.
    """
    stop = stop or threading.Event()
    while True:
        if stop.is_set():
            raise Aborted(what)
        if check is not None:
            check()
        value = probe()
        if value is not None:
            return value
        remaining = deadline - clock()
        if remaining <= 0:
            raise NotReady(f"{what} was not ready in time")
        stop.wait(min(interval, remaining))


def ready_file(path: Path) -> Callable[[], dict[str, Any] | None]:
    """A probe returning the ready file's JSON once it exists."""
    return lambda: read_json(path)


def http_ok(url: str, timeout: float = 0.5) -> bool:
    """Whether GET `url` answers 2xx."""
    try:
        with _DIRECT.open(url, timeout=timeout) as resp:
            status: int = resp.status
            return 200 <= status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def http_post(url: str, timeout: float = 0.5) -> bool:
    """POST an empty body to `url`; whether it answered 2xx."""
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with _DIRECT.open(req, timeout=timeout) as resp:
            status: int = resp.status
            return 200 <= status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False
