"""LEAST_REQUEST: the power of two random choices over available endpoints.

Two distinct available endpoints are drawn at random in proportion to their weights and the one
with fewer requests in flight wins (the first drawn on a tie, so with no load the picks follow the
weights). Unhealthy and ejected endpoints are never drawn.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from gossamer.proxy.loadbalance.base import EndpointState, Sampler


class LeastRequest:
    def __init__(self, rand: random.Random) -> None:
        self._sampler = Sampler(rand.random)

    def update(self, endpoints: Sequence[EndpointState]) -> None:
        self._sampler.update(endpoints)

    def pick(self, hash_key: bytes | None = None) -> EndpointState | None:
        """The less loaded of two random available endpoints; None when none is available."""
        a, b = self._sampler.two()
        if b is None or a is None:
            return a
        return b if b.active_requests < a.active_requests else a
