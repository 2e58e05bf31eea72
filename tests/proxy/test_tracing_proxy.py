"""ProxyTracer on its own: header rewriting per hop, the propagate-only mode, and the promise that
a sidecar that does not export spans never imports OpenTelemetry."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import Iterator

import pytest

from gossamer import snapshot as snap
from gossamer.http.message import RequestHead
from gossamer.proxy.tracing import ProxyTracer, TracingConfig
from gossamer.telemetry.metrics import Registry
from gossamer.telemetry.tracing import extract

TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = b"00f067aa0ba902b7"
B3 = f"{TRACE.decode()}-{SPAN.decode()}-1"


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def tracer(loop: asyncio.AbstractEventLoop, config: TracingConfig | None = None) -> ProxyTracer:
    t = ProxyTracer(loop, Registry(), lambda: None, rng=random.Random(3))
    if config is not None:
        t.install(config)
    return t


def recording(sampling: float = 1.0) -> TracingConfig:
    s = snap.Snapshot(
        proxy=snap.ProxyIdentity(proxy_id="web-0", service="web"),
        telemetry=snap.Telemetry(
            tracing=snap.Tracing(
                sampling=sampling,
                exporter=snap.TracingExporter(endpoint="http://127.0.0.1:4318"),
            )
        ),
    )
    return ProxyTracer.prepare(s)


def head(*headers: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(b"GET", b"/p", headers=[(b"host", b"web"), *headers])


def test_each_hop_becomes_the_parent_of_the_next(loop: asyncio.AbstractEventLoop) -> None:
    """Recording: the forwarded fields name this hop's new span, with the incoming span as its
    parent, the trace id and decision unchanged; old fields are gone, other headers stay."""
    t = tracer(loop, recording(sampling=0.0))
    h = head((b"traceparent", b"00-" + TRACE + b"-" + SPAN + b"-01"), (b"accept", b"*/*"))
    trace = t.begin(h, True, True)
    assert trace is not None
    assert (trace.trace_id, trace.parent_id, trace.sampled) == (TRACE, SPAN, True)
    assert trace.span_id is not None
    assert trace.span_id != SPAN
    fields = dict(h.headers)
    assert fields[b"traceparent"] == b"00-" + TRACE + b"-" + trace.span_id + b"-01"
    assert fields[b"x-b3-parentspanid"] == SPAN
    assert fields[b"accept"] == b"*/*"
    assert [k for k, _ in h.headers].count(b"traceparent") == 1
    # The next hop reads this hop's span as its parent.
    again = t.begin(h, True, False)
    assert again is not None
    assert again.parent_id == trace.span_id


def test_a_lone_b3_decision_starts_a_trace_that_keeps_it(loop: asyncio.AbstractEventLoop) -> None:
    t = tracer(loop, recording(sampling=1.0))
    h = head((b"x-b3-sampled", b"0"))
    trace = t.begin(h, True, True)
    assert trace is not None
    assert trace.sampled is False
    assert trace.parent_id is None
    found = extract(h.headers)
    assert found is not None
    assert (found.trace_id, found.sampled) == (trace.trace_id, False)


def test_propagate_only_changes_no_id_and_starts_no_trace(loop: asyncio.AbstractEventLoop) -> None:
    t = tracer(loop)
    assert not t.recording
    assert t.begin(head(), False, True) is None
    assert t.begin(head((b"x-b3-sampled", b"1")), True, True) is None  # no ids: nothing to add
    h = head((b"b3", TRACE + b"-" + SPAN + b"-1"), (b"traceparent", b"junk"))
    trace = t.begin(h, True, True)
    assert trace is not None
    assert trace.tracer is None  # nothing is recorded at the end
    fields = dict(h.headers)
    assert fields[b"b3"] == TRACE + b"-" + SPAN + b"-1"
    assert fields[b"traceparent"] == b"00-" + TRACE + b"-" + SPAN + b"-01"


def test_a_sidecar_that_does_not_export_never_imports_opentelemetry() -> None:
    """A data plane applying a Snapshot with tracing but no exporter, and serving traced
    requests through the tracer, has no OpenTelemetry, gRPC or protobuf module loaded."""
    code = (
        "import asyncio, sys\n"
        "from gossamer import snapshot as snap\n"
        "from gossamer.http.message import RequestHead\n"
        "from gossamer.proxy.dataplane import DataPlane, ProxySettings\n"
        "from gossamer.telemetry.metrics import Registry\n"
        "loop = asyncio.new_event_loop()\n"
        "dp = DataPlane(loop, ProxySettings(), Registry())\n"
        "dp.apply(snap.seal(snap.Snapshot(proxy=snap.ProxyIdentity(proxy_id='a', service='a'),"
        " telemetry=snap.Telemetry(tracing=snap.Tracing(sampling=1.0)))))\n"
        f"h = RequestHead(b'GET', b'/', headers=[(b'b3', b'{B3}')])\n"
        "assert dp.tracing.begin(h, True, True) is not None\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('opentelemetry', 'grpc', 'google', 'requests'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=30)
    assert out.stdout.decode().strip() == "[]"
