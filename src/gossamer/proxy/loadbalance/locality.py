"""Locality-aware balancing: prefer the caller's zone, spill to the others as it degrades.

Envoy's priority levels with the default overprovisioning factor of 1.4: the endpoints in the
caller's zone are priority 0, all others (other zones, or no zone) priority 1. The local zone
takes min(1, 1.4 * available_local / total_local) of the picks, the rest go to the other zones;
so a zone can lose about 29% of its endpoints before any traffic leaves it, and then the spill
grows in proportion. An empty pick on one side falls over to the other.

Each side has its own balancer of the cluster's policy (round robin, least request, peak EWMA,
ring hash), so every policy works unchanged within a zone. The cluster uses this wrapper only
when the caller has a zone and its endpoints are split between that zone and others; otherwise
it keeps the plain balancer and pays nothing.

The local share is not recounted on every pick: it is cached for `SHARE_TTL` seconds of the loop
clock (and recounted at once after `update`). Ejections flip endpoint bits from several places
(fail-fast, outlier detection, health checks, tests) without telling the balancer, so a short
time-to-live is the one rule that sees them all; a share up to 100 ms old only moves how much
traffic spills, never where: both sides' balancers still skip every ejected endpoint, and an
empty side still falls over to the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from gossamer.proxy.loadbalance.base import Clock, EndpointState, LoadBalancer

OVERPROVISIONING = 1.4
SHARE_TTL = 0.1  # seconds a computed local share is used before it is counted again


def splits(endpoints: Sequence[EndpointState], zone: str | None) -> bool:
    """Whether locality changes anything: some endpoints in `zone` and some elsewhere."""
    if not zone:
        return False
    local = remote = False
    for e in endpoints:
        if e.weight <= 0:
            continue
        if e.zone == zone:
            local = True
        else:
            remote = True
        if local and remote:
            return True
    return False


class LocalityBalancer:
    """Two balancers of one policy: the caller's zone and the rest."""

    __slots__ = (
        "_clock",
        "_local",
        "_local_eps",
        "_rand",
        "_remote",
        "_share",
        "_share_until",
        "zone",
    )

    def __init__(
        self,
        zone: str,
        make: Callable[[], LoadBalancer],
        rand: Callable[[], float],
        clock: Clock,
    ) -> None:
        self.zone = zone
        self._local = make()
        self._remote = make()
        self._rand = rand
        self._clock = clock
        self._local_eps: list[EndpointState] = []
        self._share = 0.0
        self._share_until = -1.0  # loop time until which `_share` is used; past: count again

    def update(self, endpoints: Sequence[EndpointState]) -> None:
        zone = self.zone
        local = [e for e in endpoints if e.weight > 0 and e.zone == zone]
        remote = [e for e in endpoints if e.weight > 0 and e.zone != zone]
        self._local_eps = local
        self._local.update(local)
        self._remote.update(remote)
        self._share_until = -1.0

    def local_share(self) -> float:
        """The share of picks the caller's zone takes now (1.0 while it is healthy enough)."""
        local = self._local_eps
        total = len(local)
        if not total:
            return 0.0
        available = 0
        for e in local:
            if e.healthy and not e.ejected:
                available += 1
        return min(1.0, OVERPROVISIONING * available / total)

    def pick(self, hash_key: bytes | None = None) -> EndpointState | None:
        now = self._clock()
        if now < self._share_until:
            share = self._share
        else:
            share = self._share = self.local_share()
            self._share_until = now + SHARE_TTL
        if share >= 1.0 or (share > 0.0 and self._rand() < share):
            e = self._local.pick(hash_key)
            return e if e is not None else self._remote.pick(hash_key)
        e = self._remote.pick(hash_key)
        return e if e is not None else self._local.pick(hash_key)
