"""The load balancer protocol and the endpoint state shared by balancers, pools and outlier logic.

An `EndpointState` lives as long as its endpoint stays in the cluster: `reconcile()` carries it over
from one Snapshot to the next (by address) so active request counts and latency estimates survive
membership changes. Balancers read `healthy` and `ejected` on every pick, so the data plane may flip
them at any time (health from the control plane, ejection by outlier detection) without calling
`update()`; they never return an endpoint that is unhealthy, ejected or of weight 0.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Protocol

from gossamer import snapshot as snap

Clock = Callable[[], float]
"""Monotonic seconds, e.g. `loop.time`."""

DEFAULT_RTT = 0.030
"""The latency estimate of an endpoint before its first response (Linkerd's default)."""

EWMA_DECAY = 10.0
"""Seconds over which an old latency observation loses 1/e of its weight (Finagle, Linkerd)."""

_TRIES = 4  # random draws before falling back to a scan for an available endpoint

EJECT_OUTLIER = 1
"""`ejected` bit: outlier detection took the endpoint out (True sets this bit)."""
EJECT_UNREACHABLE = 2
"""`ejected` bit: connecting failed; out until `unreachable_until` (proxy/failfast.py)."""
EJECT_HEALTH_CHECK = 4
"""`ejected` bit: active health checks failed `unhealthy_threshold` times (proxy/health.py)."""


class EndpointState:
    """One endpoint of a cluster with its live counters.

    Attributes:
        address: "host:port" as in the Snapshot; host and port split from it.
        weight: relative share (balancers skip weight <= 0).
        healthy: from the Snapshot (control plane health).
        ejected: a bit set of ejection reasons (EJECT_OUTLIER, EJECT_UNREACHABLE,
            EJECT_HEALTH_CHECK), 0 when none; balancers only test its truth, so each reason sets
            and clears its own bit.
        unreachable_until: loop time until which a fail-fast ejection lasts.
        connect_failures: consecutive failed attempts to reach it (drives the backoff).
        zone, labels, proxy_id: locality and identity from the Snapshot.
        active_requests: requests in flight (on_start / on_complete).
        ewma_latency: peak-EWMA latency estimate in seconds, as of `ewma_stamp`.
        od_*: outlier detection's counters (proxy/outlier.py): consecutive 5xx and gateway
            errors, successes and tries in the current interval, times ejected (decays), and
            the loop time until which an outlier ejection lasts.
    """

    __slots__ = (
        "_clock",
        "_decay",
        "active_requests",
        "address",
        "connect_failures",
        "ejected",
        "ewma_latency",
        "ewma_stamp",
        "healthy",
        "host",
        "labels",
        "od_5xx",
        "od_ejections",
        "od_gateway",
        "od_success",
        "od_total",
        "od_until",
        "port",
        "proxy_id",
        "unreachable_until",
        "weight",
        "zone",
    )

    def __init__(
        self,
        address: str,
        *,
        clock: Clock,
        weight: int = 1,
        healthy: bool = True,
        zone: str | None = None,
        labels: dict[str, str] | None = None,
        proxy_id: str | None = None,
        initial_latency: float = DEFAULT_RTT,
        decay: float = EWMA_DECAY,
    ) -> None:
        """Raises ValueError when `address` is not "host:port" with a port in 1-65535."""
        self.address = address
        self.host, self.port = split_address(address)
        self.weight = weight
        self.healthy = healthy
        self.ejected: int = 0
        self.unreachable_until = 0.0
        self.connect_failures = 0
        self.zone = zone
        self.labels = labels if labels is not None else {}
        self.proxy_id = proxy_id
        self.active_requests = 0
        self._clock = clock
        self._decay = decay
        self.ewma_latency = initial_latency
        self.ewma_stamp = clock()
        self.od_5xx = 0
        self.od_gateway = 0
        self.od_success = 0
        self.od_total = 0
        self.od_ejections = 0
        self.od_until = 0.0

    @classmethod
    def from_endpoint(cls, endpoint: snap.Endpoint, clock: Clock) -> EndpointState:
        return cls(
            endpoint.address,
            clock=clock,
            weight=endpoint.weight,
            healthy=endpoint.healthy,
            zone=endpoint.zone,
            labels=dict(endpoint.labels),
            proxy_id=endpoint.proxy_id,
        )

    @property
    def available(self) -> bool:
        """Whether a balancer may pick it: healthy, not ejected, weight above 0."""
        return self.healthy and not self.ejected and self.weight > 0

    def on_start(self) -> None:
        """A request to this endpoint starts."""
        self.active_requests += 1

    def on_complete(self, latency: float, ok: bool) -> None:
        """A request finished after `latency` seconds (`ok` False: it failed).

        Peak EWMA: a latency above the estimate replaces it at once; a lower one is blended in
        with a weight that grows with the time since the last observation.
        """
        if self.active_requests > 0:
            self.active_requests -= 1
        now = self._clock()
        if latency > self.ewma_latency:
            self.ewma_latency = latency
        else:
            elapsed = now - self.ewma_stamp
            w = math.exp(-elapsed / self._decay) if elapsed > 0 else 1.0
            self.ewma_latency = self.ewma_latency * w + latency * (1.0 - w)
        self.ewma_stamp = now

    def decayed_latency(self, now: float) -> float:
        """The estimate decayed towards 0 for the time without observations, so an endpoint that
        was slow once gets tried again (Linkerd's PeakEwma)."""
        elapsed = now - self.ewma_stamp
        if elapsed <= 0:
            return self.ewma_latency
        return self.ewma_latency * math.exp(-elapsed / self._decay)

    def __repr__(self) -> str:
        flags = "" if self.healthy else " unhealthy"
        flags += f" ejected={self.ejected}" if self.ejected else ""
        return (
            f"EndpointState({self.address!r}, weight={self.weight}, "
            f"active={self.active_requests}{flags})"
        )


class LoadBalancer(Protocol):
    def update(self, endpoints: Sequence[EndpointState]) -> None:
        """Membership or weights changed: take the new list (health is read on every pick)."""
        ...

    def pick(self, hash_key: bytes | None = None) -> EndpointState | None:
        """An available endpoint, or None when there is none (answer no-healthy-endpoint)."""
        ...


def split_address(address: str) -> tuple[str, int]:
    """Split "host:port" ("[::1]:port" for IPv6) into host and port.

    Raises:
        ValueError: no port, or a port that is not a number in 1-65535.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"endpoint address {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def reconcile(
    current: Sequence[EndpointState], endpoints: Sequence[snap.Endpoint], clock: Clock
) -> list[EndpointState]:
    """The states for a cluster's new endpoint list, reusing the current ones by address.

    A kept state gets the new weight, health, zone, labels and proxy id and keeps its counters and
    ejection; new addresses get fresh states; duplicate addresses count once (the first).

    Raises:
        ValueError: an address that is not host:port.
    """
    by_address = {s.address: s for s in current}
    out: list[EndpointState] = []
    seen: set[str] = set()
    for ep in endpoints:
        if ep.address in seen:
            continue
        seen.add(ep.address)
        state = by_address.get(ep.address)
        if state is None:
            state = EndpointState.from_endpoint(ep, clock)
        else:
            state.weight = ep.weight
            state.healthy = ep.healthy
            state.zone = ep.zone
            state.labels = dict(ep.labels)
            state.proxy_id = ep.proxy_id
        out.append(state)
    return out


class Sampler:
    """Draws available endpoints at random in proportion to weight, two distinct ones for P2C.

    Draws are rejection-sampled from the whole list (cheap while most endpoints are available)
    and fall back to scanning for available ones after a few misses.
    """

    __slots__ = ("_cumulative", "_rand", "_total", "endpoints")

    def __init__(self, rand: Callable[[], float]) -> None:
        self._rand = rand
        self.endpoints: list[EndpointState] = []
        self._cumulative: list[float] | None = None
        self._total = 0

    def update(self, endpoints: Sequence[EndpointState]) -> None:
        eps = [e for e in endpoints if e.weight > 0]
        self.endpoints = eps
        weights = {e.weight for e in eps}
        if len(weights) > 1:
            cumulative: list[float] = []
            total = 0
            for e in eps:
                total += e.weight
                cumulative.append(total)
            # The last bound is infinite so that rand() * total rounding up stays in range.
            cumulative[-1] = math.inf
            self._cumulative, self._total = cumulative, total
        else:
            self._cumulative, self._total = None, len(eps)

    def _draw(self) -> EndpointState:
        cumulative = self._cumulative
        if cumulative is None:
            return self.endpoints[int(self._rand() * self._total)]
        return self.endpoints[bisect_right(cumulative, self._rand() * self._total)]

    def _draw_from(self, candidates: list[EndpointState]) -> EndpointState:
        if self._cumulative is None:
            return candidates[int(self._rand() * len(candidates))]
        total = sum(e.weight for e in candidates)
        x = self._rand() * total
        for e in candidates:
            x -= e.weight
            if x < 0:
                return e
        return candidates[-1]

    def one(self) -> EndpointState | None:
        """One available endpoint, weighted; None when there is none."""
        if not self.endpoints:
            return None
        e = self._draw()
        if e.healthy and not e.ejected:
            return e
        for _ in range(_TRIES):
            e = self._draw()
            if e.healthy and not e.ejected:
                return e
        candidates = [e for e in self.endpoints if e.healthy and not e.ejected]
        return self._draw_from(candidates) if candidates else None

    def two(self) -> tuple[EndpointState | None, EndpointState | None]:
        """Two distinct available endpoints, weighted; (a, None) when only one, (None, None)
        when none. `a` alone is distributed in proportion to weight among the available ones, so
        a caller that keeps `a` on ties follows the weights when there is no load."""
        eps = self.endpoints
        n = len(eps)
        if n < 2:
            return self.one(), None
        rand = self._rand
        cumulative = self._cumulative
        total = self._total
        if cumulative is None:
            a = eps[int(rand() * n)]
        else:
            a = eps[bisect_right(cumulative, rand() * total)]
        if not a.healthy or a.ejected:
            a_or_none = self.one()
            if a_or_none is None:
                return None, None
            a = a_or_none
        for _ in range(_TRIES):
            if cumulative is None:
                b = eps[int(rand() * n)]
            else:
                b = eps[bisect_right(cumulative, rand() * total)]
            if b is not a and b.healthy and not b.ejected:
                return a, b
        candidates = [e for e in eps if e is not a and e.healthy and not e.ejected]
        return a, (self._draw_from(candidates) if candidates else None)
