"""The resource set: resources loaded from the store, kept current by a watch, and batch apply."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pydantic

from gossamer.config.models import (
    KINDS,
    AnyResource,
    DestinationPolicy,
    HTTPRoute,
    RateLimitPolicy,
    Resource,
)
from gossamer.control.store.base import CompactedError, KeyValue, Store

log = logging.getLogger(__name__)

RESOURCES_PREFIX = "/resources/"
Action = Literal["created", "configured", "unchanged"]


def resource_key(kind: str, namespace: str, name: str) -> str:
    """The store key of a resource: `/resources/{Kind}/{namespace}/{name}`."""
    return f"{RESOURCES_PREFIX}{kind}/{namespace}/{name}"


def store_key(resource: Resource) -> str:
    return resource_key(resource.kind, resource.metadata.namespace, resource.metadata.name)


def encode_resource(resource: Resource) -> bytes:
    """The stored form: the resource as applied (fields the user set), camelCase, keys sorted."""
    body = resource.model_dump(mode="json", by_alias=True, exclude_unset=True)
    # apiVersion and kind are always written, even where a model default filled them in.
    body["apiVersion"] = resource.api_version
    body["kind"] = resource.kind
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def decode_resource(data: bytes | str | Mapping[str, Any]) -> AnyResource:
    """Parse a stored resource; raises ValueError naming the kind when it is not one we know."""
    obj = json.loads(data) if isinstance(data, bytes | str) else data
    if not isinstance(obj, Mapping):
        raise ValueError("a resource must be a JSON object")
    kind = obj.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ValueError(f"unknown kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    resource = model.model_validate(obj)
    return resource  # type: ignore[return-value]


def service_users(
    resources: Iterable[Resource], namespace: str, name: str
) -> list[tuple[str, str]]:
    """The (key, field path) of every reference to Service `namespace/name`, sorted by key.

    A reference without a namespace means the referring resource's own namespace.
    """
    found: list[tuple[str, str]] = []
    for r in resources:
        own = r.metadata.namespace
        refs: list[tuple[str, str | None, str]] = []
        if isinstance(r, HTTPRoute):
            refs += [
                (f"spec.parentRefs[{i}]", p.namespace, p.name)
                for i, p in enumerate(r.spec.parent_refs)
            ]
            for j, rule in enumerate(r.spec.rules):
                refs += [
                    (f"spec.rules[{j}].backendRefs[{k}]", b.namespace, b.name)
                    for k, b in enumerate(rule.backend_refs)
                ]
                for k, f in enumerate(rule.filters):
                    if f.request_mirror is not None:
                        m = f.request_mirror.backend_ref
                        path = f"spec.rules[{j}].filters[{k}].requestMirror.backendRef"
                        refs.append((path, m.namespace, m.name))
                fb = rule.fallback
                if fb is not None and fb.backend_ref is not None:
                    b = fb.backend_ref
                    refs.append((f"spec.rules[{j}].fallback.backendRef", b.namespace, b.name))
        elif isinstance(r, DestinationPolicy):
            t = r.spec.target_ref
            refs.append(("spec.targetRef", t.namespace, t.name))
        elif isinstance(r, RateLimitPolicy) and r.spec.target_ref.kind == "Service":
            rt = r.spec.target_ref
            refs.append(("spec.targetRef", rt.namespace, rt.name))
        found += [(r.key, path) for path, ns, n in refs if n == name and (ns or own) == namespace]
    return sorted(found, key=lambda item: item[0])


async def load_resources(store: Store) -> tuple[dict[str, AnyResource], int]:
    """Every stored resource by "Kind/namespace/name", and the revision they were read at."""
    items, revision = await store.list(RESOURCES_PREFIX)
    out: dict[str, AnyResource] = {}
    for kv in items:
        try:
            out[kv.key.removeprefix(RESOURCES_PREFIX)] = decode_resource(kv.value)
        except (ValueError, pydantic.ValidationError) as exc:
            log.warning("skipping unreadable resource %s: %s", kv.key, exc)
    return out, revision


class ResourceCache:
    """Every resource in the store, in memory, following the store's watch.

    `resources` maps "Kind/namespace/name" to the parsed resource. Listeners are called after every
    change so the distributor can recompute snapshots.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self.resources: dict[str, AnyResource] = {}
        self.revision = 0
        self._listeners: list[Callable[[], None]] = []

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def _load_kv(self, kv: KeyValue) -> None:
        key = kv.key.removeprefix(RESOURCES_PREFIX)
        try:
            self.resources[key] = decode_resource(kv.value)
        except (ValueError, pydantic.ValidationError) as exc:
            log.warning("skipping unreadable resource %s: %s", kv.key, exc)

    async def load(self) -> int:
        """Read every resource from the store; returns the store revision read at."""
        self.resources, revision = await load_resources(self._store)
        self.revision = revision
        self._changed()
        return revision

    async def follow(self) -> None:
        """Apply the store's changes as they happen; runs until cancelled or the store closes."""
        while True:
            try:
                async for event in self._store.watch(RESOURCES_PREFIX, self.revision + 1):
                    if event.type == "PUT":
                        self._load_kv(event.kv)
                    else:
                        self.resources.pop(event.kv.key.removeprefix(RESOURCES_PREFIX), None)
                    self.revision = event.revision
                    self._changed()
                return
            except CompactedError:
                await self.load()

    def sorted_resources(self) -> list[AnyResource]:
        return [self.resources[k] for k in sorted(self.resources)]


@dataclass(frozen=True, slots=True)
class ApplyResult:
    results: list[tuple[str, Action]]  # ("Kind/namespace/name", action) in the order given
    revision: int


async def apply_resources(
    store: Store,
    current: Mapping[str, AnyResource],
    batch: Sequence[AnyResource],
    *,
    dry_run: bool = False,
) -> ApplyResult:
    """Write the changed resources of an already validated batch in one transaction.

    A resource equal to the stored one is "unchanged" and not written; a later entry for the same
    key wins over an earlier one in the batch.
    """
    results: list[tuple[str, Action]] = []
    writes: dict[str, bytes] = {}
    for resource in batch:
        key = resource.key
        old = current.get(key)
        action: Action
        if old is None:
            action = "created"
        elif old == resource:
            action = "unchanged"
        else:
            action = "configured"
        if key in writes:
            # The same key twice in a batch: the earlier entry's action no longer holds.
            results = [(k, a) for k, a in results if k != key]
        results.append((key, action))
        if action != "unchanged":
            writes[key] = encode_resource(resource)
        else:
            writes.pop(key, None)
    if dry_run or not writes:
        return ApplyResult(results, await store.revision())
    revision = await store.txn_put_many(
        [(RESOURCES_PREFIX + key, value) for key, value in writes.items()]
    )
    return ApplyResult(results, revision)
