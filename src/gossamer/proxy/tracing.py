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
worker thread encodes batches into OTLP requests (opentelemetry-proto) and sends them through the
SDK's OTLP exporter (http/protobuf or gRPC), so neither encoding nor the network touches the loop.
OpenTelemetry is imported by that thread only, when a Snapshot first asks for an exporter: a
sidecar that does not trace never loads it.
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
                ok = exporter.send(batch, offset)
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
    """The SDK's OTLP exporter for one target, and what every span sent to it shares.

    `send` encodes a batch straight into an OTLP `ExportTraceServiceRequest` (opentelemetry-proto's
    classes; ~6x cheaper than SDK spans plus the SDK's encoder, and this thread shares the GIL
    with the request loop) and hands it to the SDK exporter's own sender: the gRPC exporter's
    channel and retries, the HTTP exporter's session, compression and retries. An SDK whose
    sender is not where this code looks gets SDK spans through its public `export` instead.
    """

    def __init__(self, target: ExportTarget) -> None:
        self.shared = _Shared(target)
        self.sdk: Any
        self._post: Callable[[bytes], Any] | None = None
        self._direct = False
        if target.protocol == "grpc":
            endpoint = target.endpoint
            secure = endpoint.startswith("https://")
            self.sdk = _grpc_exporter()(
                endpoint=endpoint, insecure=not secure, timeout=target.timeout
            )
            self._direct = callable(getattr(self.sdk, "_export", None))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpExporter,
            )

            url = target.endpoint.rstrip("/")
            if not url.endswith("/v1/traces"):
                url += "/v1/traces"
            self.sdk = HttpExporter(endpoint=url, timeout=target.timeout)
            post = getattr(getattr(self.sdk, "_client", None), "export", None)
            if callable(post):
                self._post = post
                self._direct = True

    def send(self, batch: list[tuple[Any, ...]], offset: float) -> bool:
        """Export queued span tuples (`offset`: the wall clock minus the tracer's)."""
        if not self._direct:
            return self.export(to_sdk_spans(batch, offset, self.shared))
        request = encode_request(batch, offset, self.shared)
        if self._post is None:
            from opentelemetry.sdk.trace.export import SpanExportResult

            return bool(self.sdk._export(request) == SpanExportResult.SUCCESS)
        if getattr(self.sdk, "_shutdown", False):
            return False
        return bool(self._post(request.SerializePartialToString()).success)

    def export(self, spans: list[Any]) -> bool:
        """Export SDK `ReadableSpan`s through the SDK exporter's public API."""
        from opentelemetry.sdk.trace.export import SpanExportResult

        return bool(self.sdk.export(spans) == SpanExportResult.SUCCESS)

    def shutdown(self) -> None:
        self.sdk.shutdown()


def _grpc_exporter() -> Any:
    """The SDK's gRPC span exporter, taught to pass a ready `ExportTraceServiceRequest` through
    (its `_translate_data` is the step that would encode SDK spans)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    class GrpcExporter(OTLPSpanExporter):
        def _translate_data(self, data: Any) -> Any:
            if isinstance(data, ExportTraceServiceRequest):
                return data
            return super()._translate_data(data)

        def _count_data(self, data: Any) -> int:
            if isinstance(data, ExportTraceServiceRequest):
                return sum(len(ss.spans) for rs in data.resource_spans for ss in rs.scope_spans)
            return int(super()._count_data(data))

    return GrpcExporter


def make_exporter(target: ExportTarget) -> _Exporter:
    return _Exporter(target)


def _split(address: str) -> tuple[str, int | None]:
    host, sep, port = address.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):
        return host.strip("[]"), int(port)
    return address.strip("[]"), None


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def _describe(
    record: tuple[Any, ...], proxy_attrs: dict[str, str]
) -> tuple[str, dict[str, Any], bool]:
    """A queued span tuple's name, attributes and whether it failed (the span's status)."""
    (
        _trace_id,
        _span_id,
        _parent_id,
        _sampled,
        outbound,
        _start,
        _end,
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
    ) = record
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
    name = f"{method_text} {route}" if route is not None else method_text
    return name, attributes, failed


def to_sdk_spans(batch: list[tuple[Any, ...]], offset: float, shared: _Shared) -> list[Any]:
    """OpenTelemetry SDK `ReadableSpan`s for queued span tuples (`offset`: the wall clock minus
    the tracer's); the export path for an SDK whose sender `_Exporter` cannot reach."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    spans = []
    for record in batch:
        trace_id, span_id, parent_id, sampled, outbound, start, end = record[:7]
        flag = record[12]
        name, attributes, failed = _describe(record, shared.attributes)
        trace_int = int(trace_id, 16)
        flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
        context = SpanContext(trace_int, int(span_id, 16), is_remote=False, trace_flags=flags)
        parent = (
            SpanContext(trace_int, int(parent_id, 16), is_remote=True, trace_flags=flags)
            if parent_id is not None
            else None
        )
        spans.append(
            ReadableSpan(
                name,
                context=context,
                parent=parent,
                resource=shared.resource,
                attributes=attributes,
                kind=SpanKind.CLIENT if outbound else SpanKind.SERVER,
                status=Status(StatusCode.ERROR, flag) if failed else Status(StatusCode.UNSET),
                start_time=int((start + offset) * 1e9),
                end_time=int((end + offset) * 1e9),
                instrumentation_scope=shared.scope,
            )
        )
    return spans


# Attributes whose values rarely repeat: encoded per span rather than looked up in the cache.
_UNCACHED = frozenset(("url.path", "gossamer.request_id", "network.peer.port"))
_KV_CACHE_MAX = 4096  # encoded (key, value) attributes kept; the cache starts over when full
_HAS_IS_REMOTE = 0x100  # SpanFlags: SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
_IS_REMOTE = 0x200  # SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK: the parent came from another process


def encode_request(batch: list[tuple[Any, ...]], offset: float, shared: _Shared) -> Any:
    """An OTLP `ExportTraceServiceRequest` for queued span tuples, the same spans the SDK's
    encoder makes of `to_sdk_spans` (attributes in another order).

    Most attribute values repeat from span to span (method, route, cluster, identities), so each
    (key, value) is encoded once, as the bytes of a span holding only it, and merged into every
    span that has it: protobuf appends repeated fields on merge.
    """
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.MergeFrom(shared.resource_pb)
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = SCOPE
    add = scope_spans.spans.add
    cache = shared.encoded
    encode = shared.encode_attribute
    unhex = bytes.fromhex
    for record in batch:
        trace_id, span_id, parent_id, _sampled, outbound, start, end = record[:7]
        name, attributes, failed = _describe(record, shared.attributes)
        own = []
        merged = []
        for item in attributes.items():
            if item[0] in _UNCACHED:
                own.append(_key_value(*item))
                continue
            data = cache.get(item)
            if data is None:
                if len(cache) >= _KV_CACHE_MAX:
                    cache.clear()
                data = cache[item] = encode(item)
            merged.append(data)
        status: dict[str, Any] = {}
        if failed:
            status["code"] = 2  # STATUS_CODE_ERROR
            flag = record[12]
            if flag is not None:
                status["message"] = flag
        span = add(
            trace_id=unhex(trace_id.decode()),
            span_id=unhex(span_id.decode()),
            parent_span_id=unhex(parent_id.decode()) if parent_id is not None else b"",
            name=name,
            kind=3 if outbound else 2,  # SPAN_KIND_CLIENT, SPAN_KIND_SERVER
            start_time_unix_nano=int((start + offset) * 1e9),
            end_time_unix_nano=int((end + offset) * 1e9),
            attributes=own,
            status=status,
            flags=_HAS_IS_REMOTE | _IS_REMOTE if parent_id is not None else _HAS_IS_REMOTE,
        )
        span.MergeFromString(b"".join(merged))
    return request


def _key_value(key: str, value: Any) -> dict[str, Any]:
    if type(value) is int:
        return {"key": key, "value": {"int_value": value}}
    return {"key": key, "value": {"string_value": value}}


class _Shared:
    """What every span for one target shares, built once per target."""

    def __init__(self, target: ExportTarget) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        resource = {
            "service.name": target.service,
            "service.namespace": target.namespace,
            "service.instance.id": target.proxy_id,
        }
        self.resource = Resource(resource)
        self.scope = InstrumentationScope(SCOPE)
        self.attributes = {
            "gossamer.service": f"{target.service}.{target.namespace}",
            "gossamer.proxy_id": target.proxy_id,
        }
        self._resource_attrs = resource
        self._resource_pb: Any = None
        self.encoded: dict[tuple[str, Any], bytes] = {}

    @property
    def resource_pb(self) -> Any:
        """The resource as an OTLP message (built on first use: the SDK path never needs it)."""
        if self._resource_pb is None:
            from opentelemetry.proto.resource.v1.resource_pb2 import Resource

            attributes: Any = [_key_value(k, v) for k, v in self._resource_attrs.items()]
            self._resource_pb = Resource(attributes=attributes)
        return self._resource_pb

    @staticmethod
    def encode_attribute(item: tuple[str, Any]) -> bytes:
        """The wire bytes of a span holding only this attribute."""
        from opentelemetry.proto.trace.v1.trace_pb2 import Span

        attributes: Any = [_key_value(*item)]
        return bytes(Span(attributes=attributes).SerializeToString())
