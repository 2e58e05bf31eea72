"""YAML loading: every problem is reported at once, each with file, line, column and field path."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from gossamer.config import models
from gossamer.config.errors import ConfigError, Problem
from gossamer.config.loader import Loaded, collect_text, load_files, load_objects, load_text

HEAD = "apiVersion: gossamer.dev/v1alpha1\n"


def _problems(text: str, filename: str = "shop.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(dedent(text), filename)
    return [str(p) for p in info.value.problems]


def test_problem_rendering_omits_what_is_unknown() -> None:
    assert str(Problem("a.yaml", 3, 5, "spec.x", "bad")) == "a.yaml:3:5: spec.x: bad"
    assert str(Problem("a.yaml", 3, None, "spec.x", "bad")) == "a.yaml:3: spec.x: bad"
    assert str(Problem("request", None, None, "resources[0].kind", "bad")) == (
        "request: resources[0].kind: bad"
    )
    assert str(Problem("a.yaml", None, None, "", "no such file")) == "a.yaml: no such file"


def test_config_error_lists_every_problem_one_per_line() -> None:
    error = ConfigError([Problem("a", 1, 1, "x", "one"), Problem("a", 2, 1, "y", "two")])
    assert str(error) == "a:1:1: x: one\na:2:1: y: two"


def test_negative_weight_points_at_the_field() -> None:
    text = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: HTTPRoute
        metadata:
          name: pricing
        spec:
          parentRefs:
            - name: pricing
          rules:
            - backendRefs:
                - name: pricing
                  subset: v1
                  weight: 90
                - name: pricing
                  weight: -1
        """
    assert _problems(text) == ["shop.yaml:14:11: spec.rules[0].backendRefs[1].weight: must be >= 0"]


def test_unknown_field_suggests_the_model_field() -> None:
    text = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: HTTPRoute
        metadata:
          name: pricing
        spec:
          parentRefs:
            - name: pricing
          rules:
            - backendRefs:
                - name: pricing
                  weigth: 3
        """
    assert _problems(text) == [
        "shop.yaml:11:11: spec.rules[0].backendRefs[0].weigth: "
        "unknown field 'weigth' (did you mean 'weight'?)"
    ]


def test_unknown_field_with_nothing_close() -> None:
    text = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: Service
        metadata:
          name: pricing
          colour: blue
        """
    assert _problems(text) == ["shop.yaml:5:3: metadata.colour: unknown field 'colour'"]


def test_missing_field_points_at_the_parent_mapping() -> None:
    text = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: HTTPRoute
        metadata:
          name: pricing
        spec:
          rules:
            - backendRefs:
                - weight: 1
        """
    assert _problems(text) == [
        "shop.yaml:5:1: spec.parentRefs: required field is missing",
        "shop.yaml:8:11: spec.rules[0].backendRefs[0].name: required field is missing",
    ]


def test_literal_and_type_errors() -> None:
    text = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: Service
        metadata:
          name: pricing
          labels:
            version: 2
        spec:
          ports:
            - port: http
              protocol: udp
          replicas: 1.5
          subsets: {name: v1}
        """
    assert _problems(text) == [
        'shop.yaml:6:5: metadata.labels.version: must be a string (write it in quotes: "2")',
        "shop.yaml:9:7: spec.ports[0].port: must be an integer",
        "shop.yaml:10:7: spec.ports[0].protocol: must be one of: http, tcp",
        "shop.yaml:11:3: spec.replicas: must be an integer",
        "shop.yaml:12:3: spec.subsets: must be a list, not a mapping",
    ]


def test_value_errors_keep_the_validator_message() -> None:
    text = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: HTTPRoute
        metadata:
          name: Pricing_Route
        spec:
          parentRefs: [{name: pricing}]
          rules:
            - timeouts:
                request: 5 seconds
              matches:
                - path:
                    type: RegularExpression
                    value: "/items/(\\\\d+"
        """
    assert _problems(text) == [
        "shop.yaml:4:3: metadata.name: 'Pricing_Route' is not a valid name: use lower-case "
        "letters, digits and '-', starting and ending with a letter or digit (at most 63 "
        "characters)",
        "shop.yaml:9:9: spec.rules[0].timeouts.request: '5 seconds' is not a duration; use a "
        "form such as '250ms', '5s' or '1m'",
        "shop.yaml:13:13: spec.rules[0].matches[0].path.value: invalid regular expression "
        "'/items/(\\\\d+': missing ), unterminated subpattern at position 7",
    ]


def test_api_version_and_kind() -> None:
    text = """\
        kind: Service
        metadata: {name: a}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: b}
        ---
        apiVersion: gossamer.dev/v1alpha1
        kind: Servce
        metadata: {name: c}
        ---
        apiVersion: gossamer.dev/v1alpha1
        kind: Deployment
        ---
        apiVersion: gossamer.dev/v1alpha1
        metadata: {name: e}
        """
    assert _problems(text) == [
        "shop.yaml:1:1: apiVersion: required field is missing (use gossamer.dev/v1alpha1)",
        "shop.yaml:4:1: apiVersion: must be gossamer.dev/v1alpha1",
        "shop.yaml:9:1: kind: unknown kind 'Servce' (did you mean 'Service'?)",
        "shop.yaml:13:1: kind: unknown kind 'Deployment': must be one of: Mesh, Service, "
        "HTTPRoute, DestinationPolicy, AuthorizationPolicy, RateLimitPolicy",
        "shop.yaml:15:1: kind: required field is missing (one of: Mesh, Service, HTTPRoute, "
        "DestinationPolicy, AuthorizationPolicy, RateLimitPolicy)",
    ]


def test_document_that_is_not_a_mapping() -> None:
    assert _problems("- a\n- b\n") == [
        "shop.yaml:1:1: a resource must be a mapping with apiVersion, kind, metadata and spec, "
        "not a list"
    ]


def test_duplicate_keys_are_errors() -> None:
    text = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: Service
        metadata:
          name: pricing
        spec:
          replicas: 2
          command: run
          replicas: 3
        """
    assert _problems(text) == [
        "shop.yaml:8:3: spec.replicas: duplicate key 'replicas' (first set at line 6, column 3)"
    ]


def test_syntax_error_keeps_the_problems_of_earlier_documents() -> None:
    text = """\
        apiVersion: gossamer.dev/v1alpha1
        kind: Service
        metadata: {name: pricing}
        spec: {replicas: -1}
        ---
        apiVersion: gossamer.dev/v1alpha1
        kind: Service
        metadata: {name: [oops}
        """
    problems = _problems(text)
    assert problems[0] == "shop.yaml:4:8: spec.replicas: must be >= 0"
    assert problems[1].startswith("shop.yaml:8:")
    assert "invalid YAML: " in problems[1]
    assert len(problems) == 2


def test_every_problem_of_every_document_is_reported() -> None:
    text = HEAD + dedent(
        """\
        kind: Service
        metadata: {name: a}
        spec: {replicas: -1, publish: 70000}
        ---
        apiVersion: gossamer.dev/v1alpha1
        kind: DestinationPolicy
        metadata: {name: b}
        spec:
          targetRef: {name: a}
          connectionPool: {maxConnections: 0}
          loadBalancer: {policy: RING_HASH}
        """
    )
    with pytest.raises(ConfigError) as info:
        load_text(text, "m.yaml")
    assert [str(p) for p in info.value.problems] == [
        "m.yaml:4:8: spec.replicas: must be >= 0",
        "m.yaml:4:22: spec.publish: must be <= 65535",
        "m.yaml:11:20: spec.connectionPool.maxConnections: must be >= 1",
        "m.yaml:12:3: spec.loadBalancer: policy RING_HASH needs consistentHash "
        "(httpHeaderName or httpCookie)",
    ]


def test_empty_documents_are_skipped_and_positions_recorded() -> None:
    text = dedent(
        """\
        # the mesh
        ---
        ---
        apiVersion: gossamer.dev/v1alpha1
        kind: Service
        metadata:
          name: pricing
        spec:
          ports:
            - port: 8080
        ---
        """
    )
    [loaded] = load_text(text, "s.yaml")
    assert isinstance(loaded.resource, models.Service)
    assert loaded.filename == "s.yaml"
    assert loaded.positions["spec"] == (8, 1)
    assert loaded.positions["spec.ports"] == (9, 3)
    assert loaded.positions["spec.ports[0]"] == (10, 7)
    assert loaded.positions["spec.ports[0].port"] == (10, 7)
    assert loaded.position("spec.ports[0].name") == (10, 7)  # defaulted: its parent's position
    assert loaded.problem("spec.ports", "x") == Problem("s.yaml", 9, 3, "spec.ports", "x")


def test_merge_keys_and_anchors() -> None:
    text = dedent(
        """\
        apiVersion: gossamer.dev/v1alpha1
        kind: Service
        metadata: {name: pricing}
        spec:
          env: &common {LOG: debug, REGION: eu}
          subsets:
            - name: v1
              env:
                <<: *common
                REGION: us
        """
    )
    [loaded] = load_text(text, "s.yaml")
    assert isinstance(loaded.resource, models.Service)
    assert loaded.resource.spec.subsets[0].env == {"LOG": "debug", "REGION": "us"}


def test_yaml_1_2_scalars_stay_strings() -> None:
    text = HEAD + "kind: Service\nmetadata:\n  name: a\n  labels: {on: yes, day: 2024-01-01}\n"
    [loaded] = load_text(text)
    assert loaded.resource.metadata.labels == {"on": "yes", "day": "2024-01-01"}


def test_load_files_reads_directories_sorted(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text(HEAD + "kind: Service\nmetadata: {name: b}\n")
    (tmp_path / "a.yaml").write_text(HEAD + "kind: Service\nmetadata: {name: a}\n")
    (tmp_path / "notes.txt").write_text("not config")
    loaded = load_files([tmp_path])
    assert [r.resource.metadata.name for r in loaded] == ["a", "b"]
    assert [Path(r.filename).name for r in loaded] == ["a.yaml", "b.yml"]


def test_load_files_collects_problems_across_files(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(HEAD + "kind: Service\nmetadata: {name: a}\nspec: {replicas: -2}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe\x00oops")
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load_files([good, bad, missing])
    assert [str(p) for p in info.value.problems] == [
        f"{missing}: no such file or directory",
        f"{good}:4:8: spec.replicas: must be >= 0",
        f"{bad}: not UTF-8 text (invalid start byte)",
    ]


def test_load_objects_reports_paths_without_positions() -> None:
    objs: list[object] = [
        {"apiVersion": models.API_VERSION, "kind": "Service", "metadata": {"name": "a"}},
        {
            "apiVersion": models.API_VERSION,
            "kind": "HTTPRoute",
            "metadata": {"name": "r"},
            "spec": {"parentRefs": [{"name": "a"}], "rules": [{"backendRefs": [{"nam": "a"}]}]},
        },
        "not a resource",
        {"apiVersion": models.API_VERSION, "kind": "Srvice", "metadata": {"name": "x"}},
    ]
    with pytest.raises(ConfigError) as info:
        load_objects(objs)
    assert [str(p) for p in info.value.problems] == [
        "request: resources[1].spec.rules[0].backendRefs[0].name: required field is missing",
        "request: resources[1].spec.rules[0].backendRefs[0].nam: unknown field 'nam' "
        "(did you mean 'name'?)",
        "request: resources[2]: a resource must be a mapping with apiVersion, kind, metadata "
        "and spec, not a string",
        "request: resources[3].kind: unknown kind 'Srvice' (did you mean 'Service'?)",
    ]


def test_load_objects_returns_loaded_resources() -> None:
    [loaded] = load_objects(
        [{"apiVersion": models.API_VERSION, "kind": "Mesh", "metadata": {"name": "m"}}]
    )
    mesh = models.Mesh.model_validate({"apiVersion": models.API_VERSION, "metadata": {"name": "m"}})
    assert loaded == Loaded(mesh, "request", {}, "resources[0].", 0)
    assert loaded.problem("spec", "x") == Problem("request", None, None, "resources[0].spec", "x")


def test_directory_without_yaml_files_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("hi")
    with pytest.raises(ConfigError) as info:
        load_files([tmp_path])
    assert [str(p) for p in info.value.problems] == [
        f"{tmp_path}: directory has no .yaml or .yml files"
    ]


def test_a_reused_anchor_is_a_problem_not_a_stray_warning() -> None:
    """ruamel only warns about a reused anchor; in a config that is ambiguous, so it is reported."""
    text = "a: &x 1\nb: &x 2\n"
    _, problems = collect_text(text, "shop.yaml")
    assert "shop.yaml:2:4: invalid YAML: found duplicate anchor 'x'" in [str(p) for p in problems]


def test_mtls_modes_load_and_bad_ones_are_pointed_at() -> None:
    (mesh, service) = load_text(
        dedent("""\
            apiVersion: gossamer.dev/v1alpha1
            kind: Mesh
            metadata: {name: m}
            spec: {mtls: {mode: PERMISSIVE}}
            ---
            apiVersion: gossamer.dev/v1alpha1
            kind: Service
            metadata: {name: legacy}
            spec: {mtls: {mode: DISABLE}}
            """),
        "mesh.yaml",
    )
    assert isinstance(mesh.resource, models.Mesh)
    assert mesh.resource.spec.mtls.mode == "PERMISSIVE"
    assert isinstance(service.resource, models.Service)
    assert service.resource.spec.mtls is not None
    assert service.resource.spec.mtls.mode == "DISABLE"
    assert models.ServiceSpec().mtls is None  # the Mesh's mode applies
    assert models.MeshSpec().mtls.mode == "STRICT"

    assert _problems("""\
        apiVersion: gossamer.dev/v1alpha1
        kind: Service
        metadata: {name: a}
        spec:
          mtls: {mode: strict}
        """) == ["shop.yaml:5:10: spec.mtls.mode: must be one of: STRICT, PERMISSIVE, DISABLE"]
