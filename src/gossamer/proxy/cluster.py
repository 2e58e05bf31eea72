"""Cluster runtime: endpoints, balancer, connection pools, pool limits and the retry budget.

One `ClusterRuntime` per Snapshot cluster (and one for the local app behind the inbound listener).
It survives Snapshot updates: `update(spec)` keeps the endpoint states and pools of endpoints that
persist, so counters, latency estimates and warm connections carry over.

Limits (Envoy's circuit breakers): `max_connections` counts every open or opening connection of the
cluster; a request that finds no idle connection and no free slot waits in `pending` (at most
`max_pending_requests`, else it is refused with the `overflow` flag). A released connection goes to
the first waiter: directly when the waiter chose the same endpoint, else it is closed and its slot
used to connect to the waiter's endpoint.

Circuit breaking (proxy/breaker.py): besides connections and pending requests, at most
`max_requests` requests and `max_retries` retries in flight; past a limit the exchange answers
`overflow` (counted in `gossamer_proxy_overflows_total{cluster,limit}`).

Taking endpoints out, each mechanism with its own `ejected` bit: fail-fast (proxy/failfast.py),
an endpoint that cannot be reached, for a backoff; outlier detection (proxy/outlier.py), fed by
`on_try_result`; active health checks (proxy/health.py). Panic rule (Envoy's panic threshold):
when fewer than `panic_threshold` percent of the healthy endpoints are available, a pick falls
back to every healthy endpoint. With no panic threshold (0, Istio's default) and nothing
available, a pick still probes an endpoint that is out only for fail-fast's backoff, so a blip
that marked them all does not blackhole the cluster; endpoints that outlier detection or health
checks took out stay out: the circuit is open, the request fails at once (its route's fallback
answers, if it has one) until an ejection ends. Locality (loadbalance/locality.py): with the
proxy's zone, endpoints in that zone are preferred while enough of them are available.

A cluster without outlier detection, health checks, zones or a panic threshold pays nothing for
them per request: each is an attribute tested for None or 0. With outlier detection (the mesh
default), a successful try costs `on_try_result` three tests and no call.

`check(spec)` refuses (ValueError naming the field) every setting the runtime could not build or
run with: balancer, endpoints, panic threshold, outlier detection, health checks. The data plane
calls it for every cluster before building anything, so a bad Snapshot is NACKed whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import deque
from typing import TYPE_CHECKING

from gossamer import snapshot as snap
from gossamer.proxy.breaker import resilience_metrics
from gossamer.proxy.failfast import FailFast, ejections_counter
from gossamer.proxy.health import HealthChecker, check_health_check
from gossamer.proxy.loadbalance import (
    EndpointState,
    HashKeyExtractor,
    LoadBalancer,
    make_balancer,
    reconcile,
)
from gossamer.proxy.loadbalance.base import EJECT_UNREACHABLE
from gossamer.proxy.loadbalance.locality import LocalityBalancer, splits
from gossamer.proxy.outlier import OutlierDetector, check_outlier_detection, check_percent
from gossamer.proxy.retry import RetryBudget
from gossamer.proxy.stats import ClusterStats, DataPlaneMetrics
from gossamer.proxy.upstream import EndpointPool, UpstreamConnection

if TYPE_CHECKING:
    from gossamer.http.message import RequestHead
    from gossamer.proxy.exchange import Exchange
    from gossamer.proxy.mtls import OutboundTls


class Overflow(Exception):
    """The cluster's pending-request limit is reached."""


class ClusterRuntime:
    """The live state of one cluster."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        spec: snap.Cluster,
        metrics: DataPlaneMetrics,
        direction: str,
        max_header_bytes: int = 65536,
        rand: random.Random | None = None,
        zone: str | None = None,
    ) -> None:
        """Raises ValueError naming the cluster when its spec cannot be applied.

        `zone` is the proxy's own zone (Snapshot `proxy.zone`): with it, the balancer prefers
        endpoints in that zone (when the spec's `load_balancer.locality` is on).
        """
        self.loop = loop
        self.zone = zone
        self.name = spec.name
        self.max_header_bytes = max_header_bytes
        self.rand = rand if rand is not None else random.Random()
        self.stats = ClusterStats(metrics, direction, spec.name)
        self.connections = 0  # open or opening, all endpoints
        self.pending: deque[Exchange] = deque()
        self.tasks: set[asyncio.Task[None]] = set()
        self.pools: dict[str, EndpointPool] = {}
        self.endpoints: list[EndpointState] = []
        self.spec = spec
        # The plain balancer over all endpoints, and the zone-aware one used instead while the
        # endpoints are split between this proxy's zone and others.
        self._plain: LoadBalancer = make_balancer(spec, self.rand, loop.time)
        self._locality: LocalityBalancer | None = None
        self.balancer: LoadBalancer = self._plain
        self.failfast = FailFast(loop.time, self.rand, ejections_counter(metrics).labels(spec.name))
        families = resilience_metrics(metrics)
        self.overflows = families.overflow_children(spec.name)
        self._ejections = families.ejection_children(spec.name)
        self._ejected_gauge = families.ejected_gauge(spec.name)
        self._health_results = families.health_children(spec.name)
        self.outlier: OutlierDetector | None = None
        self.health: HealthChecker | None = None
        self._tls: OutboundTls | None = None
        self.hash_key: HashKeyExtractor | None = None
        # Whether any route retries on this cluster; only then do requests feed the budget.
        self.count_for_budget = True
        self.active_requests = 0  # exchanges between start_request and end_request
        self.active_retries = 0
        self._configure(spec)
        self._set_endpoints(spec)

    def _configure(self, spec: snap.Cluster) -> None:
        pool = spec.connection_pool
        self.max_connections = max(1, pool.max_connections)
        self.max_pending = max(0, pool.max_pending_requests)
        self.max_requests_per_connection = max(0, pool.max_requests_per_connection)
        self.idle_timeout = pool.idle_timeout if pool.idle_timeout > 0 else 60.0
        self.connect_timeout = pool.connect_timeout if pool.connect_timeout > 0 else 2.0
        self.max_requests = max(1, pool.max_requests)
        self.max_retries = max(0, pool.max_retries)
        rb = spec.retry_budget
        self.budget = RetryBudget(rb.ratio, rb.min_per_second, rb.ttl, self.loop.time)
        lb = spec.load_balancer
        self.hash_key = HashKeyExtractor(lb.ring_hash) if lb.policy == "RING_HASH" else None
        # Only these balancers read active requests and latency; others skip the bookkeeping.
        self.track_load = lb.policy in ("LEAST_REQUEST", "PEAK_EWMA")
        self.panic_threshold = min(100.0, max(0.0, lb.panic_threshold))
        od = spec.outlier_detection
        if od is None:
            if self.outlier is not None:
                self.outlier.close()
                self.outlier = None
        elif self.outlier is None:
            self.outlier = OutlierDetector(self.loop, od, self._ejections, self._ejected_gauge)
        else:
            self.outlier.configure(od)
        hc = spec.health_check
        if hc is None:
            if self.health is not None:
                self.health.close()
                self.health = None
        elif self.health is None:
            self.health = HealthChecker(
                self.loop, spec.name, spec.service, hc, self._health_results, self.rand
            )
            self.health.tls = self._tls
        else:
            self.health.configure(hc)

    @property
    def tls(self) -> OutboundTls | None:
        """How to connect to the endpoints: None in plaintext, else the cluster's mTLS (set by
        DataPlane.apply from the spec's `tls`; health checks use it too)."""
        return self._tls

    @tls.setter
    def tls(self, value: OutboundTls | None) -> None:
        self._tls = value
        if self.health is not None:
            self.health.tls = value

    def _set_endpoints(self, spec: snap.Cluster) -> None:
        states = reconcile(self.endpoints, spec.endpoints, self.loop.time)
        pools: dict[str, EndpointPool] = {}
        for state in states:
            pool = self.pools.get(state.address)
            pools[state.address] = pool if pool is not None else EndpointPool(self, state)
        for address, pool in self.pools.items():
            if address not in pools:
                pool.removed = True
                pool.close_idle()
        self.endpoints = states
        self.pools = pools
        if self.zone and spec.load_balancer.locality and splits(states, self.zone):
            if self._locality is None or self._locality.zone != self.zone:
                self._locality = LocalityBalancer(
                    self.zone,
                    lambda: make_balancer(spec, self.rand, self.loop.time),
                    self.rand.random,
                    self.loop.time,
                )
            self.balancer = self._locality
        else:
            self._locality = None
            self.balancer = self._plain
        self.balancer.update(states)
        if self.outlier is not None:
            self.outlier.set_endpoints(states)
        if self.health is not None:
            self.health.set_endpoints(states)

    @staticmethod
    def check(spec: snap.Cluster, loop: asyncio.AbstractEventLoop) -> None:
        """Raise ValueError (naming the field; the data plane puts the cluster in front) for a
        spec `update` could not apply.

        Everything the build phase of `DataPlane.apply` would refuse or choke on is caught here,
        so a bad Snapshot is NACKed before anything is swapped or started.
        """
        make_balancer(spec, random.Random(0), loop.time)
        reconcile([], spec.endpoints, loop.time)
        check_percent("load_balancer.panic_threshold", spec.load_balancer.panic_threshold)
        od = spec.outlier_detection
        if od is not None:
            check_outlier_detection(od)
        hc = spec.health_check
        if hc is not None:
            check_health_check(hc, spec.service)

    def update(self, spec: snap.Cluster) -> None:
        """Take a new Snapshot's version of this cluster, keeping persisting endpoints' state."""
        old = self.spec
        self.spec = spec
        if spec.load_balancer != old.load_balancer:
            self._plain = make_balancer(spec, self.rand, self.loop.time)
            self._locality = None
        self._configure(spec)
        self._set_endpoints(spec)

    def close(self) -> None:
        """The cluster left the Snapshot: close idle connections now, busy ones when done; stop
        health checks and outlier detection's timer."""
        if self.health is not None:
            self.health.close()
            self.health = None
        if self.outlier is not None:
            self.outlier.close()
            self.outlier = None
        for pool in self.pools.values():
            pool.removed = True
            pool.close_idle()

    # --- per request -----------------------------------------------------------------------------
    # The exchange-facing interface of the circuit breakers and outlier detection: an exchange
    # calls start_request() once before its first try (False: answer `overflow`) and
    # end_request() exactly once when it is finished, whatever the path; start_retry() before it
    # schedules a retry (False: no retry, the failure stands as `overflow`) and end_retry() when
    # that try ends; on_try_result() once per try that reached an endpoint, with the response's
    # status or, for a try that got none, 503 (connect failure), 502 (reset) or 504 (timeout).

    def start_request(self) -> bool:
        """A request may start (True: call end_request() once when it is finished), or the
        cluster has `max_requests` in flight (False: answer `overflow`; counted)."""
        if self.active_requests >= self.max_requests:
            self.overflows.requests.value += 1
            return False
        self.active_requests += 1
        return True

    def end_request(self) -> None:
        if self.active_requests > 0:
            self.active_requests -= 1

    def start_retry(self) -> bool:
        """A retry may be scheduled (True: call end_retry() once when its try ends), or the
        cluster has `max_retries` in flight (False: no retry; counted)."""
        if self.active_retries >= self.max_retries:
            self.overflows.retries.value += 1
            return False
        self.active_retries += 1
        return True

    def end_retry(self) -> None:
        if self.active_retries > 0:
            self.active_retries -= 1

    def on_try_result(self, endpoint: EndpointState, status: int) -> None:
        """Outlier detection's input (proxy/outlier.py): a try's response status, or 503
        (connect failure), 502 (reset) or 504 (timeout) for one that got none."""
        outlier = self.outlier
        if outlier is None:
            return
        # Nearly every try: a success that ends no run of errors and feeds no success rate
        # changes nothing in outlier detection, so it costs three tests and no call.
        if status < 500 and not endpoint.od_5xx and not outlier.success_rate:
            return
        outlier.on_result(endpoint, status)

    def in_panic(self) -> bool:
        """Whether fewer than `panic_threshold` percent of the healthy endpoints are available
        (O(endpoints); asked only while something is ejected and a threshold is set)."""
        healthy = available = 0
        for e in self.endpoints:
            if e.healthy and e.weight > 0:
                healthy += 1
                if not e.ejected:
                    available += 1
        return healthy > 0 and available * 100.0 < self.panic_threshold * healthy

    def _something_ejected(self) -> bool:
        outlier = self.outlier
        health = self.health
        return bool(
            self.failfast.marked
            or (outlier is not None and outlier.ejected)
            or (health is not None and health.down)
        )

    def pick(self, head: RequestHead, tried: list[EndpointPool] | None) -> EndpointPool | None:
        """An endpoint for a try; a retry avoids endpoints already tried while others are up."""
        if self.failfast.marked:
            self.failfast.expire()
        if self.panic_threshold and self._something_ejected() and self.in_panic():
            state = self._panic_pick(tried)
            return self.pools[state.address] if state is not None else None
        key = self.hash_key(head) if self.hash_key is not None else None
        state = self.balancer.pick(key)
        if state is None:
            state = self._panic_pick(tried, probe_only=not self.panic_threshold)
            if state is None:
                return None
        if tried:
            tried_states = [p.endpoint for p in tried]
            if state in tried_states:
                for _ in range(3):
                    other = self.balancer.pick(None)
                    if other is not None and other not in tried_states:
                        return self.pools[other.address]
                untried = [e for e in self.endpoints if e.available and e not in tried_states]
                if untried:
                    state = untried[int(self.rand.random() * len(untried))]
        return self.pools[state.address]

    def _panic_pick(
        self, tried: list[EndpointPool] | None, probe_only: bool = False
    ) -> EndpointState | None:
        """Nothing is available: any healthy endpoint, preferring ones not tried yet; with
        `probe_only`, only endpoints out for nothing but fail-fast's backoff."""
        healthy = [
            e
            for e in self.endpoints
            if e.healthy and e.weight > 0 and not (probe_only and e.ejected & ~EJECT_UNREACHABLE)
        ]
        if tried and len(healthy) > 1:
            tried_states = [p.endpoint for p in tried]
            untried = [e for e in healthy if e not in tried_states]
            if untried:
                healthy = untried
        if not healthy:
            return None
        return healthy[int(self.rand.random() * len(healthy))]

    def acquire(self, exchange: Exchange, pool: EndpointPool) -> UpstreamConnection | None:
        """A connection to `pool`'s endpoint now, or None when one is coming (the exchange is
        called back with `on_connection` / `on_connect_failure`).

        Raises:
            Overflow: no connection slot and the pending queue is full.
        """
        conn = pool.take_idle()
        if conn is not None:
            return conn
        if self.connections < self.max_connections:
            pool.connect(exchange)
            return None
        self.overflows.connections.value += 1
        if len(self.pending) >= self.max_pending:
            self.overflows.pending.value += 1
            raise Overflow(self.name)
        exchange.waiting_pool = pool
        self.pending.append(exchange)
        # An idle connection to another endpoint holds a slot this request can use.
        self._reclaim_idle_slot()
        return None

    def _reclaim_idle_slot(self) -> None:
        for pool in self.pools.values():
            if pool.idle:
                pool.idle[0].close()  # on_connection_gone hands the slot to the first waiter
                return

    def cancel_pending(self, exchange: Exchange) -> None:
        with contextlib.suppress(ValueError):
            self.pending.remove(exchange)

    def hand_over(self, conn: UpstreamConnection) -> bool:
        """Give a released connection (or its slot) to the first waiter; False if none."""
        while self.pending:
            waiter = self.pending.popleft()
            pool = waiter.waiting_pool
            waiter.waiting_pool = None
            if pool is None:
                continue
            if pool is conn.pool:
                waiter.on_connection(conn, reused=True)
            else:
                # Back at the head of the queue first: closing hands the slot to the first
                # waiter (on_connection_gone), which must be this one.
                self.pending.appendleft(waiter)
                waiter.waiting_pool = pool
                conn.close()
            return True
        return False

    def on_connection_gone(self, pool: EndpointPool) -> None:
        """A connection closed or failed to open: its slot may serve a waiter."""
        self.connections -= 1
        while self.pending and self.connections < self.max_connections:
            waiter = self.pending.popleft()
            target = waiter.waiting_pool
            waiter.waiting_pool = None
            if target is None:
                continue
            if target.removed:
                target = self.pools.get(target.endpoint.address, target)
            conn = target.take_idle()
            if conn is not None:
                waiter.on_connection(conn, reused=True)
            else:
                waiter.awaiting = True
                target.connect(waiter)
