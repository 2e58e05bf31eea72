"""Tracing through real data planes on loopback: the trace headers the app gets, the spans a real
OTLP receiver gets (http/protobuf and gRPC), sampling, kept errors and the access log's traceId."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest
from test_access_log_dataplane import read_log
from test_dataplane import (
    Backend,
    Client,
    cluster,
    dead_address,
    echo,
    metric_value,
    run,
    snapshot,
    start_dataplane,
    vhost,
    wait_until,
)
from test_tracing_receiver import CLIENT, SERVER, STATUS_ERROR, Receiver, start_receiver

from gossamer import snapshot as snap
from gossamer.proxy.dataplane import DataPlane, SnapshotError
from gossamer.telemetry.tracing import extract

TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = b"00f067aa0ba902b7"
TRACEPARENT = b"traceparent: 00-" + TRACE + b"-" + SPAN + b"-01\r\n"


def traced(s: snap.Snapshot, tracing: snap.Tracing | None) -> snap.Snapshot:
    """`s` with this telemetry (re-sealed)."""
    telemetry = snap.Telemetry(tracing=tracing) if tracing is not None else None
    return snap.seal(msgspec.structs.replace(s, telemetry=telemetry))


def exporting(receiver: Receiver, sampling: float = 1.0, keep_errors: bool = True) -> snap.Tracing:
    exporter = snap.TracingExporter(
        protocol=receiver.protocol,  # type: ignore[arg-type]
        endpoint=receiver.endpoint,
        timeout=5.0,
    )
    return snap.Tracing(sampling=sampling, keep_errors=keep_errors, exporter=exporter)


async def pair(
    app: Backend, tracing: snap.Tracing | None, **settings: Any
) -> tuple[DataPlane, DataPlane, str]:
    """frontend (outbound) -> pricing (inbound) -> app, both sidecars with `tracing`."""
    pricing, pricing_in, _, _ = await start_dataplane(
        traced(snapshot([], [], app_port=app.port, service="pricing"), tracing), **settings
    )
    front, _, front_out, _ = await start_dataplane(
        traced(snapshot([vhost("pricing")], [cluster("pricing", [pricing_in])]), tracing),
        **settings,
    )
    for dp in (front, pricing):
        dp.tracing.interval = 0.02  # batches go out at once in tests
    return front, pricing, front_out


def app_headers(app: Backend, index: int = -1) -> dict[bytes, bytes]:
    return dict(app.seen[index].headers)


# --- propagation only (no exporter) --------------------------------------------------------------


def test_b3_in_leaves_with_w3c_too_and_w3c_in_leaves_with_b3_too() -> None:
    """Without an exporter nothing is recorded and no span id changes, but the app gets the
    trace in both forms: an app reading either keeps it."""

    async def main() -> None:
        app = await Backend(echo).start()
        _front, _pricing, out = await pair(app, None)
        client = await Client.open(out)
        r = await client.request(
            b"/p",
            b"pricing",
            headers=b"x-b3-traceid: "
            + TRACE
            + b"\r\nx-b3-spanid: "
            + SPAN
            + b"\r\nx-b3-sampled: 1\r\n",
        )
        assert r.status == 200
        h = app_headers(app)
        assert h[b"traceparent"] == b"00-" + TRACE + b"-" + SPAN + b"-01"
        assert h[b"x-b3-traceid"] == TRACE
        assert h[b"x-b3-spanid"] == SPAN
        r = await client.request(b"/p", b"pricing", headers=TRACEPARENT + b"tracestate: a=1\r\n")
        assert r.status == 200
        h = app_headers(app)
        assert h[b"traceparent"] == b"00-" + TRACE + b"-" + SPAN + b"-01"
        assert h[b"tracestate"] == b"a=1"
        assert (h[b"x-b3-traceid"], h[b"x-b3-spanid"], h[b"x-b3-sampled"]) == (TRACE, SPAN, b"1")
        r = await client.request(b"/p", b"pricing")
        assert r.status == 200
        h = app_headers(app)
        assert b"traceparent" not in h, "no context and no exporter: no trace is started"
        assert b"x-b3-traceid" not in h

    run(main())


# --- recording -----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_one_request_gives_a_client_and_a_server_span_in_one_trace(protocol: str) -> None:
    """A sampled request through two sidecars: the OTLP receiver gets the frontend's CLIENT span
    (child of the caller's span) and pricing's SERVER span (child of the CLIENT span), and the
    app's traceparent names the SERVER span as its parent."""
    receiver = start_receiver(protocol)

    async def main() -> None:
        app = await Backend(echo).start()
        front, pricing, out = await pair(app, exporting(receiver))
        client = await Client.open(out)
        r = await client.request(
            b"/prices/1?q=2", b"pricing", headers=TRACEPARENT + b"user-agent: test/1\r\n"
        )
        assert r.status == 200
        spans = await asyncio.to_thread(receiver.wait, 2)
        by_kind = {s.kind: s for s in spans}
        out_span, in_span = by_kind[CLIENT], by_kind[SERVER]
        assert out_span.trace_id == in_span.trace_id == TRACE.decode()
        assert out_span.parent_id == SPAN.decode()
        assert in_span.parent_id == out_span.span_id
        seen = extract(app.seen[-1].headers)
        assert seen is not None
        assert seen.trace_id == TRACE
        assert seen.span_id is not None
        assert seen.span_id.decode() == in_span.span_id
        h = app_headers(app)
        assert h[b"x-b3-spanid"].decode() == in_span.span_id
        assert h[b"x-b3-parentspanid"].decode() == out_span.span_id
        a = out_span.attributes
        assert out_span.name == "GET default"
        assert a["http.request.method"] == "GET"
        assert a["url.path"] == "/prices/1"
        assert a["server.address"] == "pricing"
        assert a["http.response.status_code"] == 200
        assert a["http.route"] == "default"
        assert a["user_agent.original"] == "test/1"
        assert a["gossamer.upstream_cluster"] == "pricing.default"
        assert a["gossamer.upstream_endpoint"] == a["network.peer.address"] + ":" + str(
            a["network.peer.port"]
        )
        assert a["gossamer.retries"] == 0
        assert a["gossamer.proxy_id"] == "frontend-0"
        assert a["gossamer.request_id"] == in_span.attributes["gossamer.request_id"]
        assert out_span.resource["service.name"] == "frontend"
        b = in_span.attributes
        assert b["gossamer.direction"] == "inbound"
        assert b["gossamer.upstream_cluster"].startswith("inbound|")
        assert b["network.peer.address"] == "127.0.0.1"
        assert in_span.resource["service.name"] == "pricing"
        assert out_span.start <= in_span.start <= in_span.end <= out_span.end
        # Counted on the loop once the export call returns (soon after the receiver has them).
        await wait_until(
            lambda: front.tracing.exported.value == pricing.tracing.exported.value == 1
        )

    try:
        run(main())
    finally:
        receiver.close()


def test_a_request_without_context_starts_a_trace_and_a_bad_header_is_ignored() -> None:
    """Recording, a request with no (or an invalid) trace header gets a new trace: a root CLIENT
    span, and the app sees that trace."""
    receiver = start_receiver("http/protobuf")

    async def main() -> None:
        app = await Backend(echo).start()
        _front, _pricing, out = await pair(app, exporting(receiver))
        client = await Client.open(out)
        r = await client.request(b"/p", b"pricing", headers=b"traceparent: 00-garbage\r\n")
        assert r.status == 200
        spans = await asyncio.to_thread(receiver.wait, 2)
        root = next(s for s in spans if s.kind == CLIENT)
        assert root.parent_id == ""
        assert root.trace_id != TRACE.decode()
        seen = extract(app.seen[-1].headers)
        assert seen is not None
        assert seen.trace_id is not None
        assert seen.trace_id.decode() == root.trace_id

    try:
        run(main())
    finally:
        receiver.close()


def test_unsampled_traces_record_only_their_errors() -> None:
    """Sampling 0%: a 200 records nothing; a request to a dead endpoint (503, connect-failure)
    is recorded anyway with an error status (keepErrors); with keepErrors off, nothing."""
    receiver = start_receiver("http/protobuf")

    async def main() -> None:
        app = await Backend(echo).start()
        front, _, front_out, registry = await start_dataplane(
            traced(
                snapshot(
                    [vhost("pricing"), vhost("gone")],
                    [cluster("pricing", [app.address]), cluster("gone", [dead_address()])],
                ),
                exporting(receiver, sampling=0.0),
            )
        )
        front.tracing.interval = 0.02
        client = await Client.open(front_out)
        assert (await client.request(b"/ok", b"pricing")).status == 200
        assert b"-00" in app_headers(app)[b"traceparent"], "the decision travels on"
        assert (await client.request(b"/bad", b"gone")).status == 503
        [span] = await asyncio.to_thread(receiver.wait, 1)
        assert span.attributes["url.path"] == "/bad"
        assert span.status == STATUS_ERROR
        assert span.attributes["gossamer.response_flag"] == "connect-failure"
        await wait_until(
            lambda: metric_value(registry, "gossamer_proxy_spans_exported_total") == 1.0
        )
        # keepErrors off: the next failure is not recorded.
        front.apply(
            traced(
                snapshot(
                    [vhost("gone")],
                    [cluster("gone", [dead_address()])],
                ),
                exporting(receiver, sampling=0.0, keep_errors=False),
            )
        )
        assert (await client.request(b"/bad2", b"gone")).status == 503
        assert not front.tracing.pending
        assert len(receiver.spans) == 1

    try:
        run(main())
    finally:
        receiver.close()


def test_a_full_queue_drops_spans_and_counts_them() -> None:
    """Spans beyond the queue's bound are dropped and counted, never held without limit."""
    receiver = start_receiver("http/protobuf")

    async def main() -> None:
        app = await Backend(echo).start()
        front, _, out, registry = await start_dataplane(
            traced(
                snapshot([vhost("pricing")], [cluster("pricing", [app.address])]),
                exporting(receiver),
            )
        )
        front.tracing.max_queue = 2
        front.tracing.interval = 3600.0  # nothing leaves until drain
        client = await Client.open(out)
        for _ in range(5):
            assert (await client.request(b"/p", b"pricing")).status == 200
        assert len(front.tracing.pending) == 2
        assert (
            metric_value(registry, 'gossamer_proxy_spans_dropped_total{reason="queue_full"}') == 3.0
        )
        client.close()
        await front.drain(1.0)  # drain exports what is queued
        assert front.tracing.exported.value == 2.0
        assert len(receiver.spans) == 2

    try:
        run(main())
    finally:
        receiver.close()


def test_access_log_trace_id_is_the_parsed_context(tmp_path: Path) -> None:
    """The access log's traceId comes from the context the connection parsed: a B3-only request
    has one, and a new trace (recording) has the id the spans carry."""
    receiver = start_receiver("http/protobuf")
    log = tmp_path / "access.log"

    async def main() -> None:
        app = await Backend(echo).start()
        front, _, out, _ = await start_dataplane(
            traced(
                snapshot([vhost("pricing")], [cluster("pricing", [app.address])]),
                exporting(receiver),
            ),
            access_log=str(log),
        )
        front.tracing.interval = 0.02
        client = await Client.open(out)
        await client.request(b"/b3", b"pricing", headers=b"b3: " + TRACE + b"-" + SPAN + b"-1\r\n")
        await client.request(b"/new", b"pricing")
        spans = await asyncio.to_thread(receiver.wait, 2)
        client.close()
        await front.drain(1.0)
        by_path = {rec["path"]: rec for rec in read_log(log)}
        assert by_path["/b3"]["traceId"] == TRACE.decode()
        new = next(s for s in spans if s.attributes["url.path"] == "/new")
        assert by_path["/new"]["traceId"] == new.trace_id
        # The single-B3 caller gets single B3 back, next to W3C and multi B3.
        b3 = app.seen[0].headers
        assert dict(b3)[b"b3"].startswith(TRACE + b"-")

    try:
        run(main())
    finally:
        receiver.close()


def test_a_snapshot_with_an_unusable_exporter_is_refused() -> None:
    async def main() -> None:
        dp, _, _, _ = await start_dataplane(snapshot([], []))
        bad = snap.Tracing(
            exporter=snap.TracingExporter(protocol="grpc", endpoint="no-port", timeout=1.0)
        )
        with pytest.raises(SnapshotError, match=r"telemetry\.tracing: exporter endpoint 'no-port'"):
            dp.apply(traced(snapshot([], []), bad))
        with pytest.raises(SnapshotError, match=r"sampling 2\.0 is not between 0 and 1"):
            dp.apply(traced(snapshot([], []), snap.Tracing(sampling=2.0)))
        assert not dp.tracing.recording

    run(main())
