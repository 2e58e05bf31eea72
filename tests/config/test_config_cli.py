"""`gossamer validate`: a summary per file when all is well, else every problem and exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from gossamer.cli.main import main

SHOP = Path(__file__).parent / "fixtures" / "shop.yaml"

BROKEN = """\
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata:
  name: pricing
spec:
  subsets:
    - name: v1
      replicas: -1
---
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
          weigth: 10
"""


def test_valid_file_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(SHOP)]) == 0
    out, err = capsys.readouterr()
    assert out == (
        f"{SHOP}: ok (7 resources: 1 Mesh, 4 Service, 1 HTTPRoute, 1 DestinationPolicy)\n"
    )
    assert err == ""


def test_every_problem_then_a_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "shop.yaml"
    path.write_text(BROKEN)
    assert main(["validate", str(path)]) == 1
    out, _ = capsys.readouterr()
    assert out.splitlines() == [
        f"{path}:8:7: spec.subsets[0].replicas: must be >= 0",
        f"{path}:20:11: spec.rules[0].backendRefs[0].weigth: unknown field 'weigth' "
        "(did you mean 'weight'?)",
        "2 problems found",
    ]


def test_reference_problems_across_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-services.yaml").write_text(
        "apiVersion: gossamer.dev/v1alpha1\nkind: Service\nmetadata: {name: pricing}\n"
    )
    (tmp_path / "b-routes.yaml").write_text(
        "apiVersion: gossamer.dev/v1alpha1\nkind: HTTPRoute\nmetadata: {name: r}\n"
        "spec:\n  parentRefs: [{name: pricing}]\n  rules:\n"
        "    - backendRefs: [{name: pricin}]\n"
    )
    assert main(["validate", str(tmp_path)]) == 1
    out, _ = capsys.readouterr()
    route_file = tmp_path / "b-routes.yaml"
    assert out.splitlines() == [
        f"{route_file}:7:22: spec.rules[0].backendRefs[0].name: unknown service 'pricin' "
        "(did you mean 'pricing'?)",
        "1 problem found",
    ]


def test_several_files_each_get_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "apiVersion: gossamer.dev/v1alpha1\nkind: HTTPRoute\nmetadata: {name: catalog}\n"
        "spec:\n  parentRefs: [{name: catalog}]\n"
    )
    assert main(["validate", str(SHOP), str(extra)]) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines()[1] == f"{extra}: ok (1 resource: 1 HTTPRoute)"


def test_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["validate", str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"gossamer validate: {missing}: no such file or directory\n"


def test_yaml_syntax_error_is_reported_not_raised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: gossamer.dev/v1alpha1\nkind: [Service\n")
    assert main(["validate", str(path)]) == 1
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"{path}:3:1: invalid YAML: ")
    assert lines[1] == "1 problem found"


def test_empty_file_is_ok_with_no_resources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok (0 resources)\n"


MIXED = """\
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: pricing}
spec:
  replicas: -1
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {name: catalog}
---
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata: {name: shop}
spec:
  parentRefs: [{name: catalog}]
  rules:
    - backendRefs:
        - {name: pricing}
        - {name: catalg}
---
apiVersion: gossamer.dev/v1alpha1
kind: HTTPRoute
metadata: {name: broken}
spec:
  parentRefs: [{name: catalog}]
  hostnames: ["a b"]
  rules:
    - backendRefs:
        - {name: catalog, weight: 0}
"""


def test_document_and_reference_problems_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Reference checks run on what loaded even when some documents did not; a Service that
    failed to load (pricing) is still known, so its users are not reported again."""
    path = tmp_path / "mesh.yaml"
    path.write_text(MIXED)
    assert main(["validate", str(path)]) == 1
    out, _ = capsys.readouterr()
    assert out.splitlines() == [
        f"{path}:5:3: spec.replicas: must be >= 0",
        f"{path}:19:12: spec.rules[0].backendRefs[1].name: unknown service 'catalg' "
        "(did you mean 'catalog'?)",
        f"{path}:26:15: spec.hostnames[0]: invalid hostname 'a b': use DNS labels of letters, "
        "digits and '-' separated by '.', optionally starting with '*.' (no port, no spaces)",
        f"{path}:28:7: spec.rules[0].backendRefs: all backendRefs have weight 0: "
        "no traffic can be routed",
        "4 problems found",
    ]
