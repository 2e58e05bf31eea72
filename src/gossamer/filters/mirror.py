"""Request mirroring (Gateway API RequestMirror): a copy of some requests to another cluster.

`compile(mirror, counter)` turns a `snapshot.RequestMirror` into a `Mirror` once per Snapshot.
Per request the downstream connection asks `sample(rand)`; a chosen request is copied once its
body is complete (the exchange keeps bodies up to the retry buffer anyway): same method, target
and headers, the authority with Envoy's `-shadow` suffix (`catalog` -> `catalog-shadow`). The
copy is fire and forget: its response goes to a `MirrorSink`, which reads and drops it and only
counts the result, and nothing of the copy reaches the original (no shared backpressure, no
shared failure). When the mirror cluster is slow, copies beyond `max_in_flight` are dropped.

Results in `gossamer_proxy_mirrored_requests_total{cluster,result}`: `sent` (the mirror answered,
whatever the status), `failed` (no answer: connect failure, reset, timeout, overflow), `skipped`
(not sent: a body over the retry buffer, too many copies in flight, the original ended before
its body was complete, or it never went ahead: refused by the primary cluster's request limit, or
its client left during a fault delay). The copy goes only once the original holds its request
slot; a fault-aborted request is not copied (and not counted).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gossamer import snapshot as snap
from gossamer.http.message import RequestHead, ResponseHead
from gossamer.telemetry.metrics import Counter, CounterChild

SHADOW_SUFFIX = b"-shadow"
MAX_IN_FLIGHT = 128
"""Copies of one rule in flight at once; more are skipped (a stuck mirror costs bounded memory)."""


class Mirror:
    """One rule's compiled RequestMirror; see the module docstring."""

    __slots__ = ("cluster", "failed", "in_flight", "max_in_flight", "percentage", "sent", "skipped")

    def __init__(
        self,
        cluster: str,
        percentage: float,
        sent: CounterChild,
        skipped: CounterChild,
        failed: CounterChild,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.cluster = cluster
        self.percentage = percentage
        self.sent = sent
        self.skipped = skipped
        self.failed = failed
        self.in_flight = 0
        self.max_in_flight = max_in_flight

    def sample(self, rand: Callable[[], float]) -> bool:
        """Whether this request is copied (`rand`: uniform in [0, 1), drawn below 100%)."""
        percentage = self.percentage
        if percentage >= 100.0:
            return True
        return percentage > 0.0 and rand() * 100.0 < percentage

    def admit(self) -> bool:
        """Take a place for one copy; False (counted as skipped) when too many are in flight."""
        if self.in_flight >= self.max_in_flight:
            self.skipped.value += 1.0
            return False
        self.in_flight += 1
        return True

    def shadow_head(self, head: RequestHead) -> RequestHead:
        """A copy of `head` for the mirror: the authority (and Host field) gets `-shadow`."""
        host = _shadow(head.host)
        headers = [(b"host", host) if k == b"host" else (k, v) for k, v in head.headers]
        return RequestHead(
            head.method, head.path, head.query, headers, head.http_version, host, head.scheme
        )

    def __repr__(self) -> str:
        return f"Mirror({self.cluster!r}, {self.percentage:g}%, in flight {self.in_flight})"


def _shadow(authority: bytes) -> bytes:
    # Envoy puts the suffix on the host, before any port: "catalog:8080" -> "catalog-shadow:8080".
    if authority.startswith(b"["):
        return authority + SHADOW_SUFFIX if authority.endswith(b"]") else authority
    host, sep, port = authority.rpartition(b":")
    if sep and port.isdigit():
        return host + SHADOW_SUFFIX + b":" + port
    return authority + SHADOW_SUFFIX


class MirrorSink:
    """The 'downstream' of a mirrored copy: drops the response and counts how it went.

    It satisfies the exchange's `Downstream` interface structurally (this package does not
    import the proxy). Every path ends in exactly one of `send_response_end`, `send_local` or
    `abort_response`, which frees the copy's place.
    """

    __slots__ = ("done", "exchange", "mirror", "request_id", "write_paused")

    def __init__(self, mirror: Mirror) -> None:
        self.mirror = mirror
        self.request_id = b""
        self.write_paused = False
        self.done = False
        self.exchange: Any = None  # the copy's Exchange (the proxy sets it)

    def _finish(self, result: CounterChild) -> None:
        if not self.done:
            self.done = True
            self.exchange = None
            self.mirror.in_flight -= 1
            result.value += 1.0

    def send_response_head(self, head: ResponseHead, body_length: int) -> None:
        pass

    def send_response_body(self, data: bytes) -> None:
        pass

    def send_response_end(self) -> None:
        self._finish(self.mirror.sent)

    def send_local(
        self,
        flag: str,
        message: str,
        status: int | None = None,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self._finish(self.mirror.failed)

    def abort_response(self) -> None:
        self._finish(self.mirror.failed)

    def cork(self) -> None:
        pass

    def uncork(self) -> None:
        pass

    def pause_reading(self, reason: int) -> None:
        pass  # no shared backpressure: the copy's body is already all in memory

    def resume_reading(self, reason: int) -> None:
        pass


def compile(mirror: snap.RequestMirror, counter: Counter, where: str = "RequestMirror") -> Mirror:
    """Compile a rule's RequestMirror.

    Args:
        mirror: the Snapshot's RequestMirror (its cluster is checked by the route compiler).
        counter: the `gossamer_proxy_mirrored_requests_total` family (labels cluster, result).
        where: names the filter in error messages.

    Raises:
        ValueError: a percentage outside 0-100.
    """
    pct = mirror.percentage
    if not (math.isfinite(pct) and 0.0 <= pct <= 100.0):
        raise ValueError(f"{where}: percentage {pct!r} is not between 0 and 100")
    name = mirror.cluster
    return Mirror(
        name,
        float(pct),
        counter.labels(name, "sent"),
        counter.labels(name, "skipped"),
        counter.labels(name, "failed"),
    )
