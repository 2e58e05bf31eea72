"""The sidecar's distributed tracing: trace headers per hop, one span per request, OTLP export.

Per request (`ProxyTracer.begin`, from the downstream connection once the head is in): the trace
context the request carries is read (telemetry/tracing.py: W3C, single or multi B3). Recording
(the Snapshot's `telemetry.tracing` has an exporter), this hop gets a span of its own, a child of
the incoming context (SERVER on the inbound listener, CLIENT on the outbound one), and every trace
field forwarded is rewritten so that the next hop's parent is this span, in W3C and B3 alike.
Propagating only (no exporter), the context goes on unchanged and only the form it lacks is added.
A request with no context starts a new trace when recording, and stays without one otherwise.

At the request's end (`RequestTrace.finish`, where the access log is written) the sampler decides
whether the span is recorded (sampled, or a failure kept by `keepErrors`); a recorded span is one
tuple of raw values appended to a bounded list on the event loop (full: dropped and counted). A
worker thread turns batches into OpenTelemetry SDK spans and hands them to the SDK's OTLP exporter
(http/protobuf or gRPC), so neither encoding nor the network touches the loop. OpenTelemetry is
imported by that thread only, when a Snapshot first asks for an exporter: a sidecar that does not
trace never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gossamer.http.message import RequestHead, header_get
from gossamer.proxy.exchange import Exchange
from gossamer.snapshot import Snapshot
from gossamer.telemetry import tracing as tc
from gossamer.telemetry.metrics import Registry

if TYPE_CHECKING:
    from gossamer.proxy.connection import DownstreamConnection

log = logging.getLogger("gossamer.proxy.tracing")

MAX_QUEUE = 4096  # spans waiting on the loop; more are dropped (counted)
BATCH_SIZE = 512  # spans per export call
EXPORT_INTERVAL = 1.0  # seconds a span may wait for its batch to fill
SCOPE = "gossamer.proxy"

_W3C_FIELDS = frozenset((tc.TRACEPARENT, tc.TRACESTATE))
_B3_FIELDS = tc.TRACE_FIELDS - _W3C_FIELDS


@dataclass(frozen=True, slots=True)
class ExportTarget:
    """Where recorded spans go: the Snapshot's exporter plus this proxy's resource attributes."""

    protocol: str
    endpoint: str
    timeout: float
    service: str
    namespace: str
    proxy_id: str


@dataclass(frozen=True, slots=True)
class TracingConfig:
    """A Snapshot's tracing, checked (`ProxyTracer.prepare`), ready to install."""

    sampling: float
    keep_errors: bool
    target: ExportTarget | None  # None: propagate only


class RequestTrace:
    """One request's trace context: its trace id (the access log's `traceId`) and, when this
    proxy records, its span."""

    __slots__ = (
        "host",
        "method",
        "outbound",
        "parent_id",
        "path",
        "sampled",
        "scheme",
        "span_id",
        "start",
        "trace_id",
        "tracer",
    )

    def __init__(
        self,
        trace_id: bytes,
        span_id: bytes | None,
        parent_id: bytes | None,
        sampled: bool,
        tracer: ProxyTracer | None,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id  # this hop's span; None when only propagating
        self.parent_id = parent_id
        self.sampled = sampled
        self.tracer = tracer  # None: nothing to record at the end
        self.start = 0.0
        self.outbound = False
        # The request as it arrived (before route filters rewrite it): references, no copies.
        self.method = b""
        self.host = b""
        self.path = b""
        self.scheme = b"http"

    def finish(self, conn: DownstreamConnection, status: int, flag: str | None) -> None:
        """The request ended (`status` 0: no response); record the span if the sampler says so.
        Only the first call counts."""
        tracer = self.tracer
        if tracer is not None:
            self.tracer = None
            tracer.end(self, conn, status, flag)


class ProxyTracer:
    """Tracing for one data plane; see the module docstring.

    Args:
        loop: the event loop (its clock times spans; timers pace the batches).
        registry: where the span counters are registered.
        own_identity: this proxy's SPIFFE ID now (None without an SVID).
        rng: ids and the sampling ratio.
        clock: times spans. Not the loop's: uvloop's clock moves in whole milliseconds, too
            coarse for a hop that takes a few hundred microseconds.
        wall: the wall clock, read once per batch to place `clock` times in real time.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        registry: Registry,
        own_identity: Callable[[], str | None],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.loop = loop
        self.own_identity = own_identity
        self.clock = clock
        self.wall = wall
        rng = rng or random.Random()
        self.ids = tc.IdSource(rng)
        self.rand = rng.random
        self.sampler = tc.Sampler(1.0, True, self.rand)
        self.recording = False
        self.target: ExportTarget | None = None
        exported = registry.counter(
            "gossamer_proxy_spans_exported_total", "Spans the OTLP exporter accepted."
        )
        dropped = registry.counter(
            "gossamer_proxy_spans_dropped_total",
            "Recorded spans lost: the queue was full (queue_full), their export failed "
            "(export_failed), or tracing was turned off before they went out (disabled).",
            ("reason",),
        )
        failures = registry.counter(
            "gossamer_proxy_span_export_failures_total", "Export calls that failed."
        )
        self.exported = exported.labels()
        self.dropped_full = dropped.labels("queue_full")
        self.dropped_failed = dropped.labels("export_failed")
        self.dropped_disabled = dropped.labels("disabled")
        self.failures = failures.labels()
        self.max_queue = MAX_QUEUE
        self.batch_size = BATCH_SIZE
        self.interval = EXPORT_INTERVAL
        self.pending: list[tuple[Any, ...]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.exporting = False
        self.closed = False
        self._idle: asyncio.Future[None] | None = None
        self._jobs: queue.SimpleQueue[tuple[list[tuple[Any, ...]], float, ExportTarget] | None] = (
            queue.SimpleQueue()
        )
        self._thread: threading.Thread | None = None

    # --- configuration ----------------------------------------------------------------------------

    @staticmethod
    def prepare(snapshot: Snapshot) -> TracingConfig:
        """Check the Snapshot's tracing settings.

        Raises:
            ValueError: a setting the proxy cannot use (the message names it).
        """
        telemetry = snapshot.telemetry
        tracing = telemetry.tracing if telemetry is not None else None
        if tracing is None:
            return TracingConfig(1.0, True, None)
        if not 0.0 <= tracing.sampling <= 1.0:
            raise ValueError(f"sampling {tracing.sampling!r} is not between 0 and 1")
        exporter = tracing.exporter
        target = None
        if exporter is not None:
            endpoint = exporter.endpoint.strip()
            if exporter.protocol == "grpc":
                host, sep, port = endpoint.rpartition(":")
                scheme_ok = "://" not in host or host.startswith(("http://", "https://"))
                if not sep or not host or not port.isdigit() or not scheme_ok:
                    raise ValueError(f"exporter endpoint {endpoint!r} is not host:port (grpc)")
            elif not endpoint.startswith(("http://", "https://")) or len(endpoint) < 10:
                raise ValueError(
                    f"exporter endpoint {endpoint!r} is not an http:// or https:// URL "
                    "(http/protobuf)"
                )
            if not exporter.timeout > 0.0:
                raise ValueError(f"exporter timeout {exporter.timeout!r} is not more than 0")
            proxy = snapshot.proxy
            target = ExportTarget(
                exporter.protocol,
                endpoint,
                exporter.timeout,
                proxy.service,
                proxy.namespace,
                proxy.proxy_id,
            )
        return TracingConfig(tracing.sampling, tracing.keep_errors, target)

    def install(self, config: TracingConfig) -> None:
        """Use `config` for requests that start from now on."""
        self.sampler = tc.Sampler(config.sampling, config.keep_errors, self.rand)
        self.target = config.target
        self.recording = config.target is not None and not self.closed
        if config.target is None and self.pending and not self.exporting:
            self.dropped_disabled.value += len(self.pending)
            self.pending.clear()

    # --- per request ------------------------------------------------------------------------------

    def begin(self, head: RequestHead, found: bool, outbound: bool) -> RequestTrace | None:
        """Read the request's context and rewrite its trace fields for the next hop.

        Args:
            head: the request; its headers are changed in place.
            found: the head has at least one trace field (the connection saw it as it scanned
                the headers): without one and not recording, there is nothing to do.
            outbound: the outbound listener (a CLIENT span) or the inbound one (SERVER).

        Returns:
            The request's trace, or None when it has none (not recording, no valid context).
        """
        headers = head.headers
        incoming = tc.extract(headers) if found else None
        if not self.recording:
            if incoming is None or incoming.trace_id is None or incoming.span_id is None:
                return None
            return self._translate(headers, incoming)
        ids = self.ids
        if incoming is None:
            trace_id, parent_id, sampled = ids.trace_id(), None, self.sampler.start(None)
            debug, tracestate, single = False, None, False
        else:
            if incoming.trace_id is None:  # a lone B3 sampling decision
                trace_id, parent_id = ids.trace_id(), None
            else:
                trace_id, parent_id = incoming.trace_id, incoming.span_id
            sampled = self.sampler.start(incoming.sampled)
            debug, tracestate, single = incoming.debug, incoming.tracestate, incoming.fmt == "b3"
        span_id = ids.span_id()
        fields = tc.context_fields(
            trace_id,
            span_id,
            sampled,
            parent_id=parent_id,
            debug=debug,
            tracestate=tracestate,
            b3_single=single,
        )
        tc.inject(headers, fields, replace=found)
        trace = RequestTrace(trace_id, span_id, parent_id, sampled, self)
        trace.start = self.clock()
        trace.outbound = outbound
        trace.method = head.method
        trace.host = head.host
        trace.path = head.path
        trace.scheme = head.scheme
        return trace

    @staticmethod
    def _translate(headers: tc.Headers, incoming: tc.Incoming) -> RequestTrace:
        """Propagation only: keep the context, add the form it lacks (B3 for W3C and back)."""
        trace_id, span_id = incoming.trace_id, incoming.span_id
        assert trace_id is not None
        assert span_id is not None
        sampled = bool(incoming.sampled)
        if incoming.fmt == "w3c":
            headers[:] = [h for h in headers if h[0] not in _B3_FIELDS]
            headers += (
                (tc.B3_TRACE_ID, trace_id),
                (tc.B3_SPAN_ID, span_id),
                (tc.B3_SAMPLED, b"1" if sampled else b"0"),
            )
        else:
            headers[:] = [h for h in headers if h[0] not in _W3C_FIELDS]
            headers.append((tc.TRACEPARENT, tc.format_traceparent(trace_id, span_id, sampled)))
        return RequestTrace(trace_id, None, None, sampled, None)

    def end(
        self, trace: RequestTrace, conn: DownstreamConnection, status: int, flag: str | None
    ) -> None:
        """Queue the span of a finished request when the sampler keeps it."""
        if not self.sampler.record(trace.sampled, status, flag) or self.closed:
            return
        pending = self.pending
        if len(pending) >= self.max_queue:
            self.dropped_full.value += 1.0
            return
        exchange = conn.exchange
        route = cluster = endpoint = peer_id = None
        retries = 0
        if isinstance(exchange, Exchange):  # not the stand-in of a local answer
            cluster = exchange.cluster.name
            retries = exchange.retries
            if exchange.route is not None:
                route = exchange.route.rule.name
            pool = exchange.pool
            if pool is not None and exchange.tried:
                endpoint = pool.endpoint.address
            last = exchange.last_conn
            if last is not None and last.pool is pool:
                peer_id = last.peer_spiffe_id
        else:
            # A local answer to a routed request (rate limited, no backend) still has its rule.
            matched = getattr(exchange, "route", None)
            if matched is not None:
                route = matched.rule.name
        own = self.own_identity()
        if trace.outbound:
            source, destination, peer_address = own, peer_id, endpoint
        else:
            source, destination, peer_address = conn.peer_spiffe_id, own, conn.source_address()
        head = conn.head
        agent = header_get(head.headers, b"user-agent") if head is not None else None
        pending.append(
            (
                trace.trace_id,
                trace.span_id,
                trace.parent_id,
                trace.sampled,
                trace.outbound,
                trace.start,
                self.clock(),
                trace.method,
                trace.host,
                trace.path,
                trace.scheme,
                status,
                flag,
                route,
                cluster,
                endpoint,
                peer_address,
                agent,
                source,
                destination,
                retries,
                conn.request_id,
            )
        )
        if len(pending) >= self.batch_size:
            self.flush()
        elif self.timer is None and not self.exporting:
            self.timer = self.loop.call_later(self.interval, self._on_timer)

    # --- batches ----------------------------------------------------------------------------------

    def _on_timer(self) -> None:
        self.timer = None
        self.flush()

    def flush(self) -> None:
        """Hand a batch to the export thread, unless one is under way (its end flushes again)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.exporting or not self.pending:
            return
        target = self.target
        if target is None:
            self.dropped_disabled.value += len(self.pending)
            self.pending.clear()
            return
        batch = self.pending[: self.batch_size]
        del self.pending[: self.batch_size]
        self.exporting = True
        if self._thread is None:
            # A daemon thread: an exporter stuck on a dead collector must not hold up exit.
            self._thread = threading.Thread(
                target=self._work, name="gossamer-span-export", daemon=True
            )
            self._thread.start()
        self._jobs.put((batch, self.wall() - self.clock(), target))

    def _exported(self, count: int, ok: bool) -> None:
        self.exporting = False
        if ok:
            self.exported.value += count
        else:
            self.failures.value += 1.0
            self.dropped_failed.value += count
        if self.pending and (self.closed or len(self.pending) >= self.batch_size):
            self.flush()
        elif self.pending and self.timer is None:
            self.timer = self.loop.call_later(self.interval, self._on_timer)
        idle = self._idle
        if idle is not None and not self.exporting and not idle.done():
            idle.set_result(None)

    def _work(self) -> None:
        """The export thread: one exporter at a time (rebuilt when the target changes)."""
        exporter: Any = None
        current: ExportTarget | None = None
        loop = self.loop
        while True:
            job = self._jobs.get()
            if job is None:
                break
            batch, offset, target = job
            ok = False
            try:
                if target != current:
                    if exporter is not None:
                        exporter.shutdown()
                    exporter, current = None, None
                    exporter, current = make_exporter(target), target
                ok = exporter.export(to_sdk_spans(batch, offset, exporter.shared))
            except Exception as exc:
                log.warning("tracing: exporting %d spans to %s failed: %s", len(batch), target, exc)
            try:
                loop.call_soon_threadsafe(self._exported, len(batch), ok)
            except RuntimeError:
                break  # the loop is closed: nobody is waiting any more
        if exporter is not None:
            with contextlib.suppress(Exception):
                exporter.shutdown()

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Stop recording, export what is queued (waiting up to `timeout` s), stop the thread."""
        if self.closed:
            return
        self.closed = True
        self.recording = False
        try:
            async with asyncio.timeout(timeout):
                while self.exporting or self.pending:
                    if not self.exporting:
                        self.flush()
                        if not self.exporting:
                            break
                    self._idle = self.loop.create_future()
                    await self._idle
        except TimeoutError:
            log.warning("tracing: %d spans not exported at exit", len(self.pending))
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self._thread is not None:
            self._jobs.put(None)


# --- the export thread's side: OpenTelemetry, imported here only --------------------------------


class _Exporter:
    """The SDK's OTLP exporter for one target, and what every span sent to it shares."""

    def __init__(self, target: ExportTarget) -> None:
        self.shared = _Shared(target)
        self.sdk: Any
        if target.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            endpoint = target.endpoint
            secure = endpoint.startswith("https://")
            self.sdk = GrpcExporter(endpoint=endpoint, insecure=not secure, timeout=target.timeout)
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )

            url = target.endpoint.rstrip("/")
            if not url.endswith("/v1/traces"):
                url += "/v1/traces"
            self.sdk = HttpExporter(endpoint=url, timeout=target.timeout)

    def export(self, spans: list[Any]) -> bool:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return bool(self.sdk.export(spans) == SpanExportResult.SUCCESS)

    def shutdown(self) -> None:
        self.sdk.shutdown()


def make_exporter(target: ExportTarget) -> _Exporter:
    return _Exporter(target)


def _split(address: str) -> tuple[str, int | None]:
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):
        return host.strip("[]"), int(port)
    return address.strip("[]"), None


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def to_sdk_spans(batch: list[tuple[Any, ...]], offset: float, shared: _Shared) -> list[Any]:
    """OpenTelemetry SDK `ReadableSpan`s for queued span tuples (`offset`: the wall clock minus
    the tracer's); called by the export thread."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    proxy_attrs = shared.attributes
    spans = []
    for (
        trace_id,
        span_id,
        parent_id,
        sampled,
        outbound,
        start,
        end,
        method,
        host,
        path,
        scheme,
        status,
        flag,
        route,
        cluster,
        endpoint,
        peer_address,
        agent,
        source,
        destination,
        retries,
        request_id,
    ) in batch:
        trace_int = int(trace_id, 16)
        flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
        context = SpanContext(trace_int, int(span_id, 16), is_remote=False, trace_flags=flags)
        parent = (
            SpanContext(trace_int, int(parent_id, 16), is_remote=True, trace_flags=flags)
            if parent_id is not None
            else None
        )
        method_text = _text(method)
        attributes: dict[str, Any] = {
            "http.request.method": method_text,
            "url.path": _text(path),
            "url.scheme": _text(scheme),
        }
        server, server_port = _split(_text(host))
        if server:
            attributes["server.address"] = server
            attributes["server.port"] = server_port or (443 if scheme == b"https" else 80)
        if status:
            attributes["http.response.status_code"] = status
        if peer_address:
            peer, peer_port = _split(peer_address)
            attributes["network.peer.address"] = peer
            if peer_port is not None:
                attributes["network.peer.port"] = peer_port
        if agent is not None:
            attributes["user_agent.original"] = _text(agent)
        if route is not None:
            attributes["http.route"] = route
        attributes.update(proxy_attrs)
        attributes["gossamer.direction"] = "outbound" if outbound else "inbound"
        attributes["gossamer.request_id"] = _text(request_id)
        if flag is not None:
            attributes["gossamer.response_flag"] = flag
        if cluster is not None:
            attributes["gossamer.upstream_cluster"] = cluster
        if endpoint is not None:
            attributes["gossamer.upstream_endpoint"] = endpoint
        if source:
            attributes["gossamer.source_identity"] = source
        if destination:
            attributes["gossamer.destination_identity"] = destination
        attributes["gossamer.retries"] = retries
        failed = status >= 500 or (status == 0 and flag is not None)
        if failed:
            attributes["error.type"] = flag if flag is not None else str(status)
            span_status = Status(StatusCode.ERROR, flag)
        else:
            span_status = Status(StatusCode.UNSET)
        spans.append(
            ReadableSpan(
                f"{method_text} {route}" if route is not None else method_text,
                context=context,
                parent=parent,
                resource=shared.resource,
                attributes=attributes,
                kind=SpanKind.CLIENT if outbound else SpanKind.SERVER,
                status=span_status,
                start_time=int((start + offset) * 1e9),
                end_time=int((end + offset) * 1e9),
                instrumentation_scope=shared.scope,
            )
        )
    return spans


class _Shared:
    """What every span for one target shares, built once per target."""

    def __init__(self, target: ExportTarget) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.resource = Resource(
            {
                "service.name": target.service,
                "service.namespace": target.namespace,
                "service.instance.id": target.proxy_id,
            }
        )
        self.scope = InstrumentationScope(SCOPE)
        self.attributes = {
            "gossamer.service": f"{target.service}.{target.namespace}",
            "gossamer.proxy_id": target.proxy_id,
        }
