"""The propagation benchmark's pure parts: percentiles, the ACK condition, the route change."""

from typing import Any

import propagate
import pytest

ROUTE: dict[str, Any] = {
    "apiVersion": "gossamer.dev/v1alpha1",
    "kind": "HTTPRoute",
    "metadata": {"name": "pricing", "namespace": "default"},
    "spec": {
        "parentRefs": [{"name": "pricing"}],
        "rules": [
            {
                "backendRefs": [
                    {"name": "pricing", "subset": "v1", "weight": 90},
                    {"name": "pricing", "subset": "v2", "weight": 10},
                ]
            }
        ],
    },
}


def test_nearest_rank_percentiles() -> None:
    samples = [float(i) for i in range(20, 0, -1)]
    assert propagate.percentile(samples, 50) == 10.0
    assert propagate.percentile(samples, 99) == 20.0
    assert propagate.percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no samples"):
        propagate.percentile([], 50)


def test_changed_route_differs_each_step_and_leaves_the_input() -> None:
    first = propagate.changed_route(ROUTE, 1)
    second = propagate.changed_route(ROUTE, 2)
    assert first["spec"]["rules"][0]["backendRefs"][0]["weight"] == 91
    assert second["spec"]["rules"][0]["backendRefs"][0]["weight"] == 92
    assert ROUTE["spec"]["rules"][0]["backendRefs"][0]["weight"] == 90
    assert (
        first["spec"]["rules"][0]["backendRefs"][1] == ROUTE["spec"]["rules"][0]["backendRefs"][1]
    )


def test_route_without_backends_is_a_clear_error() -> None:
    route = {**ROUTE, "spec": {"parentRefs": [{"name": "x"}], "rules": [{}]}}
    with pytest.raises(propagate.PropagationError, match="HTTPRoute pricing has no backendRefs"):
        propagate.changed_route(route, 1)


def proxy(
    pid: str, sent: str | None, acked: str | None, current: str | None = None
) -> dict[str, Any]:
    return {
        "proxyId": pid,
        "sentVersion": sent,
        "ackedVersion": acked,
        "currentVersion": current or sent,
    }


def test_all_acked_needs_every_proxy_acked_and_the_change_among_them() -> None:
    before = {"a": "v1", "b": "v1"}
    assert propagate.all_acked([proxy("a", "v2", "v2"), proxy("b", "v2", "v2")], before)
    assert not propagate.all_acked([proxy("a", "v2", "v2"), proxy("b", "v2", "v1")], before)
    # A proxy the change does not concern (a front door) keeps its acked version.
    assert propagate.all_acked([proxy("a", "v2", "v2"), proxy("b", "v1", "v1")], before)
    # Nothing changed yet: the control plane has not rebuilt since the apply.
    assert not propagate.all_acked([proxy("a", "v1", "v1"), proxy("b", "v1", "v1")], before)
    # Sent and ACKed, but a newer Snapshot is already built: not there yet.
    assert not propagate.all_acked([proxy("a", "v2", "v2", current="v3")], {"a": "v1"})
    assert not propagate.all_acked([], before)
    assert propagate.all_acked([proxy("a", "v1", "v1")], {})


def test_docs_section_states_the_figures_and_the_goal() -> None:
    doc = {
        "applies": 20,
        "proxies": 7,
        "p50_ms": 40.0,
        "p99_ms": 1200.0,
        "max_ms": 1200.0,
        "goal": {"p99_ms_at_most": 1000.0, "met": False},
        "meta": {
            "date": "2026-11-22 00:00 UTC",
            "command": "bench/propagation",
            "route": "HTTPRoute/default/pricing",
            "file": "examples/shop/mesh.yaml",
            "loadavg_start": "0.5 0.4 0.3",
            "loadavg_end": "0.6 0.4 0.3",
        },
    }
    section = propagate.docs_section(doc)
    assert section.startswith(propagate.DOCS_BEGIN)
    assert section.endswith(propagate.DOCS_END)
    assert "all 7 proxies" in section
    assert "p99 **1200.0 ms**" in section
    assert "NOT met" in section
