"""One request's trip through a cluster: tries, retries, per-try and request timeouts, body replay.

An `Exchange` sits between the downstream connection that received the request and the upstream
connection carrying the current try. It is callback-driven (no task per request): the downstream
side calls `on_request_body` / `on_request_end`, the upstream side `on_response_*` and
`on_upstream_failure`, the pool `on_connection` / `on_connect_failure`, and timers fire on the
loop's clock.

Retries: a try that fails before the response head went downstream (connect failure, reset,
timeout, or a status the rule's retryOn names) is retried on another endpoint when the rule allows
another attempt, the body was small enough to keep (`retry_buffer_bytes`) and the cluster's retry
budget has a token; after `backoff()` with full jitter. A connection taken from the pool that turns
out to be dead (closed by the peer before any response byte) is retried once at once, off budget:
the request never reached the upstream. Timeouts cover a try until its response head arrives, so a
long streamed body is not cut.

Held responses: while a reset could still be retried (attempts left, body buffered, retryOn names
`reset`), a response with a Content-Length of at most `HOLD_LIMIT` is held until its body is
complete, so an upstream that dies between head and body costs a retry, not a truncated response.
A chunked one is held only while it arrives in one read (it may be a stream whose next chunk comes
much later) and up to `HOLD_LIMIT`. Head and body in one read (the common case) pass straight
through: the head and the body chunk are only kept in slots until the end of the read.

A 503 from a peer sidecar flagged `connect-failure` / `no-healthy-endpoint` means that endpoint
cannot serve: it is taken out of the balancer like one that refused the connection (failfast.py).

Circuit breakers (the cluster's interface, proxy/cluster.py): `start_request()` before the first
try (False: 503 `overflow`, no try), `end_request()` exactly once for each accepted request,
whatever way the exchange ends (`_finish`); `start_retry()` before scheduling a retry (False: no
retry, the failure stands) and `end_retry()` when that retry's try ends; `on_try_result(endpoint,
status)` once per try that reached or tried to reach an endpoint (`_report`): the response status,
or 503 connect failure, 502 reset, 504 timeout.

The request slot is taken and given back by updating `cluster.active_requests` inline (the same
test and count as those methods; a refusal goes through `start_request()`, which counts it).

Route resilience: a rule's fallback (proxy/fallback.py) replaces a local failure or a final 5xx;
a Fault delay starts the exchange late (`start_after`); a mirrored request's copy is sent once the
body is complete and the request went ahead (holds its slot, was not aborted), with a
`MirrorSink` (filters/mirror.py) as its downstream. A rule with a fallback cache gives its
GET/HEAD exchanges a `Capture` (proxy/response_cache.py); others carry a single None.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Protocol

from gossamer import snapshot as snap
from gossamer.filters.mirror import MirrorSink
from gossamer.http.http1 import (
    BODY_CHUNKED,
    BODY_HEAD,
    CRLF,
    LAST_CHUNK,
    chunk_prefix,
    serialize_request_head,
)
from gossamer.http.message import Headers, RequestHead, ResponseHead, header_get
from gossamer.proxy import flags, measure
from gossamer.proxy.cluster import ClusterRuntime, Overflow
from gossamer.proxy.deadlines import Deadlines
from gossamer.proxy.failfast import UNSERVING_FLAGS
from gossamer.proxy.fallback import CAUSES, UPSTREAM_5XX, FallbackPlan
from gossamer.proxy.response_cache import CachedResponse, Capture
from gossamer.proxy.retry import CONNECT_FAILURE, RESET, TIMEOUT, RetryOn, backoff
from gossamer.proxy.upstream import HEADERS_TOO_LARGE

if TYPE_CHECKING:
    from gossamer.proxy.loadbalance import EndpointState
    from gossamer.proxy.router import Backend, MirrorBinding, RouteMatch
    from gossamer.proxy.upstream import EndpointPool, UpstreamConnection

_FAILURE_FLAGS = {
    CONNECT_FAILURE: flags.CONNECT_FAILURE,
    RESET: flags.UPSTREAM_RESET,
    TIMEOUT: flags.TIMEOUT,
    HEADERS_TOO_LARGE: flags.UPSTREAM_HEADERS_TOO_LARGE,
}
_NEVER = float("inf")
_BUDGET_HEADER = (b"x-gossamer-flags", flags.RETRY_BUDGET_EXHAUSTED.encode())
_FLAGS_HEADER = b"x-gossamer-flags"
HOLD_LIMIT = 65536
"""The largest response body held back while a reset could still be retried."""
# Statuses each try outcome reports to the cluster (outlier detection) when no response came.
_TRY_STATUS = {CONNECT_FAILURE: 503, RESET: 502, TIMEOUT: 504, HEADERS_TOO_LARGE: 502}
_NO_BODY_STATUSES = frozenset((204, 304))
# Fields a kept response does not carry over: framing and hop-by-hop (the serializer adds them
# back) and the upstream's own flags (a fallback response carries its own).
_NOT_KEPT = frozenset((b"connection", b"transfer-encoding", b"keep-alive", _FLAGS_HEADER))


class RulePlan:
    """A route rule's retry and timeout settings, compiled once per Snapshot."""

    __slots__ = (
        "attempts",
        "backoff_base",
        "backoff_max",
        "per_try_timeout",
        "request_timeout",
        "retry_on",
        "retry_reset",
    )

    def __init__(self, rule: snap.RouteRule) -> None:
        """Raises ValueError for a retry policy that cannot be applied."""
        policy = rule.retry
        self.retry_on = RetryOn(policy) if policy is not None and policy.retry_on else None
        self.retry_reset = self.retry_on is not None and self.retry_on.should_retry(RESET)
        self.attempts = max(0, policy.attempts) if policy is not None else 0
        self.backoff_base = policy.backoff.base_interval if policy is not None else 0.025
        self.backoff_max = policy.backoff.max_interval if policy is not None else 0.25
        per_try = policy.per_try_timeout if policy is not None else None
        if per_try is None:
            per_try = rule.timeouts.backend_request
        self.per_try_timeout = per_try if per_try and per_try > 0 else None
        request = rule.timeouts.request
        self.request_timeout = request if request and request > 0 else None


class Downstream(Protocol):
    """What an exchange needs from the connection that received its request."""

    request_id: bytes
    write_paused: bool
    exchange: Exchange | None  # the exchange now serving it (a backend fallback takes over)

    def send_response_head(self, head: ResponseHead, body_length: int) -> None: ...
    def send_response_body(self, data: bytes) -> None: ...
    def send_response_end(self) -> None: ...
    def send_local(
        self,
        flag: str,
        message: str,
        status: int | None = None,
        extra_headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None: ...
    def abort_response(self) -> None: ...
    def cork(self) -> None: ...
    def uncork(self) -> None: ...
    def pause_reading(self, reason: int) -> None: ...
    def resume_reading(self, reason: int) -> None: ...


READ_UPSTREAM_FULL = 2  # the upstream's write buffer is over its high-water mark
READ_BUFFER_FULL = 4  # no upstream yet and the body buffer is full


class Exchange:
    """One proxied request; see the module docstring."""

    __slots__ = (
        "attempt_started",
        "awaiting",
        "backend",
        "body",
        "body_length",
        "body_size",
        "budget_exhausted",
        "buffer_limit",
        "capture",
        "cluster",
        "deadline",
        "deadlines",
        "down",
        "fallback_cause",
        "finished",
        "flag",
        "free_retry_used",
        "head",
        "head_bytes",
        "held_body",
        "held_head",
        "held_length",
        "held_size",
        "last_conn",
        "loop",
        "mirror",
        "plan",
        "pool",
        "request_deadline",
        "request_done",
        "request_open",
        "response_started",
        "retriable",
        "retries",
        "retry_slot",
        "reused",
        "route",
        "started",
        "status",
        "timer",
        "tried",
        "try_deadline",
        "try_endpoint",
        "upstream",
        "upstream_read_paused",
        "waiting_pool",
    )

    def __init__(
        self,
        down: Downstream,
        loop: asyncio.AbstractEventLoop,
        head: RequestHead,
        body_length: int,
        cluster: ClusterRuntime,
        plan: RulePlan | None,
        route: RouteMatch | None,
        backend: Backend | None,
        buffer_limit: int,
        deadlines: Deadlines,
    ) -> None:
        self.down = down
        self.loop = loop
        self.head = head
        self.body_length = body_length
        self.cluster = cluster
        self.plan = plan
        self.route = route
        self.backend = backend
        self.buffer_limit = buffer_limit
        self.started = measure.now()  # durations: microseconds, not the loop's milliseconds
        self.attempt_started = 0.0
        self.request_done = body_length == 0
        self.body: list[bytes] = []
        self.body_size = 0
        # A body larger than the buffer cannot be replayed; Content-Length tells us up front.
        self.retriable = body_length <= buffer_limit
        self.upstream: UpstreamConnection | None = None
        self.last_conn: UpstreamConnection | None = None  # of the last try (the access log's)
        self.pool: EndpointPool | None = None
        self.waiting_pool: EndpointPool | None = None  # set while queued in cluster.pending
        self.awaiting = False  # a connection is being opened for the current try
        self.tried: list[EndpointPool] = []
        self.retries = 0
        self.reused = False
        self.free_retry_used = False
        self.budget_exhausted = False
        self.response_started = False
        self.finished = False
        self.status = 0
        self.head_bytes = b""
        # A response head held back until its body is complete (see the module docstring).
        self.held_head: ResponseHead | None = None
        self.held_length = 0
        self.held_body: bytes | list[bytes] | None = None
        self.held_size = 0
        self.timer: asyncio.TimerHandle | None = None  # the backoff before a retry
        # Timeouts are deadlines on the shared `Deadlines` timer, not a timer per request.
        self.deadlines = deadlines
        self.deadline = _NEVER
        self.request_deadline = _NEVER
        self.try_deadline = _NEVER
        self.upstream_read_paused = False
        # Circuit-breaker bookkeeping: a request slot taken (start_request), a retry slot taken.
        self.request_open = False
        self.retry_slot = False
        self.try_endpoint: EndpointState | None = None  # the current try's, until reported
        # The access log's flag for a response that went out normally (a fallback's).
        self.flag: str | None = None
        # Set on the exchange that is itself a backend fallback: the cause it stands in for.
        self.fallback_cause: str | None = None
        # A mirror copy still to send (set by the connection when the rule's sample chose it).
        self.mirror: MirrorBinding | None = None
        # For a rule with a fallback cache, the response being kept (response_cache.Capture).
        self.capture: Capture | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self, now: float | None = None) -> None:
        """Take a request slot in the cluster and send the first try (`now`: when a fault
        delay let the request go; its request timeout runs from then)."""
        route = self.route
        if (
            route is not None
            and (route.fault is not None or route.mirror is not None)
            and now is None
            and self.fallback_cause is None
            and self._route_filters(route)
        ):
            return
        cluster = self.cluster
        # cluster.start_request(), inlined while the limit has room (the same test and count);
        # a refusal goes through the method, which counts the overflow.
        admitted = cluster.active_requests < cluster.max_requests
        if admitted:
            cluster.active_requests += 1
        else:
            admitted = cluster.start_request()
        if not admitted:
            if self.mirror is not None:
                self._skip_mirror()  # a refused request is not copied
            self._local(flags.OVERFLOW, f"cluster {cluster.name} has too many requests in flight")
            return
        self.request_open = True
        if cluster.count_for_budget:
            cluster.budget.record_request()
        plan = self.plan
        if plan is not None and plan.request_timeout is not None:
            if now is None:
                now = self.loop.time()
            self.request_deadline = now + plan.request_timeout
        if route is not None and route.fallback is not None:
            self._prepare_fallback(route.fallback)
        self.head_bytes = serialize_request_head(self.head, self.body_length)
        self._try()
        if self.mirror is not None and self.request_done:
            self._send_mirror()  # the request went ahead (its slot taken) and is whole

    def _route_filters(self, route: RouteMatch) -> bool:
        """The rule's RequestMirror sample and Fault; True when the fault took the request
        over (delayed, or aborted at once)."""
        rand = self.cluster.rand.random
        mirror = route.mirror
        if mirror is not None and mirror.mirror.sample(rand):
            self.mirror = mirror
        fault = route.fault
        if fault is None:
            return False
        decision = fault.decide(self.head, rand)
        if decision is None:
            return False
        delay, abort_status = decision
        if delay > 0.0:
            self.start_after(delay, abort_status)
        else:
            self.mirror = None
            self._local(flags.FAULT_ABORT, "aborted by the route's fault injection", abort_status)
        return True

    def start_after(self, delay: float, abort_status: int) -> None:
        """A Fault filter's delay: start (or abort with `abort_status`, if not 0) after `delay`
        seconds on a loop timer. The body is buffered meanwhile like while connecting; a client
        that leaves cancels the timer (on_downstream_lost)."""
        self.timer = self.loop.call_later(delay, self._delay_over, abort_status)

    def _delay_over(self, abort_status: int) -> None:
        self.timer = None
        if self.finished:
            return
        if abort_status:
            self.mirror = None  # an aborted request is not mirrored (the fault comes first)
            self._local(flags.FAULT_ABORT, "aborted by the route's fault injection", abort_status)
            return
        self.start(self.loop.time())

    def _finish(self) -> None:
        """The exchange is over: give back its breaker slots (exactly once)."""
        if self.request_open:
            self.request_open = False
            cluster = self.cluster
            if cluster.active_requests > 0:  # cluster.end_request(), inlined
                cluster.active_requests -= 1
        if self.retry_slot:
            self.retry_slot = False
            self.cluster.end_retry()
        if self.mirror is not None and not self.request_done:
            self._skip_mirror()  # the body will not be read to its end: nothing whole to copy

    def _skip_mirror(self) -> None:
        mirror = self.mirror
        self.mirror = None
        if mirror is not None:
            mirror.mirror.skipped.value += 1.0

    def _report(self, status: int) -> None:
        """The current try's result, for the cluster's outlier detection (once per try)."""
        endpoint = self.try_endpoint
        if endpoint is not None:
            self.try_endpoint = None
            self.cluster.on_try_result(endpoint, status)

    def _try(self) -> None:
        self.timer = None
        if self.finished:
            return
        cluster = self.cluster
        pool = cluster.pick(self.head, self.tried)
        if pool is None:
            self._local(
                flags.NO_HEALTHY_ENDPOINT, f"cluster {cluster.name} has no healthy endpoint"
            )
            return
        self.tried.append(pool)
        self.pool = pool
        self.try_endpoint = pool.endpoint
        plan = self.plan
        if plan is not None and plan.per_try_timeout is not None:
            self.try_deadline = self.loop.time() + plan.per_try_timeout
        if self.request_deadline != _NEVER or self.try_deadline != _NEVER:
            self._watch()
        try:
            conn = cluster.acquire(self, pool)
        except Overflow:
            self._local(flags.OVERFLOW, f"cluster {cluster.name} has too many pending requests")
            return
        if conn is not None:
            self._send(conn, True)
        elif self.waiting_pool is None and self.upstream is None:
            self.awaiting = True

    def on_connection(self, conn: UpstreamConnection, reused: bool) -> None:
        """The pool has a connection for this exchange (opened, or handed over by another)."""
        wanted = not self.finished and self.upstream is None and conn.pool is self.pool
        if not wanted or not (self.awaiting or reused):
            conn.pool.release(conn)
            return
        self.awaiting = False
        self._send(conn, reused)

    def on_connect_failure(self, pool: EndpointPool, reason: str) -> None:
        if self.finished or not self.awaiting or pool is not self.pool:
            return
        self.awaiting = False
        self._report(503)
        self._fail_try(CONNECT_FAILURE, reason)

    def _send(self, conn: UpstreamConnection, reused: bool) -> None:
        self.upstream = self.last_conn = conn
        self.reused = reused
        conn.start(self, self.head.method)
        if self.cluster.track_load:
            assert self.pool is not None
            self.pool.endpoint.on_start()
            self.attempt_started = measure.now()
        transport = conn.transport
        assert transport is not None
        body = self.body
        if not body and not self.request_done:
            conn.request_complete = False
            transport.write(self.head_bytes)
        elif not body:
            conn.request_complete = True
            transport.write(self.head_bytes)
        else:
            chunks = [self.head_bytes]
            if self.body_length == BODY_CHUNKED:
                for data in body:
                    chunks += (chunk_prefix(len(data)), data, CRLF)
                if self.request_done:
                    chunks.append(LAST_CHUNK)
            else:
                chunks += body
            conn.request_complete = self.request_done
            transport.writelines(chunks)
            if not self.retriable:
                body.clear()
        if self.body_size > self.buffer_limit:  # only then was reading paused for the buffer
            self.down.resume_reading(READ_BUFFER_FULL)
        if self.down.write_paused:
            self.upstream_read_paused = True
            transport.pause_reading()

    # --- request events (from the downstream connection) ------------------------------------------

    def on_request_body(self, data: bytes) -> None:
        if self.finished or not data:
            return
        conn = self.upstream
        if conn is None or self.retriable:
            self.body.append(data)
            self.body_size += len(data)
            if self.body_size > self.buffer_limit:
                self.retriable = False
        if conn is not None:
            transport = conn.transport
            assert transport is not None
            if self.body_length == BODY_CHUNKED:
                transport.writelines((chunk_prefix(len(data)), data, CRLF))
            else:
                transport.write(data)
            if not self.retriable and self.body:
                self.body.clear()
        elif self.body_size > self.buffer_limit:
            self.down.pause_reading(READ_BUFFER_FULL)

    def on_request_end(self) -> None:
        self.request_done = True
        conn = self.upstream
        if conn is not None and not self.finished:
            if self.body_length == BODY_CHUNKED:
                assert conn.transport is not None
                conn.transport.write(LAST_CHUNK)
            conn.request_complete = True
        if self.mirror is not None and self.request_open:
            # Not while a fault delay holds the request: it may still be aborted.
            self._send_mirror()

    def on_downstream_lost(self) -> None:
        """The client went away: abandon the request and its upstream connection."""
        if self.finished:
            return
        self.finished = True
        self._cancel_timers()
        self._abandon_try()
        self._finish()
        if self.mirror is not None:
            self._skip_mirror()  # left during a fault delay: the request never went ahead

    def on_downstream_pause_writing(self) -> None:
        conn = self.upstream
        if conn is not None and conn.transport is not None and not self.upstream_read_paused:
            self.upstream_read_paused = True
            conn.transport.pause_reading()

    def on_downstream_resume_writing(self) -> None:
        conn = self.upstream
        if conn is not None and conn.transport is not None and self.upstream_read_paused:
            self.upstream_read_paused = False
            conn.transport.resume_reading()

    def on_upstream_pause_writing(self) -> None:
        self.down.pause_reading(READ_UPSTREAM_FULL)

    def on_upstream_resume_writing(self) -> None:
        self.down.resume_reading(READ_UPSTREAM_FULL)

    # --- response events (from the upstream connection) -------------------------------------------

    def on_response_head(
        self, conn: UpstreamConnection, head: ResponseHead, body_length: int
    ) -> None:
        if conn is not self.upstream or self.finished:
            return
        status = head.status
        pool = self.pool
        if pool is not None:
            endpoint = pool.endpoint
            if status == 503 and header_get(head.headers, _FLAGS_HEADER) in UNSERVING_FLAGS:
                self.cluster.failfast.on_unreachable(endpoint)
            elif endpoint.connect_failures:
                self.cluster.failfast.on_success(endpoint)
        plan = self.plan
        if (
            plan is not None
            and plan.retry_on is not None
            and status in plan.retry_on.statuses
            and self._retry(status)
        ):
            self._report(status)
            self.upstream = None
            self._end_attempt(False)
            conn.detach(discard=True)
            self.down.resume_reading(READ_UPSTREAM_FULL)
            return
        if status >= 500 and self.route is not None and self.fallback_cause is None:
            fallback = self.route.fallback
            if fallback is not None and self._fallback_applies(fallback):
                # The final answer is a 5xx and nothing went downstream yet: the fallback's
                # response replaces it; the 5xx is read out and dropped.
                self._report(status)
                self.upstream = None
                self._end_attempt(False)
                conn.detach(discard=True)
                self.finished = True
                self._cancel_timers()
                self.down.resume_reading(READ_UPSTREAM_FULL | READ_BUFFER_FULL)
                self._finish()
                self._fall_back(fallback, UPSTREAM_5XX)
                return
        if (
            plan is not None
            and plan.retry_reset
            and self.retries < plan.attempts
            and self.retriable
            and (0 < body_length <= HOLD_LIMIT or body_length == BODY_CHUNKED)
        ):
            self.held_head = head
            self.held_length = body_length
            self._cancel_timers()
            return
        self._forward_head(head, body_length)

    def _forward_head(self, head: ResponseHead, body_length: int) -> None:
        self.response_started = True
        self.status = status = head.status
        endpoint = self.try_endpoint  # _report, inlined: once per response
        if endpoint is not None:
            self.try_endpoint = None
            self.cluster.on_try_result(endpoint, status)
        if self.timer is not None or self.deadline != _NEVER:
            self._cancel_timers()
        # Only a filter may read the fields: an unread head goes downstream as received.
        backend = self.backend
        if backend is not None and backend.response_filters:
            backend.apply_response(head)
        route = self.route
        if route is not None and route.response_filters:
            route.apply_response(head)
        if self.budget_exhausted:
            head.headers.append(_BUDGET_HEADER)
        if self.fallback_cause is not None:
            head.headers.append((_FLAGS_HEADER, b"fallback," + self.fallback_cause.encode()))
        capture = self.capture
        if capture is not None and not capture.begin(head, body_length):
            self.capture = None
        self.down.send_response_head(head, body_length)

    def on_response_body(self, data: bytes) -> None:
        if self.held_head is None:
            self.down.send_response_body(data)
            capture = self.capture
            if capture is not None and not capture.add(data):
                self.capture = None
            return
        held = self.held_body
        if held is None:
            self.held_body = data
        elif isinstance(held, list):
            held.append(data)
        else:
            self.held_body = [held, data]
        self.held_size += len(data)
        if self.held_size > HOLD_LIMIT:
            self._flush_held()

    def on_read_end(self) -> None:
        """The upstream's read ended with a response still held: a chunked one goes out now."""
        if self.held_length == BODY_CHUNKED:
            self._flush_held()

    def _flush_held(self) -> None:
        head = self.held_head
        if head is None:
            return
        self.held_head = None
        self._forward_head(head, self.held_length)
        body = self.held_body
        if body is not None:
            self.held_body = None
            self.held_size = 0
            if isinstance(body, list):
                for data in body:
                    self.down.send_response_body(data)
            else:
                self.down.send_response_body(body)
            capture = self.capture
            if capture is not None:
                for data in body if isinstance(body, list) else (body,):
                    if not capture.add(data):
                        self.capture = None
                        break

    def _drop_held(self) -> None:
        self.held_head = None
        self.held_body = None
        self.held_size = 0

    def on_response_end(self) -> None:
        if self.held_head is not None:
            self._flush_held()
        conn = self.upstream
        self.upstream = None
        self.finished = True
        capture = self.capture
        if capture is not None:
            self.capture = None
            capture.keep(self.head, _NOT_KEPT)
        if self.request_open:  # _finish, inlined for the usual case
            self.request_open = False
            cluster = self.cluster
            if cluster.active_requests > 0:  # cluster.end_request(), inlined
                cluster.active_requests -= 1
        if self.retry_slot or self.mirror is not None:
            self._finish()
        if self.attempt_started:
            self._end_attempt(self.status < 500)
        if self.upstream_read_paused and conn is not None and conn.transport is not None:
            self.upstream_read_paused = False
            conn.transport.resume_reading()
        self.down.resume_reading(READ_UPSTREAM_FULL)
        self.cluster.stats.count(self.status, measure.now() - self.started)
        self.down.send_response_end()

    def on_upstream_failure(self, conn: UpstreamConnection, outcome: str, reason: str) -> None:
        if conn is not self.upstream or self.finished:
            return
        self.upstream = None
        self._end_attempt(False)
        self.down.resume_reading(READ_UPSTREAM_FULL)
        if self.held_head is not None:
            self._drop_held()  # nothing went downstream: the try is retried like any reset
        if self.response_started:
            # Part of the response went out: the client can only learn of it by a cut connection.
            self.finished = True
            self.capture = None  # never kept: the body is not whole
            self._cancel_timers()
            self._finish()
            self.cluster.stats.count(502, measure.now() - self.started)
            self.down.abort_response()
            return
        if (
            outcome == RESET
            and self.reused
            and not conn.got_response_bytes
            and not self.free_retry_used
            and self.retriable
        ):
            # A pooled connection the peer had closed: the request never got there.
            self.free_retry_used = True
            self.tried.pop()
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            self._try()
            return
        self._report(_TRY_STATUS.get(outcome, 502))
        self._fail_try(outcome, reason)

    # --- failures, retries, timeouts --------------------------------------------------------------

    def _fail_try(self, outcome: str, reason: str) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.try_deadline = _NEVER
        self._watch()  # the request's own deadline still runs through the backoff
        if self._retry(outcome):
            return
        if self.budget_exhausted:
            self._local(flags.RETRY_BUDGET_EXHAUSTED, f"{reason}; retry budget exhausted")
        else:
            self._local(_FAILURE_FLAGS[outcome], reason)

    def _retry(self, outcome: int | str) -> bool:
        """Schedule another try if the rule, the body and the budget allow it."""
        plan = self.plan
        if (
            plan is None
            or plan.retry_on is None
            or self.retries >= plan.attempts
            or not self.retriable
            or self.response_started
            or not plan.retry_on.should_retry(outcome)
        ):
            return False
        cluster = self.cluster
        if self.retry_slot:  # the retry whose try just failed is over
            self.retry_slot = False
            cluster.end_retry()
        if not cluster.start_retry():
            return False  # the cluster's retry limit (circuit breaker): the failure stands
        if not cluster.budget.try_acquire_retry():
            cluster.end_retry()
            self.budget_exhausted = True
            return False
        self.retry_slot = True
        self.retries += 1
        cluster.stats.retries.inc()
        if self.timer is not None:
            self.timer.cancel()
        delay = backoff(self.retries, plan.backoff_base, plan.backoff_max, cluster.rand)
        self.timer = self.loop.call_later(delay, self._try)
        return True

    def _watch(self) -> None:
        deadline = min(self.request_deadline, self.try_deadline)
        if deadline == _NEVER:
            self.deadlines.discard(self)
        else:
            self.deadline = deadline
            self.deadlines.add(self)

    def on_deadline(self) -> None:
        """Called by `Deadlines` once `deadline` has passed."""
        if self.finished or self.response_started:
            return
        now = self.loop.time()
        if self.request_deadline <= now:
            self._on_deadline()
        elif self.try_deadline <= now:
            self._on_try_timeout()
        else:
            self._watch()

    def _on_try_timeout(self) -> None:
        self.try_deadline = _NEVER
        address = self.pool.endpoint.address if self.pool is not None else "?"
        if self.upstream is not None or self.awaiting:  # not while queued for a connection slot
            self._report(504)
        self._abandon_try()
        self._fail_try(TIMEOUT, f"no response from {address} within the per-try timeout")

    def _on_deadline(self) -> None:
        if self.upstream is not None or self.awaiting:
            self._report(504)
        self._abandon_try()
        self._local(flags.TIMEOUT, "no response within the request timeout")

    def _abandon_try(self) -> None:
        if self.held_head is not None:
            self._drop_held()
        conn = self.upstream
        if conn is not None:
            self.upstream = None
            self._end_attempt(False)
            conn.abort()
        if self.waiting_pool is not None:
            self.waiting_pool = None
            self.cluster.cancel_pending(self)
        self.awaiting = False
        self.try_endpoint = None  # a try cut short by us, not by the endpoint: not reported

    def _end_attempt(self, ok: bool) -> None:
        pool = self.pool
        if pool is not None and self.attempt_started:
            pool.endpoint.on_complete(measure.now() - self.attempt_started, ok)
            self.attempt_started = 0.0

    def _cancel_timers(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.deadline != _NEVER:
            self.deadline = _NEVER
            self.deadlines.discard(self)

    def _local(self, flag: str, message: str, status: int | None = None) -> None:
        self.finished = True
        self._cancel_timers()
        self._abandon_try()
        self.down.resume_reading(READ_BUFFER_FULL | READ_UPSTREAM_FULL)
        self._finish()
        route = self.route
        if route is not None and route.fallback is not None and flag in CAUSES:
            fallback = route.fallback
            cause = self.fallback_cause
            if cause is None:
                if self._fallback_applies(fallback):
                    self._fall_back(fallback, flag)
                    return
            elif fallback.static is not None:
                # The backend fallback got no response: the static response is the last step.
                fallback.count("response", cause)
                static = fallback.static
                self._send_fallback(static.status, static.headers, static.body, False, cause)
                return
        self.cluster.stats.count(status or flags.STATUS[flag], measure.now() - self.started)
        if status is None:
            self.down.send_local(flag, message)
        else:
            self.down.send_local(flag, message, status)

    # --- fallbacks (proxy/fallback.py) ------------------------------------------------------------

    def _prepare_fallback(self, fallback: FallbackPlan) -> None:
        """At start: a request whose response a rule's cache may keep gets a `Capture`
        (response_cache.py says which requests and responses are shared)."""
        cache = fallback.cache
        if cache is not None and self.fallback_cause is None:
            self.capture = cache.capture(self.head)

    def _cached(self, fallback: FallbackPlan) -> CachedResponse | None:
        cache = fallback.cache
        if cache is None:
            return None
        return cache.lookup(self.head, fallback.max_stale)

    def _fallback_applies(self, fallback: FallbackPlan) -> bool:
        return (
            fallback.static is not None
            or (fallback.backend_cluster is not None and self.retriable)
            or self._cached(fallback) is not None
        )

    def _fall_back(self, fallback: FallbackPlan, cause: str) -> None:
        """Serve the first step of the rule's fallback that applies (see proxy/fallback.py);
        the exchange is finished and nothing went downstream."""
        entry = self._cached(fallback)
        if entry is not None:
            fallback.count("cached", cause)
            self._send_fallback(entry.status, entry.headers, entry.body, entry.head_only, cause)
            return
        target = fallback.backend_cluster
        if target is not None and self.retriable and fallback.backend is not None:
            fallback.count("backend", cause)
            other = Exchange(
                self.down,
                self.loop,
                self.head,
                self.body_length,
                target,
                fallback.backend_plan,
                self.route,
                fallback.backend,
                self.buffer_limit,
                self.deadlines,
            )
            # The buffered body (the whole body, or its start while it still arrives) goes along;
            # the rest reaches the new exchange once the connection points at it.
            other.body = self.body
            other.body_size = self.body_size
            other.request_done = self.request_done
            # The access log and stats measure from the request's arrival; the fallback's own
            # request timeout runs from now (the original's may have passed already).
            other.started = self.started
            other.fallback_cause = cause
            other.flag = f"{flags.FALLBACK},{cause}"
            self.down.exchange = other
            other.start(self.loop.time())
            return
        static = fallback.static
        assert static is not None  # _fallback_applies said one of the three applies
        fallback.count("response", cause)
        self._send_fallback(static.status, static.headers, static.body, False, cause)

    def _send_fallback(
        self,
        status: int,
        fields: Headers | tuple[tuple[bytes, bytes], ...],
        body: bytes,
        head_only: bool,
        cause: str,
    ) -> None:
        flag = f"{flags.FALLBACK},{cause}"
        self.flag = flag
        self.status = status
        self.response_started = True
        headers = list(fields)
        headers.append((_FLAGS_HEADER, flag.encode()))
        length = len(body)
        if status in _NO_BODY_STATUSES:
            # No body and no Content-Length, to a GET or a HEAD (the serializer writes none for
            # these statuses at length 0; a kept HEAD answer's own field goes too).
            headers = [(k, v) for k, v in headers if k != b"content-length"]
            length = 0
            body = b""
        elif self.head.method == b"HEAD":
            if not head_only:
                headers.append((b"content-length", b"%d" % length))
            length = BODY_HEAD
            body = b""
        elif head_only:
            length = 0  # a kept answer to a HEAD never serves a GET (the key has the method)
        down = self.down
        down.cork()
        down.send_response_head(ResponseHead(status, headers), length)
        if body:
            down.send_response_body(body)
        self.cluster.stats.count(status, measure.now() - self.started)
        down.send_response_end()
        down.uncork()

    # --- mirroring (filters/mirror.py) ------------------------------------------------------------

    def _send_mirror(self) -> None:
        """The request is complete: send its copy to the mirror cluster, fire and forget."""
        binding = self.mirror
        self.mirror = None
        if binding is None:
            return
        mirror = binding.mirror
        cluster = binding.cluster
        if cluster is None or not self.retriable or self.body_size > self.buffer_limit:
            mirror.skipped.value += 1.0
            return
        if not mirror.admit():
            return
        sink = MirrorSink(mirror)
        copy = Exchange(
            sink,
            self.loop,
            mirror.shadow_head(self.head),
            self.body_size,
            cluster,
            binding.plan,
            None,
            None,
            self.buffer_limit,
            self.deadlines,
        )
        copy.body = list(self.body)
        copy.body_size = self.body_size
        copy.request_done = True
        sink.exchange = copy
        copy.start()
