"""`gossamer analyze` on files and on a real control plane, and its part in `gossamer check`."""

from __future__ import annotations

import json
from pathlib import Path
from textwrap import dedent

import msgspec
import pytest
from test_ca_cli import gossamer, serve

from gossamer.cli.main import main
from gossamer.control.registry import Registration, registry_key
from gossamer.control.store.sqlite import SqliteStore

MESH = dedent("""\
    apiVersion: gossamer.dev/v1alpha1
    kind: Service
    metadata: {name: pricing}
    spec:
      subsets:
        - {name: v1, labels: {version: v1}}
        - {name: v2, labels: {version: v2}, replicas: 0}
    ---
    apiVersion: gossamer.dev/v1alpha1
    kind: HTTPRoute
    metadata: {name: pricing}
    spec:
      parentRefs: [{name: pricing}]
      rules:
        - backendRefs:
            - {name: pricing, subset: v1, weight: 90}
            - {name: pricing, subset: v2, weight: 10}
        - backendRefs: [{name: pricing, subset: v1}]
    """)
V2_LINE = 17  # "- {name: pricing, subset: v2, weight: 10}"
SHADOWED_LINE = 18  # the second rule, a catch-all after a catch-all

ROUTE_TO_V1 = dedent("""\
    apiVersion: gossamer.dev/v1alpha1
    kind: HTTPRoute
    metadata: {name: pricing}
    spec:
      parentRefs: [{name: pricing}]
      rules:
        - backendRefs: [{name: pricing, subset: v1}]
    """)

CLEAN = dedent("""\
    apiVersion: gossamer.dev/v1alpha1
    kind: Service
    metadata: {name: web}
    """)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_files_print_a_table_with_file_and_line_and_exit_1_on_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "mesh.yaml", MESH)
    code = main(["analyze", "-f", str(path)])
    out = capsys.readouterr().out
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split() == ["CODE", "SEVERITY", "RESOURCE", "WHERE", "MESSAGE", "HINT"]
    error = next(line for line in lines if line.startswith("GSM001"))
    assert f"{path}:{V2_LINE} spec.rules[0].backendRefs[1]" in error
    assert "HTTPRoute/default/pricing" in error
    assert "error" in error
    shadowed = next(line for line in lines if line.startswith("GSM010"))
    assert f"{path}:{SHADOWED_LINE} spec.rules[1]" in shadowed
    assert lines[-1].startswith("1 error(s), 1 warning(s), 0 info")


def test_json_output_and_fail_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "mesh.yaml", MESH)
    code = main(["analyze", "-f", str(path), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1
    assert (doc["ok"], doc["errors"], doc["warnings"], doc["infos"]) == (False, 1, 1, 0)
    first = doc["findings"][0]
    assert first["code"] == "GSM001"
    assert first["severity"] == "error"
    assert (first["file"], first["line"]) == (str(path), V2_LINE)
    assert first["hint"]
    # Only a warning left: it fails only with --fail-on warning.
    fixed = write(tmp_path, "fixed.yaml", MESH.replace("replicas: 0", "replicas: 1"))
    assert main(["analyze", "-f", str(fixed)]) == 0
    assert "GSM010" in capsys.readouterr().out
    assert main(["analyze", "-f", str(fixed), "--fail-on", "warning"]) == 1
    capsys.readouterr()


def test_a_clean_file_a_broken_one_and_a_missing_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean = write(tmp_path, "clean.yaml", CLEAN)
    assert main(["analyze", "-f", str(clean), "--fail-on", "info"]) == 0
    assert capsys.readouterr().out.strip() == f"no problems found in {clean}"
    broken = write(tmp_path, "broken.yaml", CLEAN + "spec: {replicas: -1}\n")
    assert main(["analyze", "-f", str(broken), "--json"]) == 1
    [finding] = json.loads(capsys.readouterr().out)["findings"]
    assert finding["code"] == "GSM000"
    assert (finding["file"], finding["line"], finding["path"]) == (
        str(broken),
        4,
        "spec.replicas",
    )
    assert main(["analyze", "-f", str(tmp_path / "nope.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gossamer analyze:")
    assert "no such file or directory" in err
    assert main(["analyze", "--with-mesh"]) == 1
    assert "--with-mesh needs -f FILE" in capsys.readouterr().err


async def test_the_live_mesh_uses_the_registry_and_check_fails_on_its_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """pricing v1 has a registered endpoint, v2 none: the route's 10% to v2 is an error."""
    state = tmp_path / "cp"
    state.mkdir()
    store = await SqliteStore.open(state / "store.sqlite")
    reg = Registration(
        proxy_id="pricing-v1-0",
        service="pricing",
        subset="v1",
        labels={"version": "v1"},
        inbound="127.0.0.1:9",
        app_port=8080,
        ready=True,
        healthy=True,
    )
    await store.put(registry_key(reg.proxy_id), msgspec.json.encode(reg))
    await store.close()
    # v2's replicas: 1 in the file, yet nothing registered: only the live view sees it.
    path = write(tmp_path, "mesh.yaml", MESH.replace("replicas: 0", "replicas: 1"))
    monkeypatch.setenv("GOSSAMER_STATE_DIR", str(tmp_path / "no-mesh"))
    async with serve(state) as served:
        monkeypatch.setenv("GOSSAMER_TOKEN", served.cp.admin_token_file.read_text().strip())
        monkeypatch.setenv("GOSSAMER_CA_BUNDLE", str(served.cp.ca.bundle_path))
        code, out, err = await gossamer(capsys, served, "check", "--json")
        assert code == 0, out + err
        config = [c for c in json.loads(out)["checks"] if c["group"] == "config"]
        assert [c["level"] for c in config] == ["ok"]
        assert "passes analyze" in config[0]["message"]

        code, out, err = await gossamer(capsys, served, "apply", "-f", str(path))
        assert code == 0, err

        code, out, err = await gossamer(capsys, served, "analyze", "--json")
        assert code == 1, out + err
        doc = json.loads(out)
        assert doc["source"] == served.url
        errors = [f for f in doc["findings"] if f["severity"] == "error"]
        assert [(f["code"], f["path"]) for f in errors] == [
            ("GSM001", "spec.rules[0].backendRefs[1]")
        ]
        assert "no registered endpoint" in errors[0]["message"]
        assert errors[0]["file"] is None
        assert errors[0]["line"] is None

        code, out, err = await gossamer(capsys, served, "check")
        assert code == 1, out + err
        assert "config\n------\n" in out
        assert any(
            line.startswith("[FAIL] GSM001 HTTPRoute/default/pricing spec.rules[0]")
            for line in out.splitlines()
        )
        assert any(line.startswith("[warn] GSM010") for line in out.splitlines())

        # A new version of the route, before it is applied: alone it names an unknown service;
        # on the running mesh it replaces the stored route, and sends nothing to v2 any more.
        fix = write(tmp_path, "fix.yaml", ROUTE_TO_V1)
        code, out, err = await gossamer(capsys, served, "analyze", "-f", str(fix), "--json")
        assert code == 1
        assert {f["code"] for f in json.loads(out)["findings"]} == {"GSM000"}
        code, out, err = await gossamer(
            capsys, served, "analyze", "-f", str(fix), "--with-mesh", "--json"
        )
        assert code == 0, out + err
        doc = json.loads(out)
        assert doc["source"] == f"{fix} on {served.url}"
        assert doc["findings"] == []
