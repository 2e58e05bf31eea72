"""docs/metrics.md against the metrics a sidecar really registers: every family documented once,
with its type and its label names, and nothing documented that does not exist."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from gossamer.proxy.agent import AgentMetrics
from gossamer.proxy.dataplane import DataPlane, ProxySettings
from gossamer.proxy.identity import IdentityMetrics
from gossamer.telemetry.metrics import Registry

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(gossamer_[a-z0-9_]+)` \| (counter|gauge|histogram) \| ([^|]*) \| .+ \|$")


def documented() -> dict[str, tuple[int, str, tuple[str, ...]]]:
    """name -> (line, type, label names) for every row of the docs' metric tables."""
    found: dict[str, tuple[int, str, tuple[str, ...]]] = {}
    for number, line in enumerate(DOC.read_text(encoding="utf-8").splitlines(), start=1):
        m = ROW.match(line)
        if m is None:
            continue
        name, kind, labels = m.groups()
        assert name not in found, f"docs/metrics.md:{number}: {name} documented twice"
        names = tuple(re.findall(r"`([a-z_]+)`", labels))
        found[name] = (number, kind, names)
    return found


def registered() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every family of a sidecar process: the data plane's, the agent's and the identity's."""

    async def build() -> Registry:
        registry = Registry()
        DataPlane(asyncio.get_running_loop(), ProxySettings(), registry)
        AgentMetrics(registry)
        IdentityMetrics(registry)
        return registry

    registry = asyncio.run(build())
    names = [
        line.split()[2]
        for line in registry.render().decode().splitlines()
        if line.startswith("# TYPE ")
    ]
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for name in names:
        metric = registry.get(name)
        assert metric is not None
        out[name] = (metric.type_name, metric.labelnames)
    return out


def test_every_family_is_documented_with_its_type_and_labels() -> None:
    docs = documented()
    real = registered()
    assert not real.keys() - docs.keys(), f"undocumented: {sorted(real.keys() - docs.keys())}"
    assert not docs.keys() - real.keys(), f"documented, not real: {sorted(docs.keys() - real)}"
    for name, (kind, labels) in real.items():
        line, doc_kind, doc_labels = docs[name]
        assert (doc_kind, doc_labels) == (kind, labels), f"docs/metrics.md:{line}: {name}"


def test_the_golden_metrics_are_the_contract() -> None:
    """The names and labels the CLI and dashboard read (OBSERVABILITY.md) do not drift."""
    real = registered()
    assert real["gossamer_requests_total"] == (
        "counter",
        (
            "direction",
            "source_service",
            "source_identity",
            "destination_service",
            "destination_identity",
            "route",
            "status_code",
            "response_flag",
        ),
    )
    assert real["gossamer_request_duration_seconds"] == (
        "histogram",
        ("direction", "source_service", "destination_service", "route", "status_class"),
    )
    edge = ("direction", "source_service", "destination_service")
    assert real["gossamer_request_bytes"] == ("histogram", edge)
    assert real["gossamer_response_bytes"] == ("histogram", edge)
    for name in ("opened", "closed"):
        assert real[f"gossamer_tcp_connections_{name}_total"] == ("counter", ("direction",))
    for name in ("received", "sent"):
        assert real[f"gossamer_tcp_{name}_bytes_total"] == ("counter", ("direction",))
