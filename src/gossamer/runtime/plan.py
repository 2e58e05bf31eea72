"""What `gossamer up` will run: replicas per Service and subset, and the published front doors."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossamer.config.models import Resource, Service


@dataclass(frozen=True)
class ReplicaPlan:
    """One workload process and the sidecar beside it."""

    name: str  # e.g. "pricing-v2-0"; also the sidecar's proxy id
    service: str
    namespace: str
    subset: str | None
    index: int
    labels: dict[str, str]
    command: list[str]
    env: dict[str, str]
    cwd: Path
    readiness_path: str | None
    service_account: str | None = None  # the sidecar's identity; None: the service's name
    zone: str | None = None  # the replica's locality: its sidecar's --zone, the app's GOSSAMER_ZONE

    @property
    def proxy_name(self) -> str:
        return f"{self.name}.proxy"


@dataclass(frozen=True)
class PublishPlan:
    """A proxy of its own listening on 127.0.0.1:port in front of a service."""

    service: str
    namespace: str
    port: int
    # A front door runs as the service it publishes (its identity; None: the service's name).
    service_account: str | None = None

    @property
    def proxy_id(self) -> str:
        return f"{self.service}-publish"


@dataclass(frozen=True)
class Plan:
    resources: list[dict[str, Any]]
    replicas: list[ReplicaPlan]
    publishes: list[PublishPlan]
    notes: list[str] = field(default_factory=list)

    @property
    def trust_domain(self) -> str | None:
        """The Mesh resource's trustDomain, if the file has a Mesh that names one."""
        for res in self.resources:
            if res.get("kind") == "Mesh":
                value = (res.get("spec") or {}).get("trustDomain")
                return str(value) if value else None
        return None

    def process_names(self) -> list[str]:
        names = ["control-plane"]
        for r in self.replicas:
            names += [r.name, r.proxy_name]
        names += [p.proxy_id for p in self.publishes]
        return names


def to_wire(resource: Resource) -> dict[str, Any]:
    """The resource as the operator API takes it: camelCase JSON of what the user wrote."""
    data = resource.model_dump(mode="json", by_alias=True, exclude_unset=True)
    data["apiVersion"] = resource.api_version
    data["kind"] = resource.kind
    return data


def build_plan(resources: Sequence[Resource], base_dir: Path) -> Plan:
    """Turn validated resources into the processes to run.

    A Service with subsets runs `replicas` of each subset (the subset's command, else the
    service's, with the subset's env over the service's); one without runs `spec.replicas`. A
    relative `workingDir` is taken from `base_dir`, the folder of the mesh file. Replica i of a
    group runs in `zones[i % len(zones)]` of its subset, else of its service (no zones: none);
    its app sees the zone as GOSSAMER_ZONE.
    """
    replicas: list[ReplicaPlan] = []
    publishes: list[PublishPlan] = []
    notes: list[str] = []
    for res in resources:
        if not isinstance(res, Service):
            continue
        spec, meta = res.spec, res.metadata
        cwd = base_dir / spec.working_dir if spec.working_dir else base_dir
        probe = spec.readiness_probe.path if spec.readiness_probe else None
        groups: list[
            tuple[str | None, int, list[str] | None, dict[str, str], dict[str, str], list[str]]
        ]
        if spec.subsets:
            groups = [
                (
                    s.name,
                    s.replicas,
                    s.command or spec.command,
                    {**spec.env, **s.env},
                    s.labels,
                    s.zones or spec.zones,
                )
                for s in spec.subsets
            ]
        else:
            groups = [(None, spec.replicas, spec.command, dict(spec.env), {}, spec.zones)]
        for subset, count, command, env, labels, zones in groups:
            if count and not command:
                where = f"Service {meta.name}" + (f" subset {subset}" if subset else "")
                notes.append(f"{where} has no command: nothing to run for it")
                continue
            for i in range(count):
                stem = f"{meta.name}-{subset}" if subset else meta.name
                zone = zones[i % len(zones)] if zones else None
                replicas.append(
                    ReplicaPlan(
                        name=f"{stem}-{i}",
                        service=meta.name,
                        namespace=meta.namespace,
                        subset=subset,
                        index=i,
                        labels=dict(labels),
                        command=list(command or []),
                        # The zone is where the runtime put it: the file's env cannot move it.
                        env={**env, "GOSSAMER_ZONE": zone} if zone else env,
                        cwd=cwd.resolve(),
                        readiness_path=probe,
                        service_account=spec.service_account,
                        zone=zone,
                    )
                )
        if spec.publish is not None:
            publishes.append(
                PublishPlan(meta.name, meta.namespace, spec.publish, spec.service_account)
            )
    return Plan([to_wire(r) for r in resources], replicas, publishes, notes)
