"""The renderer's output passes `promtool check metrics` (Debian's prometheus package) in its corner
cases: escaped label values and help text, special float values, histograms, empty families."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from gossamer.telemetry.metrics import Registry

PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (scripts/install-system-deps)"
)


def check(exposition: bytes) -> str:
    """promtool's verdict; fails the test with its words unless the exposition passes."""
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, timeout=30
    )
    words = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, words
    return words


def test_escaped_values_special_floats_and_histograms_pass() -> None:
    registry = Registry()
    requests = registry.counter(
        "demo_requests_total",
        'Requests, by path "class" (a back\\slash,\nand a newline in the help).',
        ("route", "peer"),
    )
    requests.labels('ns/route#0 "quoted"', "spiffe://td/ns/a/sa/b").inc(3)
    requests.labels("back\\slash\nnewline", "").inc(0.5)
    requests.labels("ünïcode", "").inc()
    level = registry.gauge("demo_level_ratio", "A gauge at its special values.", ("kind",))
    level.labels("nan").set(float("nan"))
    level.labels("inf").set(float("inf"))
    level.labels("neg").set(float("-inf"))
    level.labels("small").set(1e-9)
    level.labels("big").set(1e300)
    sizes = registry.histogram("demo_payload_bytes", "Sizes.", ("direction",), (0.0, 256.0, 1024.0))
    sizes.labels("in").observe(0)
    sizes.labels("in").observe(300)
    sizes.labels("out").observe(1e12)
    registry.histogram("demo_wait_seconds", "An unlabelled histogram.").observe(0.3)
    registry.counter("demo_unused_total", "A family with no series yet.", ("x",))
    registry.gauge("demo_plain", "An unlabelled gauge.").set(-2)
    text = registry.render()
    assert b'route="ns/route#0 \\"quoted\\""' in text
    assert b'route="back\\\\slash\\nnewline"' in text
    assert b'demo_level_ratio{kind="nan"} NaN' in text
    assert b'demo_payload_bytes_bucket{direction="out",le="+Inf"} 1' in text
    check(text)


def test_an_empty_registry_passes() -> None:
    check(Registry().render())
