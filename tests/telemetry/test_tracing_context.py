"""Trace context propagation: W3C and B3 parsing, formatting, translation, ids and sampling."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossamer.telemetry import tracing as tc

TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = b"00f067aa0ba902b7"
PARENT = b"1111111111111111"

hex_ids = st.integers(min_value=1, max_value=2**128 - 1).map(lambda v: b"%032x" % v)
span_ids = st.integers(min_value=1, max_value=2**64 - 1).map(lambda v: b"%016x" % v)


# --- W3C ----------------------------------------------------------------------------------------


def test_traceparent_is_parsed() -> None:
    found = tc.parse_traceparent(b"00-" + TRACE + b"-" + SPAN + b"-01")
    assert found is not None
    assert (found.trace_id, found.span_id, found.sampled, found.fmt) == (TRACE, SPAN, True, "w3c")
    unsampled = tc.parse_traceparent(b"00-" + TRACE + b"-" + SPAN + b"-00")
    assert unsampled is not None
    assert unsampled.sampled is False
    # Flags other than "sampled" are ignored; upper case is lowered; spaces stripped.
    other = tc.parse_traceparent(b" 00-" + TRACE.upper() + b"-" + SPAN + b"-03 ")
    assert other is not None
    assert other.trace_id == TRACE
    assert other.sampled is True


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"garbage",
        b"00-" + b"0" * 32 + b"-" + SPAN + b"-01",  # all-zero trace id
        b"00-" + TRACE + b"-" + b"0" * 16 + b"-01",  # all-zero parent id
        b"ff-" + TRACE + b"-" + SPAN + b"-01",  # version ff is invalid
        b"00-" + TRACE[:-1] + b"g-" + SPAN + b"-01",  # not hex
        b"00-" + TRACE + b"-" + SPAN + b"-1",  # short flags
        b"00-" + TRACE + b"-" + SPAN + b"-01-extra",  # version 00 has exactly four fields
        b"00_" + TRACE + b"_" + SPAN + b"_01",
        b"0x-" + TRACE + b"-" + SPAN + b"-01",
    ],
)
def test_invalid_traceparent_is_ignored(value: bytes) -> None:
    assert tc.parse_traceparent(value) is None
    assert tc.extract([(b"traceparent", value)]) is None


def test_a_future_version_is_read_as_version_00() -> None:
    found = tc.parse_traceparent(b"cc-" + TRACE + b"-" + SPAN + b"-01-what-comes-next")
    assert found is not None
    assert found.trace_id == TRACE
    assert tc.parse_traceparent(b"cc-" + TRACE + b"-" + SPAN + b"-01x") is None


def test_tracestate_travels_with_a_valid_traceparent_only() -> None:
    headers = [
        (b"traceparent", b"00-" + TRACE + b"-" + SPAN + b"-01"),
        (b"tracestate", b"a=1"),
        (b"tracestate", b"b=2"),
    ]
    found = tc.extract(headers)
    assert found is not None
    assert found.tracestate == b"a=1,b=2"
    too_long = [headers[0], (b"tracestate", b"x=" + b"y" * 600)]
    found = tc.extract(too_long)
    assert found is not None
    assert found.tracestate is None


# --- B3 -----------------------------------------------------------------------------------------


def test_b3_single_forms() -> None:
    full = tc.parse_b3_single(TRACE + b"-" + SPAN + b"-1-" + PARENT)
    assert full is not None
    assert (full.trace_id, full.span_id, full.sampled, full.fmt) == (TRACE, SPAN, True, "b3")
    deferred = tc.parse_b3_single(TRACE + b"-" + SPAN)
    assert deferred is not None
    assert deferred.sampled is None
    debug = tc.parse_b3_single(TRACE + b"-" + SPAN + b"-d")
    assert debug is not None
    assert (debug.sampled, debug.debug) == (True, True)
    short = tc.parse_b3_single(b"a3ce929d0e0e4736-" + SPAN + b"-0")
    assert short is not None
    assert short.trace_id == b"0" * 16 + b"a3ce929d0e0e4736"  # 64-bit ids padded to 128
    assert short.sampled is False
    deny = tc.parse_b3_single(b"0")
    assert deny is not None
    assert (deny.trace_id, deny.sampled) == (None, False)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"x",
        TRACE,
        TRACE + b"-",
        TRACE + b"-" + SPAN + b"-2",
        TRACE + b"-" + SPAN + b"-1-zz",
        TRACE + b"-" + SPAN + b"-1-" + PARENT + b"-more",
        b"0" * 32 + b"-" + SPAN,
        TRACE + b"-" + b"0" * 16,
        b"abc-" + SPAN,
    ],
)
def test_invalid_b3_single_is_ignored(value: bytes) -> None:
    assert tc.parse_b3_single(value) is None
    assert tc.extract([(b"b3", value)]) is None


def test_b3_multi() -> None:
    headers = [
        (b"x-b3-traceid", TRACE),
        (b"x-b3-spanid", SPAN),
        (b"x-b3-parentspanid", PARENT),
        (b"x-b3-sampled", b"1"),
    ]
    found = tc.extract(headers)
    assert found is not None
    assert (found.trace_id, found.span_id, found.sampled, found.fmt) == (
        TRACE,
        SPAN,
        True,
        "b3multi",
    )
    debug = tc.extract([*headers[:2], (b"x-b3-flags", b"1")])
    assert debug is not None
    assert (debug.sampled, debug.debug) == (True, True)
    assert tc.extract(headers[:1]) is None  # a trace id without a span id
    assert tc.extract([(b"x-b3-traceid", b"nothex"), (b"x-b3-spanid", SPAN)]) is None
    lone = tc.extract([(b"x-b3-sampled", b"0")])
    assert lone is not None
    assert (lone.trace_id, lone.sampled) == (None, False)
    assert tc.extract([(b"x-b3-sampled", b"maybe")]) is None


def test_w3c_wins_over_b3_and_an_invalid_w3c_falls_back_to_b3() -> None:
    other = b"a" * 32
    both = [(b"traceparent", b"00-" + TRACE + b"-" + SPAN + b"-01"), (b"b3", other + b"-" + SPAN)]
    found = tc.extract(both)
    assert found is not None
    assert found.trace_id == TRACE
    broken = [(b"traceparent", b"00-broken"), (b"b3", other + b"-" + SPAN + b"-1")]
    found = tc.extract(broken)
    assert found is not None
    assert (found.trace_id, found.fmt) == (other, "b3")


# --- formatting and translation -----------------------------------------------------------------


def test_context_fields_carry_one_context_in_every_form() -> None:
    fields = tc.context_fields(
        TRACE, SPAN, True, parent_id=PARENT, tracestate=b"k=v", b3_single=True
    )
    assert fields == [
        (b"traceparent", b"00-" + TRACE + b"-" + SPAN + b"-01"),
        (b"tracestate", b"k=v"),
        (b"x-b3-traceid", TRACE),
        (b"x-b3-spanid", SPAN),
        (b"x-b3-parentspanid", PARENT),
        (b"x-b3-sampled", b"1"),
        (b"b3", TRACE + b"-" + SPAN + b"-1-" + PARENT),
    ]
    debug = dict(tc.context_fields(TRACE, SPAN, True, debug=True))
    assert debug[b"x-b3-flags"] == b"1"
    assert b"x-b3-sampled" not in debug


def test_inject_replaces_every_old_trace_field() -> None:
    headers = [
        (b"host", b"x"),
        (b"traceparent", b"00-old"),
        (b"x-b3-traceid", b"old"),
        (b"b3", b"old"),
        (b"tracestate", b"old=1"),
        (b"accept", b"*/*"),
    ]
    tc.inject(headers, tc.context_fields(TRACE, SPAN, False))
    assert headers[:2] == [(b"host", b"x"), (b"accept", b"*/*")]
    assert dict(headers)[b"traceparent"] == b"00-" + TRACE + b"-" + SPAN + b"-00"
    assert b"b3" not in dict(headers)
    assert b"tracestate" not in dict(headers)


@given(hex_ids, span_ids, st.booleans(), st.booleans())
def test_every_form_written_reads_back_as_the_same_context(
    trace: bytes, span: bytes, sampled: bool, single: bool
) -> None:
    """W3C -> fields -> each form alone extracts the same trace, span and decision."""
    fields = tc.context_fields(trace, span, sampled, parent_id=PARENT, b3_single=single)
    w3c = [f for f in fields if f[0] == b"traceparent"]
    multi = [f for f in fields if f[0].startswith(b"x-b3-")]
    forms = [w3c, multi] + ([[f for f in fields if f[0] == b"b3"]] if single else [])
    for form in forms:
        found = tc.extract(form)
        assert found is not None
        assert (found.trace_id, found.span_id, found.sampled) == (trace, span, sampled)


@given(hex_ids, span_ids)
def test_b3_in_translates_to_w3c_out(trace: bytes, span: bytes) -> None:
    found = tc.extract([(b"b3", trace + b"-" + span + b"-1")])
    assert found is not None
    assert found.trace_id is not None
    assert found.span_id is not None
    fields = dict(tc.context_fields(found.trace_id, found.span_id, bool(found.sampled)))
    again = tc.parse_traceparent(fields[b"traceparent"])
    assert again is not None
    assert (again.trace_id, again.span_id, again.sampled) == (trace, span, True)


@given(st.binary(max_size=80))
def test_garbage_never_raises(value: bytes) -> None:
    for name in (b"traceparent", b"b3", b"x-b3-traceid", b"x-b3-sampled", b"tracestate"):
        found = tc.extract([(name, value), (b"x-b3-spanid", value)])
        if found is not None and found.trace_id is not None:
            assert len(found.trace_id) == 32


# --- ids and sampling ---------------------------------------------------------------------------


def test_ids_are_hex_of_the_right_length_and_never_zero() -> None:
    ids = tc.IdSource(random.Random(7))
    traces = {ids.trace_id() for _ in range(200)}
    spans = {ids.span_id() for _ in range(200)}
    assert len(traces) == len(spans) == 200
    assert all(len(t) == 32 and int(t, 16) for t in traces)
    assert all(len(s) == 16 and int(s, 16) for s in spans)


def test_sampler_keeps_an_incoming_decision_and_samples_new_traces_by_ratio() -> None:
    rng = random.Random(1)
    sampler = tc.Sampler(0.25, True, rng.random)
    assert sampler.start(True) is True
    assert sampler.start(False) is False
    share = sum(sampler.start(None) for _ in range(4000)) / 4000
    assert 0.22 < share < 0.28
    assert tc.Sampler(0.0, True, rng.random).start(None) is False
    assert tc.Sampler(1.0, True, rng.random).start(None) is True
    with pytest.raises(ValueError, match="between 0 and 1"):
        tc.Sampler(1.5, True, rng.random)


def test_sampler_keeps_errors_at_the_end_when_told_to() -> None:
    keep = tc.Sampler(0.0, True, random.random)
    assert keep.record(True, 200, None)
    assert not keep.record(False, 200, None)
    assert keep.record(False, 503, None)
    assert keep.record(False, 404, "no-route")  # a response the mesh flagged
    drop = tc.Sampler(0.0, False, random.random)
    assert not drop.record(False, 503, "connect-failure")
    assert drop.record(True, 503, None)
