"""make_balancer: the load balancer a cluster's Snapshot asks for."""

from __future__ import annotations

import random

from gossamer import snapshot as snap
from gossamer.proxy.loadbalance.base import Clock, LoadBalancer
from gossamer.proxy.loadbalance.least_request import LeastRequest
from gossamer.proxy.loadbalance.peak_ewma import PeakEwma
from gossamer.proxy.loadbalance.ring_hash import RingHash
from gossamer.proxy.loadbalance.round_robin import RoundRobin


def make_balancer(cluster: snap.Cluster, rand: random.Random, clock: Clock) -> LoadBalancer:
    """A new, empty balancer for `cluster`'s policy; call `update()` with its endpoint states.

    Args:
        cluster: the Snapshot's cluster (policy and ring-hash settings).
        rand: the random source (seed it in tests).
        clock: monotonic seconds, e.g. `loop.time` (used by PEAK_EWMA's decay).

    Raises:
        ValueError: an unknown policy or a ring-hash minimum size below 1, naming the cluster.
    """
    lb = cluster.load_balancer
    policy = lb.policy
    if policy == "ROUND_ROBIN":
        return RoundRobin(rand)
    if policy == "LEAST_REQUEST":
        return LeastRequest(rand)
    if policy == "PEAK_EWMA":
        return PeakEwma(rand, clock)
    if policy == "RING_HASH":
        size = lb.ring_hash.minimum_ring_size if lb.ring_hash is not None else 1024
        try:
            return RingHash(rand, minimum_ring_size=size)
        except ValueError as e:
            raise ValueError(f"cluster {cluster.name!r}: {e}") from None
    raise ValueError(f"cluster {cluster.name!r}: unknown load balancer policy {policy!r}")
