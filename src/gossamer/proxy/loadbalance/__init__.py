"""Load balancers: round robin, least request (P2C), peak EWMA, ring hash."""

from gossamer.proxy.loadbalance.base import EndpointState, LoadBalancer, reconcile
from gossamer.proxy.loadbalance.factory import make_balancer
from gossamer.proxy.loadbalance.ring_hash import HashKeyExtractor

__all__ = ["EndpointState", "HashKeyExtractor", "LoadBalancer", "make_balancer", "reconcile"]
