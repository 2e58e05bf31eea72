"""Tests for the metrics registry and its Prometheus text rendering."""

from __future__ import annotations

import re

import pytest

from gossamer.telemetry.metrics import Counter, Registry, format_value

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            nxt = value[i + 1]
            out.append({"n": "\n", "\\": "\\", '"': '"'}[nxt])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse(
    text: bytes,
) -> tuple[dict[str, tuple[str, str]], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """A strict reader of text format 0.0.4: returns {name: (type, help)} and the samples."""
    meta: dict[str, tuple[str, str]] = {}
    helps: dict[str, str] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    decoded = text.decode("utf-8")
    assert decoded.endswith("\n")
    for line in decoded.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            helps[name] = help_text.replace("\\n", "\n").replace("\\\\", "\\")
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name in helps, f"TYPE before HELP for {name}"
            meta[name] = (kind, helps[name])
        else:
            m = _SAMPLE.match(line)
            assert m, f"bad sample line {line!r}"
            labels: list[tuple[str, str]] = []
            if m.group(3):
                rest = m.group(3)
                pos = 0
                while pos < len(rest):
                    lm = _LABEL.match(rest, pos)
                    assert lm, f"bad labels in {line!r}"
                    labels.append((lm.group(1), _unescape(lm.group(2))))
                    pos = lm.end()
            value = m.group(4)
            samples[(m.group(1), frozenset(labels))] = float(value.replace("+Inf", "inf"))
    return meta, samples


def test_counter_children_are_cached_and_rendered() -> None:
    """labels() returns the same child each time; render shows each series once."""
    reg = Registry()
    requests = reg.counter("gossamer_requests_total", "Requests handled.", ("direction", "class"))
    child = requests.labels("outbound", "2xx")
    assert requests.labels("outbound", "2xx") is child
    child.inc()
    child.inc(2)
    requests.labels("inbound", "5xx").inc()
    meta, samples = parse(reg.render())
    assert meta["gossamer_requests_total"] == ("counter", "Requests handled.")
    key = frozenset({("direction", "outbound"), ("class", "2xx")})
    assert samples[("gossamer_requests_total", key)] == 3
    key5 = frozenset({("direction", "inbound"), ("class", "5xx")})
    assert samples[("gossamer_requests_total", key5)] == 1


def test_label_values_and_help_are_escaped() -> None:
    """Quotes, backslashes and newlines in label values and HELP survive a round trip."""
    reg = Registry()
    g = reg.gauge("weird", 'Help with \\ and\nnewline "quoted".', ("v",))
    nasty = 'a"b\\c\nd'
    g.labels(nasty).set(1.5)
    meta, samples = parse(reg.render())
    assert meta["weird"] == ("gauge", 'Help with \\ and\nnewline "quoted".')
    assert samples[("weird", frozenset({("v", nasty)}))] == 1.5


def test_histogram_buckets_are_cumulative() -> None:
    """Bucket `le` is inclusive, buckets are cumulative, +Inf equals count, sum is exact."""
    reg = Registry()
    h = reg.histogram("latency_seconds", "Latency.", ("route",), buckets=(0.1, 0.5, 1.0))
    child = h.labels("r1")
    for v in (0.05, 0.1, 0.3, 0.9, 7.0):
        child.observe(v)
    _, samples = parse(reg.render())

    def bucket(le: str) -> float:
        return samples[("latency_seconds_bucket", frozenset({("route", "r1"), ("le", le)}))]

    assert bucket("0.1") == 2
    assert bucket("0.5") == 3
    assert bucket("1") == 4
    assert bucket("+Inf") == 5
    assert samples[("latency_seconds_count", frozenset({("route", "r1")}))] == 5
    assert samples[("latency_seconds_sum", frozenset({("route", "r1")}))] == pytest.approx(8.35)


def test_unlabelled_metrics_and_collectors() -> None:
    """A metric without labels is used directly; collectors refresh gauges before a render."""
    reg = Registry()
    c = reg.counter("applies_total", "Applies.")
    c.inc()
    g = reg.gauge("connections", "Open connections.")
    state = {"n": 0}
    reg.add_collector(lambda: g.set(state["n"]))
    state["n"] = 7
    _, samples = parse(reg.render())
    assert samples[("applies_total", frozenset())] == 1
    assert samples[("connections", frozenset())] == 7


def test_bad_definitions_raise_clear_errors() -> None:
    """Invalid names, duplicates and wrong label counts are refused with the metric's name."""
    reg = Registry()
    reg.counter("a_total", "A.")
    with pytest.raises(ValueError, match="already registered"):
        reg.counter("a_total", "A again.")
    with pytest.raises(ValueError, match="not a valid Prometheus name"):
        Counter("9bad", "x")
    c = reg.counter("b_total", "B.", ("x", "y"))
    with pytest.raises(ValueError, match=r"b_total: expected 2 label values"):
        c.labels("only-one")
    with pytest.raises(ValueError, match="use labels"):
        c.inc()
    with pytest.raises(ValueError, match="buckets must be increasing"):
        reg.histogram("h", "H.", buckets=(1.0, 0.5))


def test_format_value() -> None:
    """Integral floats print as integers; infinities and NaN use Prometheus spellings."""
    assert format_value(3.0) == "3"
    assert format_value(0.25) == "0.25"
    assert format_value(float("inf")) == "+Inf"
    assert format_value(float("-inf")) == "-Inf"
    assert format_value(float("nan")) == "NaN"
