"""Cross-resource checks: references, subsets, ports, weights, duplicates, Mesh, subset labels."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from gossamer.config import models
from gossamer.config.errors import ConfigError
from gossamer.config.loader import collect_text, load_files, load_objects, load_text
from gossamer.config.validate import check, check_against, load_and_check, validate_apply

SHOP = Path(__file__).parent / "fixtures" / "shop.yaml"

SERVICES = """\
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: pricing}
spec:
  ports: [{port: 8080}]
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: catalog}
---
"""  # 13 lines: the documents under test start on line 14


def _check(text: str) -> list[str]:
    return [str(p) for p in check(load_text(SERVICES + dedent(text), "mesh.yaml"))]


def test_the_shop_is_consistent() -> None:
    assert check(load_files([SHOP])) == []


def test_unknown_services_with_suggestions() -> None:
    text = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: HTTPRoute
        metadata: {name: pricing}
        spec:
          parentRefs:
            - name: pricng
          rules:
            - backendRefs:
                - name: pricing
                - name: shipping
        """
    assert _check(text) == [
        "mesh.yaml:19:7: spec.parentRefs[0].name: unknown service 'pricng' "
        "(did you mean 'pricing'?)",
        "mesh.yaml:23:11: spec.rules[0].backendRefs[1].name: unknown service 'shipping'",
    ]


def test_references_are_namespace_aware() -> None:
    text = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: HTTPRoute
        metadata: {name: pricing, namespace: shop}
        spec:
          parentRefs:
            - name: pricing
            - {name: pricing, namespace: default}
        """
    assert _check(text) == [
        "mesh.yaml:19:7: spec.parentRefs[0].name: unknown service 'pricing'",
    ]
    other_ns = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: HTTPRoute
        metadata: {name: pricing}
        spec:
          parentRefs:
            - {name: pricing, namespace: shop}
        """
    assert _check(other_ns) == [
        "mesh.yaml:19:8: spec.parentRefs[0].name: unknown service 'pricing' in namespace 'shop'",
    ]


def test_unknown_subsets_and_ports() -> None:
    text = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: HTTPRoute
        metadata: {name: pricing}
        spec:
          parentRefs:
            - {name: pricing, port: 9090}
          rules:
            - backendRefs:
                - {name: pricing, subset: v3}
                - {name: pricing, subset: canary, port: 8080}
                - {name: catalog, subset: v1}
        """
    assert _check(text) == [
        "mesh.yaml:19:23: spec.parentRefs[0].port: service 'pricing' has no port 9090 "
        "(its ports: 8080)",
        "mesh.yaml:22:27: spec.rules[0].backendRefs[0].subset: service 'pricing' has no subset "
        "'v3' (its subsets: v1, v2)",
        "mesh.yaml:23:27: spec.rules[0].backendRefs[1].subset: service 'pricing' has no subset "
        "'canary' (its subsets: v1, v2)",
        "mesh.yaml:24:27: spec.rules[0].backendRefs[2].subset: service 'catalog' has no subsets",
    ]


def test_destination_policy_target() -> None:
    text = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: DestinationPolicy
        metadata: {name: a}
        spec:
          targetRef: {name: catalogue}
        ---
        apiVersion: gossamer.dev/v1alpha1
        kind: DestinationPolicy
        metadata: {name: b}
        spec:
          targetRef:
            name: pricing
            subset: v9
        """
    assert _check(text) == [
        "mesh.yaml:18:15: spec.targetRef.name: unknown service 'catalogue' "
        "(did you mean 'catalog'?)",
        "mesh.yaml:26:5: spec.targetRef.subset: service 'pricing' has no subset 'v9' "
        "(its subsets: v1, v2)",
    ]


def test_all_weights_zero() -> None:
    text = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: HTTPRoute
        metadata: {name: pricing}
        spec:
          parentRefs: [{name: pricing}]
          rules:
            - backendRefs:
                - {name: pricing, subset: v1, weight: 0}
                - {name: pricing, subset: v2, weight: 0}
            - backendRefs:
                - {name: pricing, subset: v1, weight: 0}
                - {name: pricing, subset: v2, weight: 1}
        """
    # A single-resource rule now: the loader (the model) refuses it, with the same place.
    loaded, problems = collect_text(SERVICES + dedent(text), "mesh.yaml")
    assert [str(p) for p in problems] == [
        "mesh.yaml:20:7: spec.rules[0].backendRefs: all backendRefs have weight 0: "
        "no traffic can be routed",
    ]
    assert len(loaded) == 2


def test_duplicates_and_second_mesh() -> None:
    text = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: Mesh
        metadata: {name: one}
        ---
        apiVersion: gossamer.dev/v1alpha1
        kind: Mesh
        metadata: {name: two}
        ---
        apiVersion: gossamer.dev/v1alpha1
        kind: Service
        metadata:
          name: catalog
        """
    assert _check(text) == [
        "mesh.yaml:20:12: metadata.name: only one Mesh is allowed: Mesh 'one' is already "
        "defined at mesh.yaml:16",
        "mesh.yaml:25:3: metadata.name: Service/default/catalog is defined twice "
        "(first at mesh.yaml:12)",
    ]


def test_subset_labels_must_not_collide() -> None:
    text = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: Service
        metadata: {name: search}
        spec:
          subsets:
            - {name: v1, labels: {version: v1}}
            - {name: v1-copy, labels: {version: v1}}
            - {name: v1-eu, labels: {version: v1, zone: eu}}
            - {name: plain}
            - {name: also-plain}
        """
    assert _check(text) == [
        "mesh.yaml:20:23: spec.subsets[1].labels: same labels as subset 'v1' ({version=v1}): "
        "their endpoints cannot be told apart",
        "mesh.yaml:21:21: spec.subsets[2].labels: labels collide with subset 'v1': an endpoint "
        "labelled {version=v1, zone=eu} would belong to both",
    ]


def _obj(kind: str, name: str, spec: dict[str, object] | None = None) -> dict[str, object]:
    out: dict[str, object] = {
        "apiVersion": models.API_VERSION,
        "kind": kind,
        "metadata": {"name": name},
    }
    if spec is not None:
        out["spec"] = spec
    return out


def test_check_against_stored_resources() -> None:
    stored = [r.resource for r in load_files([SHOP])]
    route = _obj(
        "HTTPRoute",
        "inventory",
        {"parentRefs": [{"name": "inventory"}], "rules": [{"backendRefs": [{"name": "pricng"}]}]},
    )
    new = load_objects([_obj("Service", "pricing"), route, _obj("Mesh", "other")])
    assert [str(p) for p in check_against(new, stored)] == [
        "request: resources[1].spec.rules[0].backendRefs[0].name: unknown service 'pricng' "
        "(did you mean 'pricing'?)",
        "request: resources[2].metadata.name: only one Mesh is allowed: Mesh 'shop' is already "
        "defined in the control plane",
    ]
    # The stored Mesh may be re-applied (same key): that replaces it, it does not add one.
    assert check_against(load_objects([_obj("Mesh", "shop")]), stored) == []


def test_check_against_sees_the_new_version_of_a_stored_service() -> None:
    stored = [r.resource for r in load_files([SHOP])]
    # pricing is re-applied without its subsets, so a route to pricing v2 is now wrong.
    route = _obj(
        "HTTPRoute",
        "pricing",
        {
            "parentRefs": [{"name": "pricing"}],
            "rules": [{"backendRefs": [{"name": "pricing", "subset": "v2"}]}],
        },
    )
    with pytest.raises(ConfigError) as info:
        validate_apply([_obj("Service", "pricing"), route], stored)
    assert [str(p) for p in info.value.problems] == [
        "request: resources[1].spec.rules[0].backendRefs[0].subset: service 'pricing' has no "
        "subsets"
    ]


def test_load_and_check_reports_load_problems_before_references(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(
        SERVICES
        + "apiVersion: gossamer.dev/v1alpha1\nkind: HTTPRoute\nmetadata: {name: r}\n"
        + "spec:\n  parentRefs: [{name: nope}]\n  hostnames: 3\n"
    )
    with pytest.raises(ConfigError) as info:
        load_and_check([path])
    assert [str(p) for p in info.value.problems] == [
        f"{path}:19:3: spec.hostnames: must be a list, not a number"
    ]
    assert len(load_and_check([SHOP])) == 7


def test_close_subset_names_are_suggested() -> None:
    text = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: DestinationPolicy
        metadata: {name: a}
        spec:
          targetRef: {name: pricing, subset: v22}
        """
    assert _check(text) == [
        "mesh.yaml:18:30: spec.targetRef.subset: service 'pricing' has no subset 'v22' "
        "(did you mean 'v2'?)"
    ]
