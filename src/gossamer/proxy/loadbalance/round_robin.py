"""ROUND_ROBIN: smooth weighted round robin (nginx's algorithm), precomputed into a schedule.

For weights {a: 5, b: 1, c: 1} nginx's smooth variant yields a a b a c a a, not a a a a a b c, so a
heavy endpoint's requests are spread over the cycle. `update()` computes one full cycle (the
weights divided by their gcd) so `pick()` is an index step; over any full cycle each endpoint is
picked exactly `weight / gcd` times. Unavailable endpoints are skipped. When a cycle would be longer
than `max_schedule`, picks run the live algorithm instead (O(endpoints) per pick).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from gossamer.proxy.loadbalance.base import EndpointState

MAX_SCHEDULE = 4096


def smooth_schedule(weights: Sequence[int]) -> list[int]:
    """One full cycle of nginx's smooth weighted round robin over `weights` (all > 0), as indices.

    Each step adds every weight to its current value, picks the largest (the first on ties) and
    subtracts the total from it. The cycle has sum(weights) entries.
    """
    current = [0] * len(weights)
    total = sum(weights)
    out = []
    for _ in range(total):
        best = 0
        for i, w in enumerate(weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= total
        out.append(best)
    return out


class RoundRobin:
    """Weighted smooth round robin; starts at a random point of the cycle so that many proxies do
    not all begin with the same endpoint."""

    def __init__(self, rand: random.Random, max_schedule: int = MAX_SCHEDULE) -> None:
        self._rand = rand
        self._max_schedule = max_schedule
        self._endpoints: list[EndpointState] = []
        self._schedule: list[EndpointState] = []
        self._cursor = 0
        self._current: list[int] = []  # live smooth weights, when there is no schedule
        self._weights: list[int] = []

    def update(self, endpoints: Sequence[EndpointState]) -> None:
        eps = [e for e in endpoints if e.weight > 0]
        self._endpoints = eps
        gcd = math.gcd(*(e.weight for e in eps)) if eps else 1
        weights = [e.weight // gcd for e in eps]
        self._weights = weights
        self._current = [0] * len(eps)
        if sum(weights) <= self._max_schedule:
            self._schedule = [eps[i] for i in smooth_schedule(weights)]
            self._cursor = self._rand.randrange(len(self._schedule)) if self._schedule else 0
        else:
            self._schedule = []

    def pick(self, hash_key: bytes | None = None) -> EndpointState | None:
        """The next available endpoint in the cycle; None when none is available."""
        schedule = self._schedule
        if not schedule:
            return self._pick_live() if self._endpoints else None
        n = len(schedule)
        i = self._cursor
        e = schedule[i]
        self._cursor = i + 1 if i + 1 < n else 0
        if e.healthy and not e.ejected:
            return e
        if not any(x.healthy and not x.ejected for x in self._endpoints):
            return None
        for _ in range(n):
            i = self._cursor
            e = schedule[i]
            self._cursor = i + 1 if i + 1 < n else 0
            if e.healthy and not e.ejected:
                return e
        return None  # unreachable: an available endpoint is in every cycle

    def _pick_live(self) -> EndpointState | None:
        eps, weights, current = self._endpoints, self._weights, self._current
        best = -1
        total = 0
        for i, e in enumerate(eps):
            if not e.healthy or e.ejected:
                continue
            current[i] += weights[i]
            total += weights[i]
            if best < 0 or current[i] > current[best]:
                best = i
        if best < 0:
            return None
        current[best] -= total
        return eps[best]
