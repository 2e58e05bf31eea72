"""Counters, gauges and fixed-bucket histograms, rendered as Prometheus text format 0.0.4.

Label names are fixed when a metric is created; `metric.labels(*values)` returns a child that is
cached, so the request path looks a child up once (or keeps it) and then calls a cheap `inc()` /
`observe()` that only touches a slot. Rendering happens on scrape, off the request path.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    inner = ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + inner + "}"


class CounterChild:
    """One labelled series of a counter."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class GaugeChild:
    """One labelled series of a gauge."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class HistogramChild:
    """One labelled series of a histogram: per-bucket counts (not cumulative), sum and count."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is the +Inf overflow
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # Prometheus buckets are "less than or equal": bisect_left finds the first bound >= value.
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


ChildT = TypeVar("ChildT", CounterChild, GaugeChild, HistogramChild)


class _Metric(Generic[ChildT]):
    type_name = ""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME.match(name):
            raise ValueError(f"metric name {name!r} is not a valid Prometheus name")
        for label in labelnames:
            if not _LABEL.match(label) or label.startswith("__"):
                raise ValueError(f"metric {name}: label name {label!r} is not valid")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"metric {name}: duplicate label names in {list(labelnames)}")
        self.name = name
        self.help = help
        self.labelnames: tuple[str, ...] = tuple(labelnames)
        self._children: dict[tuple[str, ...], ChildT] = {}
        # A metric without labels has one series, created up front so `metric.inc()` is direct.
        self._default: ChildT | None = self.labels() if not self.labelnames else None

    def _new_child(self) -> ChildT:
        raise NotImplementedError

    def labels(self, *values: str) -> ChildT:
        """The child for these label values (positional, in the order of `labelnames`), cached."""
        child = self._children.get(values)
        if child is not None:
            return child
        if len(values) != len(self.labelnames):
            raise ValueError(
                f"metric {self.name}: expected {len(self.labelnames)} label values "
                f"{list(self.labelnames)}, got {len(values)}"
            )
        child = self._new_child()
        self._children[values] = child
        return child

    def remove(self, *values: str) -> None:
        self._children.pop(values, None)

    def clear(self) -> None:
        """Drop every labelled series (e.g. an info metric whose labels changed)."""
        self._children.clear()
        if not self.labelnames:
            self._default = self.labels()

    def _only(self) -> ChildT:
        if self._default is None:
            raise ValueError(f"metric {self.name} has labels {list(self.labelnames)}; use labels()")
        return self._default

    def render_into(self, out: list[str]) -> None:
        out.append(f"# HELP {self.name} {escape_help(self.help)}")
        out.append(f"# TYPE {self.name} {self.type_name}")
        for values, child in sorted(self._children.items()):
            self._render_child(out, _label_text(self.labelnames, values), values, child)

    def _render_child(
        self, out: list[str], labels: str, values: tuple[str, ...], child: ChildT
    ) -> None:
        raise NotImplementedError


class Counter(_Metric[CounterChild]):
    """A value that only goes up (requests, errors, bytes)."""

    type_name = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def _render_child(
        self, out: list[str], labels: str, values: tuple[str, ...], child: CounterChild
    ) -> None:
        out.append(f"{self.name}{labels} {format_value(child.value)}")

    def inc(self, amount: float = 1.0) -> None:
        self._only().value += amount

    @property
    def value(self) -> float:
        return self._only().value


class Gauge(_Metric[GaugeChild]):
    """A value that goes up and down (active connections, readiness)."""

    type_name = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild()

    def _render_child(
        self, out: list[str], labels: str, values: tuple[str, ...], child: GaugeChild
    ) -> None:
        out.append(f"{self.name}{labels} {format_value(child.value)}")

    def set(self, value: float) -> None:
        self._only().value = value

    def inc(self, amount: float = 1.0) -> None:
        self._only().value += amount

    def dec(self, amount: float = 1.0) -> None:
        self._only().value -= amount

    @property
    def value(self) -> float:
        return self._only().value


class Histogram(_Metric[HistogramChild]):
    """Observations counted into fixed buckets (latencies, sizes)."""

    type_name = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"histogram {name}: buckets must be increasing and not empty")
        if "le" in labelnames:
            raise ValueError(f"histogram {name}: 'le' is reserved for bucket bounds")
        self.bounds = bounds
        super().__init__(name, help, labelnames)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self._only().observe(value)

    def _render_child(
        self, out: list[str], labels: str, values: tuple[str, ...], child: HistogramChild
    ) -> None:
        base = ",".join(
            f'{n}="{escape_label_value(v)}"' for n, v in zip(self.labelnames, values, strict=True)
        )
        sep = "," if base else ""
        running = 0
        for bound, n in zip(self.bounds, child.counts, strict=False):
            running += n
            out.append(f'{self.name}_bucket{{{base}{sep}le="{format_value(bound)}"}} {running}')
        out.append(f'{self.name}_bucket{{{base}{sep}le="+Inf"}} {child.count}')
        out.append(f"{self.name}_sum{labels} {format_value(child.sum)}")
        out.append(f"{self.name}_count{labels} {child.count}")


AnyMetric = Counter | Gauge | Histogram


class Registry:
    """The metrics of one process, in registration order, rendered together on scrape."""

    def __init__(self) -> None:
        self._metrics: dict[str, AnyMetric] = {}
        self._collectors: list[Callable[[], None]] = []

    def register(self, metric: AnyMetric) -> None:
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help, labelnames)
        self.register(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help, labelnames)
        self.register(metric)
        return metric

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        metric = Histogram(name, help, labelnames, buckets)
        self.register(metric)
        return metric

    def get(self, name: str) -> AnyMetric | None:
        return self._metrics.get(name)

    def add_collector(self, collect: Callable[[], None]) -> None:
        """Run `collect` before each render, to refresh gauges cheaper to read on scrape."""
        self._collectors.append(collect)

    def render(self) -> bytes:
        for collect in self._collectors:
            collect()
        out: list[str] = []
        for metric in self._metrics.values():
            metric.render_into(out)
        out.append("")
        return "\n".join(out).encode("utf-8")
