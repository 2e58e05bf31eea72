"""The export thread's direct OTLP encoding: the same request the SDK's encoder makes of SDK
spans, delivered by the SDK exporters' own senders over both protocols."""

from __future__ import annotations

from typing import Any

import pytest
from test_tracing_receiver import CLIENT, SERVER, STATUS_ERROR, _record, start_receiver

from gossamer.proxy.tracing import (
    ExportTarget,
    _Shared,
    encode_request,
    make_exporter,
    to_sdk_spans,
)

trace_encoder = pytest.importorskip("opentelemetry.exporter.otlp.proto.common.trace_encoder")

BATCH = [
    _record(),  # outbound, 503 connect-failure, with a parent
    _record(span_id=b"2222222222222222", outbound=False, status=200, peer="[::1]:50000"),
    _record(span_id=b"3333333333333333", parent_id=None, status=0, flag=None, host=b""),
    _record(span_id=b"4444444444444444", status=502, flag=None, route=None, agent=None),
    _record(span_id=b"5555555555555555", status=0, flag="downstream-reset", cluster=None),
    _record(span_id=b"6666666666666666", scheme=b"https", host=b"api.example", retries=0),
    _record(span_id=b"7777777777777777", sampled=False, destination="spiffe://td/ns/a/sa/b"),
]


def _normalized(request: Any) -> Any:
    """The request with every span's attributes sorted by key (their order carries nothing)."""
    copy = type(request).FromString(request.SerializeToString())
    for rs in copy.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                kvs = sorted(span.attributes, key=lambda kv: kv.key)
                del span.attributes[:]
                span.attributes.extend(kvs)
    return copy


def test_direct_encoding_matches_the_sdk_encoder() -> None:
    """Every field the SDK would send (ids, parent, flags, kind, times, attributes, status,
    resource, scope) is the same, for spans with and without parent, error, route, host."""
    shared = _Shared(ExportTarget("grpc", "127.0.0.1:1", 5.0, "web", "default", "web-0"))
    for _ in range(2):  # the second time from the attribute cache
        direct = encode_request(BATCH, 1_000_000.0, shared)
        sdk = trace_encoder.encode_spans(to_sdk_spans(BATCH, 1_000_000.0, shared))
        assert _normalized(direct) == _normalized(sdk)
    assert shared.encoded, "repeating attributes are encoded once"


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_send_delivers_a_batch_through_the_sdk_sender(protocol: str) -> None:
    receiver = start_receiver(protocol)
    exporter = make_exporter(ExportTarget(protocol, receiver.endpoint, 5.0, "web", "ns", "web-0"))
    try:
        assert exporter._direct, "the installed SDK's sender was not found: the slow path is used"
        assert exporter.send(BATCH[:2], 1_000_000.0)
        spans = sorted(receiver.wait(2), key=lambda s: s.kind, reverse=True)
    finally:
        exporter.shutdown()
        receiver.close()
    assert [s.kind for s in spans] == [CLIENT, SERVER]
    assert spans[0].status == STATUS_ERROR
    assert spans[0].attributes["gossamer.response_flag"] == "connect-failure"
    assert spans[1].attributes["network.peer.address"] == "::1"
    assert spans[0].resource["service.instance.id"] == "web-0"
    assert spans[0].start == 1_000_100_000_000_000


def test_send_to_an_unreachable_collector_fails_without_raising() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    target = ExportTarget("http/protobuf", f"http://127.0.0.1:{port}", 0.5, "web", "ns", "w")
    exporter = make_exporter(target)
    try:
        assert not exporter.send(BATCH[:1], 0.0)
    finally:
        exporter.shutdown()
