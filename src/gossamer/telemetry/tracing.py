"""Trace context propagation (W3C Trace Context and B3) and the sampling decision; no I/O.

A request carries its trace in one of three forms: W3C `traceparent` (+ `tracestate`), B3 in one
`b3` field, or B3 in several `x-b3-*` fields. `extract` reads whichever is valid (W3C first, then
single B3, then multi B3) into an `Incoming`; anything malformed counts as absent, never as an
error, so a bad header starts a new trace instead of failing the request. `inject` writes a
context back in every form, so an app that reads only W3C and one that reads only B3 both see the
same trace: that is the translation between the formats.

Ids are lower-case hex bytes as they appear on the wire: 32 digits for a trace id (a 64-bit B3
trace id is left-padded with zeros, as OpenTelemetry does), 16 for a span id. `IdSource` draws
them from a PRNG seeded from os.urandom (ids must be unique, not secret; no syscall per id).

`Sampler` holds the two decisions: at the start of a trace (an incoming decision is kept, a new
trace is sampled with the configured ratio) and at the end of a span (an unsampled span is still
recorded when it failed and errors are kept).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

Headers = list[tuple[bytes, bytes]]

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
B3 = b"b3"
B3_TRACE_ID = b"x-b3-traceid"
B3_SPAN_ID = b"x-b3-spanid"
B3_PARENT_SPAN_ID = b"x-b3-parentspanid"
B3_SAMPLED = b"x-b3-sampled"
B3_FLAGS = b"x-b3-flags"
# Every field a context is carried in: `inject` replaces them all.
TRACE_FIELDS = frozenset(
    (TRACEPARENT, TRACESTATE, B3, B3_TRACE_ID, B3_SPAN_ID, B3_PARENT_SPAN_ID, B3_SAMPLED, B3_FLAGS)
)

_ODD = frozenset(b"13579bdf")  # a flags byte's last hex digit with the "sampled" bit set
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
_PAD64 = b"0" * 16
MAX_TRACESTATE = 512  # W3C: at least 512 bytes must be propagated; longer ones we drop
# version-traceid-parentid-flags, then (versions above 00 only) "-" and whatever comes next.
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.S)
_TRACE_ID = re.compile(rb"[0-9a-f]{16}(?:[0-9a-f]{16})?")
_SPAN_ID = re.compile(rb"[0-9a-f]{16}")


def _trace_id(value: bytes) -> bytes | None:
    """A B3 trace id (16 or 32 hex digits) as 32 digits, or None."""
    value = value.lower()
    if _TRACE_ID.fullmatch(value) is None:
        return None
    if len(value) == 16:
        value = _PAD64 + value
    return None if value == _ZERO_TRACE else value


def _span_id(value: bytes) -> bytes | None:
    value = value.lower()
    if _SPAN_ID.fullmatch(value) is None or value == _ZERO_SPAN:
        return None
    return value


class Incoming:
    """The trace context a request arrived with.

    `trace_id` and `span_id` are None when the request carried only a sampling decision (B3's
    `b3: 0` or a lone `x-b3-sampled`). `sampled` is None when it carried no decision (B3 lets the
    receiver decide). `fmt` says which form it was read from: "w3c", "b3" or "b3multi".
    """

    __slots__ = ("debug", "fmt", "sampled", "span_id", "trace_id", "tracestate")

    def __init__(
        self,
        trace_id: bytes | None,
        span_id: bytes | None,
        sampled: bool | None,
        fmt: str,
        *,
        debug: bool = False,
        tracestate: bytes | None = None,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.sampled = sampled
        self.fmt = fmt
        self.debug = debug
        self.tracestate = tracestate

    def __repr__(self) -> str:
        return (
            f"Incoming({self.fmt}, trace={self.trace_id!r}, span={self.span_id!r}, "
            f"sampled={self.sampled})"
        )


def parse_traceparent(value: bytes) -> Incoming | None:
    """A W3C `traceparent` ("00-<trace-id>-<parent-id>-<flags>"), or None when invalid.

    Versions above 00 are read as 00 (the spec's forward compatibility: the first four fields,
    then either the end or a "-"); version ff, all-zero ids and non-hex digits are invalid.
    Upper-case hex is accepted and lower-cased (the spec asks for lower case; being lenient here
    keeps the trace of a sloppy client).
    """
    m = _TRACEPARENT.fullmatch(value)
    if m is None:
        m = _TRACEPARENT.fullmatch(value.strip().lower())
        if m is None:
            return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == b"ff" or (rest is not None and version == b"00"):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return Incoming(trace_id, span_id, flags[1] in _ODD, "w3c")


def _b3_decision(value: bytes) -> tuple[bool, bool] | None:
    """A B3 sampling state: (sampled, debug), or None when invalid."""
    if value == b"1" or value == b"true":
        return True, False
    if value == b"0" or value == b"false":
        return False, False
    if value == b"d":
        return True, True
    return None


def parse_b3_single(value: bytes) -> Incoming | None:
    """A single `b3` field: "<trace>-<span>[-<sampling>[-<parent>]]" or a lone sampling state."""
    parts = value.strip().lower().split(b"-")
    if len(parts) == 1:
        decision = _b3_decision(parts[0])
        if decision is None:
            return None
        return Incoming(None, None, decision[0], "b3", debug=decision[1])
    if len(parts) > 4:
        return None
    trace_id = _trace_id(parts[0])
    span_id = _span_id(parts[1])
    if trace_id is None or span_id is None:
        return None
    sampled: bool | None = None
    debug = False
    if len(parts) >= 3:
        decision = _b3_decision(parts[2])
        if decision is None:
            return None
        sampled, debug = decision
    if len(parts) == 4 and _span_id(parts[3]) is None:
        return None
    return Incoming(trace_id, span_id, sampled, "b3", debug=debug)


def parse_b3_multi(
    trace: bytes | None, span: bytes | None, sampled_field: bytes | None, flags: bytes | None
) -> Incoming | None:
    """The `x-b3-*` fields (each None when absent); None when they hold no valid context."""
    debug = flags is not None and flags.strip() == b"1"
    sampled: bool | None = True if debug else None
    if sampled is None and sampled_field is not None:
        decision = _b3_decision(sampled_field.strip().lower())
        if decision is not None:
            sampled = decision[0]
    if trace is None and span is None:
        if sampled is None:
            return None
        return Incoming(None, None, sampled, "b3multi", debug=debug)
    if trace is None or span is None:
        return None
    trace_id = _trace_id(trace.strip())
    span_id = _span_id(span.strip())
    if trace_id is None or span_id is None:
        return None
    return Incoming(trace_id, span_id, sampled, "b3multi", debug=debug)


def extract(headers: Headers) -> Incoming | None:
    """The context `headers` carry (names lower-case): W3C if valid, else single B3, else multi B3.

    A request with a valid context in none of them, or no context, gives None: a new trace.
    """
    traceparent = tracestate = single = trace = span = sampled = flags = None
    for name, value in headers:
        first = name[0]
        if first == 116:  # "t"
            if name == TRACEPARENT:
                if traceparent is None:
                    traceparent = value
            elif name == TRACESTATE:
                # Several fields are one list (RFC 9110 field combination).
                tracestate = value if tracestate is None else tracestate + b"," + value
        elif first == 120:  # "x"
            if name[:5] == b"x-b3-":
                if name == B3_TRACE_ID:
                    trace = value
                elif name == B3_SPAN_ID:
                    span = value
                elif name == B3_SAMPLED:
                    sampled = value
                elif name == B3_FLAGS:
                    flags = value
        elif name == B3:
            single = value
    if traceparent is not None:
        found = parse_traceparent(traceparent)
        if found is not None:
            if tracestate is not None:
                tracestate = tracestate.strip()
                if tracestate and len(tracestate) <= MAX_TRACESTATE:
                    found.tracestate = tracestate
            return found
    if single is not None:
        found = parse_b3_single(single)
        if found is not None:
            return found
    return parse_b3_multi(trace, span, sampled, flags)


def format_traceparent(trace_id: bytes, span_id: bytes, sampled: bool) -> bytes:
    return b"".join((b"00-", trace_id, b"-", span_id, b"-01" if sampled else b"-00"))


def format_b3_single(
    trace_id: bytes, span_id: bytes, sampled: bool, debug: bool, parent_id: bytes | None
) -> bytes:
    state = b"d" if debug else b"1" if sampled else b"0"
    parts = [trace_id, span_id, state]
    if parent_id is not None:
        parts.append(parent_id)
    return b"-".join(parts)


def context_fields(
    trace_id: bytes,
    span_id: bytes,
    sampled: bool,
    *,
    parent_id: bytes | None = None,
    debug: bool = False,
    tracestate: bytes | None = None,
    b3_single: bool = False,
) -> list[tuple[bytes, bytes]]:
    """The fields carrying one context in every form: W3C, multi B3 and, when asked, single B3.

    `span_id` is the span the receiver's spans will be children of; `parent_id` that span's own
    parent (B3's `x-b3-parentspanid`), None for a root.
    """
    fields = [(TRACEPARENT, format_traceparent(trace_id, span_id, sampled))]
    if tracestate is not None:
        fields.append((TRACESTATE, tracestate))
    fields += ((B3_TRACE_ID, trace_id), (B3_SPAN_ID, span_id))
    if parent_id is not None:
        fields.append((B3_PARENT_SPAN_ID, parent_id))
    if debug:
        fields.append((B3_FLAGS, b"1"))
    else:
        fields.append((B3_SAMPLED, b"1" if sampled else b"0"))
    if b3_single:
        fields.append((B3, format_b3_single(trace_id, span_id, sampled, debug, parent_id)))
    return fields


def inject(headers: Headers, fields: list[tuple[bytes, bytes]], *, replace: bool = True) -> None:
    """Put `fields` (from `context_fields`) into `headers`, first removing every trace field
    there (`replace`; skip it when the caller knows there is none)."""
    if replace:
        headers[:] = [h for h in headers if h[0] not in TRACE_FIELDS]
    headers += fields


class IdSource:
    """Random trace and span ids as hex bytes, never all zeros."""

    __slots__ = ("_bits",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._bits = (rng or random.Random()).getrandbits

    def trace_id(self) -> bytes:
        value = self._bits(128)
        while not value:
            value = self._bits(128)
        return b"%032x" % value

    def span_id(self) -> bytes:
        value = self._bits(64)
        while not value:
            value = self._bits(64)
        return b"%016x" % value


class Sampler:
    """Which traces are recorded.

    Args:
        ratio: the share of new traces sampled, 0 to 1.
        keep_errors: record a failed span (5xx, or a response the mesh flagged) even when its
            trace is not sampled.
        rand: uniform floats in [0, 1), for the ratio.
    """

    __slots__ = ("keep_errors", "rand", "ratio")

    def __init__(self, ratio: float, keep_errors: bool, rand: Callable[[], float]) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"sampling ratio {ratio!r} is not between 0 and 1")
        self.ratio = ratio
        self.keep_errors = keep_errors
        self.rand = rand

    def start(self, incoming: bool | None) -> bool:
        """The decision a trace carries on: the incoming one when there is one, else the ratio's."""
        if incoming is not None:
            return incoming
        ratio = self.ratio
        return ratio >= 1.0 or (ratio > 0.0 and self.rand() < ratio)

    def record(self, sampled: bool, status: int, flag: str | None) -> bool:
        """Whether a finished span is recorded: sampled, or an error kept by `keep_errors`."""
        return sampled or (self.keep_errors and (status >= 500 or flag is not None))
