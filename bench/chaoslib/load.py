"""Closed-loop load for chaos scenarios, bounded in requests and seconds, every answer recorded.

Each worker is a thread with one keep-alive `http.client` connection to a sidecar's outbound
listener (or a published front door), as an app would talk to it. Every request becomes a
`Sample`: when it started and ended, its status (0 for a transport error), the replica that
answered (`x-chaos-replica`, set by examples/chaos/backend.py) and `x-gossamer-flags`.
"""

from __future__ import annotations

import http.client
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Sample:
    start: float  # time.monotonic()
    end: float
    path: str
    status: int  # 0: no HTTP answer (see error)
    replica: str
    flags: str
    error: str = ""

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def ok(self) -> bool:
        """A 2xx answer: the backend's own, or a fallback the mesh served in its place."""
        return 200 <= self.status < 300


class Load:
    """`workers` threads sending GETs with `Host: host` to `address`, cycling through `paths`,
    until `stop()`, `max_requests` answers, or `max_seconds`, whichever comes first."""

    def __init__(
        self,
        address: str,
        host: str,
        paths: Sequence[str] = ("/",),
        workers: int = 8,
        max_requests: int = 100_000,
        max_seconds: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        self.address = address
        self.host = host
        self.paths = list(paths)
        self.workers = workers
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.timeout = timeout
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._deadline = 0.0

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Load:
        self._deadline = time.monotonic() + self.max_seconds
        for i in range(self.workers):
            t = threading.Thread(target=self._work, args=(i,), name=f"load-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 5)

    def _work(self, index: int) -> None:
        host, port = self.address.rsplit(":", 1)
        conn: http.client.HTTPConnection | None = None
        n = index  # workers start on different paths, so every path gets load from the start
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            with self._lock:
                if len(self._samples) >= self.max_requests:
                    break
            path = self.paths[n % len(self.paths)]
            n += 1
            start = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, int(port), timeout=self.timeout)
                conn.request("GET", path, headers={"host": self.host})
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException) as exc:
                sample = Sample(start, time.monotonic(), path, 0, "", "", type(exc).__name__)
                if conn is not None:
                    conn.close()
                conn = None
            else:
                sample = Sample(
                    start,
                    time.monotonic(),
                    path,
                    resp.status,
                    resp.getheader("x-chaos-replica", ""),
                    resp.getheader("x-gossamer-flags", ""),
                )
                if resp.will_close:
                    conn.close()
                    conn = None
            with self._lock:
                self._samples.append(sample)
        if conn is not None:
            conn.close()

    def samples(self, since: float = 0.0, until: float = math.inf) -> list[Sample]:
        """Requests that started in [since, until)."""
        with self._lock:
            return [s for s in self._samples if since <= s.start < until]

    def count(self) -> int:
        with self._lock:
            return len(self._samples)

    def wait(self, what: str, check: Callable[[], bool], deadline: float) -> None:
        """Keep the load running until `check()` holds; fail naming `what` after `deadline` s."""
        end = time.monotonic() + deadline
        while not check():
            if time.monotonic() >= end or not any(t.is_alive() for t in self._threads):
                raise TimeoutError(f"load through {self.address}: no {what} within {deadline:g}s")
            time.sleep(0.02)

    def run_for(self, seconds: float) -> None:
        """Keep the load running for `seconds` more (the load's own bounds still apply)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end and any(t.is_alive() for t in self._threads):
            time.sleep(0.02)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100.0 * len(ordered))) - 1]
