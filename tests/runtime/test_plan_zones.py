"""Zones in the local runtime: replica i of a group runs in zones[i % len], its sidecar gets
`--zone` (and registers it) and its app GOSSAMER_ZONE."""

from __future__ import annotations

from pathlib import Path

from gossamer.cli.main import build_parser
from gossamer.config.loader import load_text
from gossamer.runtime.plan import build_plan
from gossamer.runtime.supervisor import base_env, sidecar_argv, workload_env

YAML = """
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: catalog}
spec:
  command: python3 catalog.py
  zones: [zone-a, zone-b]
  env: {GOSSAMER_ZONE: mine, A: "1"}
  subsets:
    - {name: v1, replicas: 3}
    - {name: v2, replicas: 2, zones: [zone-c]}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: web}
spec:
  command: ./web
  replicas: 2
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: api}
spec:
  command: ./api
  replicas: 3
  zones: [z1, z2]
"""


def _plan(tmp_path: Path) -> dict[str, tuple[str | None, dict[str, str]]]:
    plan = build_plan([x.resource for x in load_text(YAML)], tmp_path)
    return {r.name: (r.zone, r.env) for r in plan.replicas}


def test_replicas_round_robin_over_zones(tmp_path: Path) -> None:
    zones = {name: zone for name, (zone, _) in _plan(tmp_path).items()}
    assert zones == {
        "catalog-v1-0": "zone-a",
        "catalog-v1-1": "zone-b",
        "catalog-v1-2": "zone-a",
        "catalog-v2-0": "zone-c",  # the subset's own zones win
        "catalog-v2-1": "zone-c",
        "web-0": None,
        "web-1": None,
        "api-0": "z1",
        "api-1": "z2",
        "api-2": "z1",
    }


def test_the_app_sees_its_zone(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    # Where the runtime put the replica is not the file's to override.
    assert plan["catalog-v1-1"][1] == {"GOSSAMER_ZONE": "zone-b", "A": "1"}
    assert "GOSSAMER_ZONE" not in plan["web-0"][1]


def test_the_sidecar_is_started_with_its_zone(tmp_path: Path) -> None:
    plan = build_plan([x.resource for x in load_text(YAML)], tmp_path)
    by_name = {r.name: r for r in plan.replicas}
    sidecar = {"outbound": "127.0.0.1:1", "admin": "127.0.0.1:2"}
    for name, zone in (("catalog-v2-0", "zone-c"), ("web-0", None)):
        replica = by_name[name]
        argv = sidecar_argv(
            ["gossamer"], replica, 8000, "https://127.0.0.1:3", tmp_path / "r", tmp_path
        )
        # The real CLI parses what the runtime passes: --zone reaches the proxy's options.
        args = build_parser().parse_args(argv[1:])
        assert args.zone == zone
        env = workload_env(base_env("run", environ={}), replica, 8000, sidecar, "https://x")
        assert env.get("GOSSAMER_ZONE") == zone
