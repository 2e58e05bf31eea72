"""PEAK_EWMA: Finagle's and Linkerd's latency-aware balancer, with power-of-two-choices.

Each endpoint's cost is its peak-EWMA latency estimate (see `EndpointState.on_complete`), decayed
towards 0 for the time since its last response, times (requests in flight + 1). Two distinct
available endpoints are drawn in proportion to weight; the cheaper wins (the first drawn on a tie).
Time comes from the injected clock.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from gossamer.proxy.loadbalance.base import Clock, EndpointState, Sampler


def cost(endpoint: EndpointState, now: float) -> float:
    """Linkerd's PeakEwma load: decayed latency estimate times (in flight + 1)."""
    return endpoint.decayed_latency(now) * (endpoint.active_requests + 1)


class PeakEwma:
    def __init__(self, rand: random.Random, clock: Clock) -> None:
        self._sampler = Sampler(rand.random)
        self._clock = clock

    def update(self, endpoints: Sequence[EndpointState]) -> None:
        self._sampler.update(endpoints)

    def pick(self, hash_key: bytes | None = None) -> EndpointState | None:
        """The cheaper of two random available endpoints; None when none is available."""
        a, b = self._sampler.two()
        if b is None or a is None:
            return a
        now = self._clock()
        return b if cost(b, now) < cost(a, now) else a
