"""Checks across resources: references to services, subsets and ports, duplicates, one Mesh.

A resource can be valid on its own and still wrong in its mesh: an HTTPRoute sending traffic to a
service nobody defined, a DestinationPolicy for a subset that does not exist, an
AuthorizationPolicy for an unknown service or port, a Global rate limit in a mesh without Redis.
`check` finds these in
a set of loaded resources and points at the offending field; `check_against` does the same for a
batch being applied on top of what the control plane already stores (a route may name a stored
service).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from gossamer.config import models
from gossamer.config.errors import ConfigError, Problem, did_you_mean
from gossamer.config.loader import Loaded, Unloaded, collect_files, collect_objects

STORED = "<stored>"  # the filename given to resources that come from the control plane's store

_ServiceKey = tuple[str, str]  # (namespace, name)


def check(resources: Sequence[Loaded], unloaded: Iterable[Unloaded] = ()) -> list[Problem]:
    """Every cross-resource problem in `resources`, which are taken to be the whole mesh.

    `unloaded` are documents that failed to load (already reported): a Service among them still
    counts as known, so its users are not also told it does not exist.
    """
    return check_against(resources, (), unloaded)


def check_against(
    new_resources: Sequence[Loaded],
    existing_resources: Iterable[Loaded | models.AnyResource],
    unloaded: Iterable[Unloaded] = (),
) -> list[Problem]:
    """Problems of `new_resources` applied on top of `existing_resources`.

    A new resource replaces an existing one with the same key (Kind/namespace/name), as apply does.
    Only new resources are reported on: what is already stored was checked when it was applied.
    Services named in `unloaded` are known, but their ports and subsets are not checked against.
    """
    existing = [r if isinstance(r, Loaded) else Loaded(r, STORED) for r in existing_resources]
    # Problems are grouped by the resource they belong to and given in the order of the input, so
    # a JSON batch (no line numbers) reads in the order it was sent.
    found: list[list[Problem]] = [[] for _ in new_resources]
    new: dict[str, int] = {}
    for i, loaded in enumerate(new_resources):
        first = new.get(loaded.key)
        if first is not None:
            origin = _origin(new_resources[first])
            found[i].append(
                loaded.problem("metadata.name", f"{loaded.key} is defined twice (first {origin})")
            )
            continue
        new[loaded.key] = i
    mesh = [r for r in existing if r.key not in new] + [new_resources[i] for i in new.values()]

    meshes = [r for r in mesh if isinstance(r.resource, models.Mesh)]
    for extra in meshes[1:]:
        if extra.key in new:
            name = meshes[0].resource.metadata.name
            found[new[extra.key]].append(
                extra.problem(
                    "metadata.name",
                    f"only one Mesh is allowed: Mesh {name!r} is already defined "
                    f"{_origin(meshes[0])}",
                )
            )

    unloaded = list(unloaded)
    services: dict[_ServiceKey, models.Service | None] = {
        (u.namespace, u.name): None for u in unloaded if u.kind == "Service"
    }
    routes: set[tuple[str, str]] = {
        (u.namespace, u.name) for u in unloaded if u.kind == "HTTPRoute"
    }
    for r in mesh:
        if isinstance(r.resource, models.Service):
            services[(r.resource.metadata.namespace, r.resource.metadata.name)] = r.resource
        elif isinstance(r.resource, models.HTTPRoute):
            routes.add((r.resource.metadata.namespace, r.resource.metadata.name))
    # A Mesh that failed to load may well set Redis: Global limits are not checked against it.
    mesh_unknown = any(u.kind == "Mesh" for u in unloaded)
    first_mesh = meshes[0].resource if meshes else None
    redis = first_mesh.spec.rate_limit.redis if isinstance(first_mesh, models.Mesh) else None
    if meshes and meshes[0].key in new and redis is None and not mesh_unknown:
        # The new policies report this themselves; the stored ones are the Mesh's to report.
        stored = [r for r in mesh if r.key not in new]
        found[new[meshes[0].key]].extend(_global_users(meshes[0], stored))

    for i in new.values():
        loaded = new_resources[i]
        res = loaded.resource
        if isinstance(res, models.HTTPRoute):
            found[i].extend(_check_route(loaded, res, services))
        elif isinstance(res, models.DestinationPolicy):
            ref = res.spec.target_ref
            found[i].extend(
                _check_ref(
                    loaded, "spec.targetRef", services, ref.name, ref.namespace, None, ref.subset
                )
            )
        elif isinstance(res, models.AuthorizationPolicy):
            found[i].extend(_check_authz(loaded, res, services))
        elif isinstance(res, models.Service):
            found[i].extend(_check_subset_labels(loaded, res))
        elif isinstance(res, models.RateLimitPolicy):
            found[i].extend(
                _check_rate_limit(loaded, res, services, routes, redis is not None or mesh_unknown)
            )

    return [p for group in found for p in sorted(group, key=lambda p: (p.line or 0, p.column or 0))]


def _origin(loaded: Loaded) -> str:
    if loaded.filename == STORED:
        return "in the control plane"
    return f"at {loaded.where()}"


def _check_route(
    loaded: Loaded, route: models.HTTPRoute, services: dict[_ServiceKey, models.Service | None]
) -> list[Problem]:
    problems: list[Problem] = []
    for i, parent in enumerate(route.spec.parent_refs):
        problems.extend(
            _check_ref(
                loaded,
                f"spec.parentRefs[{i}]",
                services,
                parent.name,
                parent.namespace,
                parent.port,
                None,
            )
        )
    for r, rule in enumerate(route.spec.rules):
        refs: list[tuple[str, models.HTTPBackendRef | models.HTTPServiceRef]] = [
            (f"spec.rules[{r}].backendRefs[{b}]", backend)
            for b, backend in enumerate(rule.backend_refs)
        ]
        for f, flt in enumerate(rule.filters):
            if flt.request_mirror is not None:
                path = f"spec.rules[{r}].filters[{f}].requestMirror.backendRef"
                refs.append((path, flt.request_mirror.backend_ref))
        if rule.fallback is not None and rule.fallback.backend_ref is not None:
            refs.append((f"spec.rules[{r}].fallback.backendRef", rule.fallback.backend_ref))
        for path, ref in refs:
            problems.extend(
                _check_ref(loaded, path, services, ref.name, ref.namespace, ref.port, ref.subset)
            )
    return problems


def _check_rate_limit(
    loaded: Loaded,
    policy: models.RateLimitPolicy,
    services: dict[_ServiceKey, models.Service | None],
    routes: set[tuple[str, str]],
    has_redis: bool,
) -> list[Problem]:
    """The target exists, and Global limits have the Mesh's Redis to share their counts in."""
    ref = policy.spec.target_ref
    own = policy.metadata.namespace
    problems: list[Problem] = []
    if ref.namespace not in (None, own):
        return [
            loaded.problem(
                "spec.targetRef.namespace",
                f"{ref.namespace!r}: a RateLimitPolicy applies only in its own namespace "
                f"({own!r}); create it there",
            )
        ]
    if ref.kind == "Service":
        problems += _check_ref(loaded, "spec.targetRef", services, ref.name, own, None, None)
    elif (own, ref.name) not in routes:
        nearby = [n for (ns, n) in routes if ns == own]
        problems.append(
            loaded.problem(
                "spec.targetRef.name",
                f"unknown HTTPRoute {ref.name!r}{did_you_mean(ref.name, nearby)}",
            )
        )
    if not has_redis:
        for i, limit in enumerate(policy.spec.limits):
            if limit.scope == "Global":
                problems.append(
                    loaded.problem(
                        f"spec.limits[{i}].scope",
                        f"limit {_limit_label(policy, i)} is Global, but the Mesh sets no "
                        "spec.rateLimit.redis to share its counts in (add it, or use scope Local)",
                    )
                )
    return problems


def _limit_label(policy: models.RateLimitPolicy, index: int) -> str:
    name = policy.spec.limits[index].name
    return repr(name) if name is not None else f"#{index}"


def _global_users(mesh: Loaded, resources: Sequence[Loaded]) -> list[Problem]:
    """A Mesh without Redis while RateLimitPolicies have Global limits: they need it."""
    users = [
        f"{r.key} {_limit_label(r.resource, i)}"
        for r in resources
        if isinstance(r.resource, models.RateLimitPolicy)
        for i, limit in enumerate(r.resource.spec.limits)
        if limit.scope == "Global"
    ]
    if not users:
        return []
    more = f" and {len(users) - 3} more" if len(users) > 3 else ""
    return [
        mesh.problem(
            "spec.rateLimit.redis",
            f"required by the Global limits of {', '.join(users[:3])}{more}",
        )
    ]


def _check_ref(
    loaded: Loaded,
    path: str,
    services: dict[_ServiceKey, models.Service | None],
    name: str,
    namespace: str | None,
    port: int | None,
    subset: str | None,
) -> list[Problem]:
    own = loaded.resource.metadata.namespace
    ns = namespace or own
    if (ns, name) not in services:
        where = f" in namespace {ns!r}" if ns != own else ""
        nearby = [n for (sns, n) in services if sns == ns]
        return [
            loaded.problem(
                f"{path}.name", f"unknown service {name!r}{where}{did_you_mean(name, nearby)}"
            )
        ]
    service = services[(ns, name)]
    if service is None:
        return []  # it failed to load: its ports and subsets are unknown
    problems: list[Problem] = []
    ports = [p.port for p in service.spec.ports]
    if port is not None and port not in ports:
        listed = ", ".join(str(p) for p in ports)
        problems.append(
            loaded.problem(
                f"{path}.port", f"service {name!r} has no port {port} (its ports: {listed})"
            )
        )
    if subset is not None:
        subsets = [s.name for s in service.spec.subsets]
        if not subsets:
            message = f"service {name!r} has no subsets"
        elif subset in subsets:
            message = ""
        else:
            hint = did_you_mean(subset, subsets) or f" (its subsets: {', '.join(subsets)})"
            message = f"service {name!r} has no subset {subset!r}{hint}"
        if message:
            problems.append(loaded.problem(f"{path}.subset", message))
    return problems


def _check_authz(
    loaded: Loaded,
    policy: models.AuthorizationPolicy,
    services: dict[_ServiceKey, models.Service | None],
) -> list[Problem]:
    """The targeted service exists, and the ports its rules name are among the service's."""
    ref = policy.spec.target_ref
    if ref is None:
        return []  # namespace-wide: applies to whatever services the namespace has
    problems = _check_ref(loaded, "spec.targetRef", services, ref.name, ref.namespace, None, None)
    service = services.get((ref.namespace or policy.metadata.namespace, ref.name))
    if problems or service is None:
        return problems
    ports = [p.port for p in service.spec.ports]
    listed = ", ".join(str(p) for p in ports)
    for r, rule in enumerate(policy.spec.rules):
        for t, to in enumerate(rule.to):
            op = to.operation
            for field, values in (("ports", op.ports), ("notPorts", op.not_ports)):
                for k, port in enumerate(values):
                    if port not in ports:
                        problems.append(
                            loaded.problem(
                                f"spec.rules[{r}].to[{t}].operation.{field}[{k}]",
                                f"service {ref.name!r} has no port {port} (its ports: {listed})",
                            )
                        )
    return problems


def _check_subset_labels(loaded: Loaded, service: models.Service) -> list[Problem]:
    """Subsets are told apart by labels: two whose selectors can match one endpoint collide."""
    problems: list[Problem] = []
    subsets = service.spec.subsets
    for j, later in enumerate(subsets):
        mine = set(later.labels.items())
        if not mine:
            continue
        for earlier in subsets[:j]:
            theirs = set(earlier.labels.items())
            if not theirs:
                continue
            if mine == theirs:
                message = (
                    f"same labels as subset {earlier.name!r} ({_labels(later.labels)}): "
                    "their endpoints cannot be told apart"
                )
            elif mine <= theirs or theirs <= mine:
                union = _labels(dict(sorted(mine | theirs)))
                message = (
                    f"labels collide with subset {earlier.name!r}: an endpoint labelled "
                    f"{union} would belong to both"
                )
            else:
                continue
            problems.append(loaded.problem(f"spec.subsets[{j}].labels", message))
            break
    return problems


def _labels(labels: dict[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"


# --- one call for the users of the config package -------------------------------------------------


def load_and_check(paths: Iterable[str | os.PathLike[str]]) -> list[Loaded]:
    """Load files and check them as one mesh (what `gossamer up` and `gossamer validate` need).

    Raises:
        ConfigError: with every problem found: per document, and across the documents that loaded.
    """
    loaded, problems = collect_and_check(paths)
    if problems:
        raise ConfigError(problems)
    return loaded


def collect_and_check(
    paths: Iterable[str | os.PathLike[str]],
) -> tuple[list[Loaded], list[Problem]]:
    """What loaded and every problem: each document's own, then the cross-resource ones among
    the documents that loaded (a failed one takes no part, but a failed Service is still known)."""
    unloaded: list[Unloaded] = []
    loaded, problems = collect_files(paths, unloaded)
    return loaded, problems + check(loaded, unloaded)


def validate_apply(
    objs: Sequence[Any],
    existing: Iterable[Loaded | models.AnyResource],
    source: str = "request",
) -> list[Loaded]:
    """Validate an apply request's resources, alone and against what is stored.

    Raises:
        ConfigError: every problem, paths like "resources[2].spec.rules[0].backendRefs[0].name".
    """
    unloaded: list[Unloaded] = []
    loaded, problems = collect_objects(objs, source, unloaded)
    problems += check_against(loaded, existing, unloaded)
    if problems:
        # The cross-resource problems come after the per-document ones; keep the input's order.
        problems.sort(key=_resource_index)
        raise ConfigError(problems)
    return loaded


def _resource_index(problem: Problem) -> int:
    head = problem.path.partition("]")[0]
    number = head.removeprefix("resources[")
    return int(number) if number.isdigit() else -1
