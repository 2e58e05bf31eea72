"""A real OTLP trace receiver on loopback (http/protobuf and gRPC), and tests of the proxy's
export path against it.

The receiver decodes `ExportTraceServiceRequest`s with `opentelemetry-proto` (the messages every
collector speaks): over HTTP from `POST /v1/traces`, over gRPC through a `TraceService` server.
The other tracing tests (data plane, mesh) import it from here.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gossamer.proxy.tracing import ExportTarget, make_exporter, to_sdk_spans

grpc = pytest.importorskip("grpc")
trace_service_pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
trace_service_pb2_grpc = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc"
)

SERVER, CLIENT = 2, 3  # OTLP Span.SpanKind values
STATUS_ERROR = 2


@dataclass
class ReceivedSpan:
    """One span as the collector got it: ids as lower-case hex, attributes as plain values."""

    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    name: str
    kind: int
    status: int
    status_message: str
    start: int
    end: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    return getattr(v, which) if which is not None else None


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


@dataclass
class Receiver:
    """Collects the spans of every export request it is sent; `wait` blocks on a condition."""

    protocol: str
    endpoint: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _stop: Callable[[], None] | None = None

    def add(self, body: bytes) -> None:
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        got = []
        for rs in request.resource_spans:
            resource = _attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    got.append(
                        ReceivedSpan(
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            name=s.name,
                            kind=s.kind,
                            status=s.status.code,
                            status_message=s.status.message,
                            start=s.start_time_unix_nano,
                            end=s.end_time_unix_nano,
                            attributes=_attributes(s.attributes),
                            resource=resource,
                            scope=ss.scope.name,
                        )
                    )
        with self._cond:
            self.requests += 1
            self.spans += got
            self._cond.notify_all()

    def wait(self, count: int, deadline: float = 10.0) -> list[ReceivedSpan]:
        """Block until at least `count` spans arrived; fail after `deadline` seconds."""
        end = time.monotonic() + deadline
        with self._cond:
            while len(self.spans) < count:
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"the OTLP receiver got {len(self.spans)} spans within {deadline}s, "
                        f"expected {count}: {self.spans}"
                    )
                self._cond.wait(left)
            return list(self.spans)

    def close(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None


def start_receiver(protocol: str) -> Receiver:
    """A receiver on 127.0.0.1 with a port from the OS: "http/protobuf" or "grpc"."""
    receiver = Receiver(protocol)
    if protocol == "grpc":

        class Service(trace_service_pb2_grpc.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                receiver.add(request.SerializeToString())
                return trace_service_pb2.ExportTraceServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        receiver.endpoint = f"127.0.0.1:{port}"
        receiver._stop = lambda: server.stop(None)
        return receiver

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                status, data = 404, b""
            else:
                receiver.add(body)
                status = 200
                data = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(status)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    receiver.endpoint = f"http://127.0.0.1:{httpd.server_address[1]}"

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()

    receiver._stop = stop
    return receiver


@pytest.fixture(params=["http/protobuf", "grpc"])
def receiver(request: pytest.FixtureRequest) -> Any:
    r = start_receiver(request.param)
    yield r
    r.close()


# --- the export path, without a data plane -----------------------------------------------------


def _record(**over: Any) -> tuple[Any, ...]:
    """One queued span tuple, as ProxyTracer.end builds it."""
    values: dict[str, Any] = {
        "trace_id": b"4bf92f3577b34da6a3ce929d0e0e4736",
        "span_id": b"00f067aa0ba902b7",
        "parent_id": b"1111111111111111",
        "sampled": True,
        "outbound": True,
        "start": 100.0,
        "end": 100.25,
        "method": b"GET",
        "host": b"pricing:8080",
        "path": b"/prices/1",
        "scheme": b"http",
        "status": 503,
        "flag": "connect-failure",
        "route": "default",
        "cluster": "pricing.default",
        "endpoint": "127.0.0.1:7001",
        "peer": "127.0.0.1:7001",
        "agent": b"curl/8",
        "source": "spiffe://td/ns/default/sa/web",
        "destination": None,
        "retries": 2,
        "request_id": b"ab" * 16,
    }
    values.update(over)
    return tuple(values.values())


def test_sdk_exporter_delivers_spans_with_their_attributes(receiver: Receiver) -> None:
    """A batch turned into SDK spans and sent by the SDK's OTLP exporter arrives whole: ids,
    parent, kind, times on the wall clock, semantic-convention and gossamer attributes, error
    status; over both protocols."""
    target = ExportTarget(receiver.protocol, receiver.endpoint, 5.0, "web", "default", "web-0")
    exporter = make_exporter(target)
    try:
        batch = [_record(), _record(span_id=b"2222222222222222", outbound=False, status=200)]
        assert exporter.export(to_sdk_spans(batch, 1_000_000.0, exporter.shared))
    finally:
        exporter.shutdown()
    client, server = sorted(receiver.wait(2), key=lambda s: s.kind, reverse=True)
    assert client.kind == CLIENT
    assert server.kind == SERVER
    assert client.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert client.span_id == "00f067aa0ba902b7"
    assert client.parent_id == "1111111111111111"
    assert client.name == "GET default"
    assert client.start == 1_000_100_000_000_000
    assert client.end == 1_000_100_250_000_000
    assert client.status == STATUS_ERROR
    assert client.status_message == "connect-failure"
    assert client.scope == "gossamer.proxy"
    assert client.resource == {
        "service.name": "web",
        "service.namespace": "default",
        "service.instance.id": "web-0",
    }
    a = client.attributes
    assert a["http.request.method"] == "GET"
    assert a["url.path"] == "/prices/1"
    assert a["url.scheme"] == "http"
    assert a["server.address"] == "pricing"
    assert a["server.port"] == 8080
    assert a["http.response.status_code"] == 503
    assert a["network.peer.address"] == "127.0.0.1"
    assert a["network.peer.port"] == 7001
    assert a["user_agent.original"] == "curl/8"
    assert a["http.route"] == "default"
    assert a["error.type"] == "connect-failure"
    assert a["gossamer.response_flag"] == "connect-failure"
    assert a["gossamer.upstream_cluster"] == "pricing.default"
    assert a["gossamer.upstream_endpoint"] == "127.0.0.1:7001"
    assert a["gossamer.source_identity"] == "spiffe://td/ns/default/sa/web"
    assert "gossamer.destination_identity" not in a
    assert a["gossamer.retries"] == 2
    assert a["gossamer.proxy_id"] == "web-0"
    assert a["gossamer.service"] == "web.default"
    assert a["gossamer.direction"] == "outbound"
    assert server.status == 0  # unset: a 200
    assert server.attributes["gossamer.direction"] == "inbound"


def test_an_unreachable_collector_fails_the_export_without_raising() -> None:
    """A collector that is not there makes export() report failure (counted by the proxy),
    never an exception into the export thread's loop."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    target = ExportTarget("http/protobuf", f"http://127.0.0.1:{port}", 0.5, "web", "ns", "w")
    exporter = make_exporter(target)
    try:
        assert not exporter.export(to_sdk_spans([_record()], 0.0, exporter.shared))
    finally:
        exporter.shutdown()
