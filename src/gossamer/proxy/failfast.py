"""Fail-fast endpoints: an endpoint that cannot be reached leaves the balancer for a backoff.

Like Linkerd's endpoint readiness and Envoy's connect-failure handling: a refused, unreachable or
timed-out connection (or a peer sidecar answering that its app is gone) sets the endpoint's
`EJECT_UNREACHABLE` bit until `unreachable_until` on the loop clock. The backoff doubles with every
consecutive failure (250 ms up to 10 s, with jitter so callers do not probe in step) and resets on
the first good response. After the backoff the endpoint is picked again, so the next request
probes it; failures while it is already out do not grow the backoff further.

Expiry is lazy: the cluster calls `expire()` before a pick while anything is marked, so there is
no timer per endpoint and nothing to do at all while every endpoint is reachable.
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Callable

from gossamer.proxy.loadbalance.base import EJECT_UNREACHABLE, Clock, EndpointState
from gossamer.proxy.stats import DataPlaneMetrics
from gossamer.telemetry.metrics import Counter, CounterChild

BASE_BACKOFF = 0.25
MAX_BACKOFF = 10.0

# Values of `x-gossamer-flags` with which a peer sidecar says its endpoint cannot serve.
UNSERVING_FLAGS = (b"connect-failure", b"no-healthy-endpoint")

_counters: weakref.WeakKeyDictionary[DataPlaneMetrics, Counter] = weakref.WeakKeyDictionary()


def ejections_counter(metrics: DataPlaneMetrics) -> Counter:
    """The fail-fast ejection counter of a data plane's metrics (one per `DataPlaneMetrics`).

    It is not registered by this module (the registry is not reachable from the metrics):
    the data plane registers it with `registry.register(ejections_counter(metrics))`.
    """
    counter = _counters.get(metrics)
    if counter is None:
        counter = _counters[metrics] = Counter(
            "gossamer_proxy_endpoint_unreachable_ejections_total",
            "Endpoints taken out of the balancer because they could not be reached, by cluster.",
            ("cluster",),
        )
    return counter


def backoff_for(failures: int, rand: Callable[[], float], base: float, maximum: float) -> float:
    """Seconds out after `failures` consecutive failures: base * 2^(n-1) capped, half jittered."""
    delay = min(base * (2.0 ** min(failures - 1, 32)), maximum)
    return delay * (0.5 + 0.5 * rand())


class FailFast:
    """The fail-fast state of one cluster's endpoints."""

    __slots__ = ("base", "clock", "ejections", "marked", "maximum", "rand")

    def __init__(
        self,
        clock: Clock,
        rand: random.Random,
        ejections: CounterChild,
        base: float = BASE_BACKOFF,
        maximum: float = MAX_BACKOFF,
    ) -> None:
        self.clock = clock
        self.rand = rand
        self.ejections = ejections
        self.base = base
        self.maximum = maximum
        self.marked: list[EndpointState] = []  # endpoints with the EJECT_UNREACHABLE bit set

    def on_unreachable(self, endpoint: EndpointState) -> None:
        """Connecting to `endpoint` failed (or its sidecar says its app is gone)."""
        now = self.clock()
        if endpoint.ejected & EJECT_UNREACHABLE and endpoint.unreachable_until > now:
            return  # the same outage seen by another request in flight
        endpoint.connect_failures += 1
        delay = backoff_for(endpoint.connect_failures, self.rand.random, self.base, self.maximum)
        endpoint.unreachable_until = now + delay
        if not endpoint.ejected & EJECT_UNREACHABLE:
            endpoint.ejected |= EJECT_UNREACHABLE
            self.marked.append(endpoint)
        self.ejections.inc()

    def on_success(self, endpoint: EndpointState) -> None:
        """A good response from `endpoint`: its backoff starts over."""
        endpoint.connect_failures = 0
        if endpoint.ejected & EJECT_UNREACHABLE:
            endpoint.ejected &= ~EJECT_UNREACHABLE
            endpoint.unreachable_until = 0.0
            self.marked.remove(endpoint)

    def expire(self) -> None:
        """Put back the endpoints whose backoff is over (the next pick may probe them)."""
        now = self.clock()
        keep: list[EndpointState] = []
        for endpoint in self.marked:
            if endpoint.unreachable_until <= now:
                endpoint.ejected &= ~EJECT_UNREACHABLE
            else:
                keep.append(endpoint)
        self.marked = keep

    def next_expiry(self) -> float:
        """The loop time at which the next marked endpoint comes back (inf when none)."""
        return min((e.unreachable_until for e in self.marked), default=float("inf"))
