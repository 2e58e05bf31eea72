"""`gossamer up/down/status` without a real mesh: file problems, state-dir errors, status output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_fakes import FakeApi, fake_api

from gossamer.cli.main import main
from gossamer.cli.up import format_summary
from gossamer.runtime.ports import free_port
from gossamer.runtime.state import StateDir, write_json_atomic


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def status_doc(state: StateDir, ready_admin: str, dead_admin: str) -> dict:
    def replica(name: str, subset: str | None, admin: str) -> dict:
        return {
            "replica": name,
            "subset": subset,
            "pid": os.getpid(),
            "ready": True,
            "inbound": "127.0.0.1:1001",
            "outbound": "127.0.0.1:1002",
            "admin": admin,
            "app": "127.0.0.1:1003",
            "restarts": 2 if subset == "v2" else 0,
            "proxyRestarts": 1 if subset == "v2" else 0,
        }

    return {
        "controlPlane": "http://127.0.0.1:4000",
        "controlPlaneRestarts": 1,
        "stateDir": str(state.root),
        "file": "/shop/mesh.yaml",
        "state": "ready",
        "supervisorPid": os.getpid(),
        "published": {"frontend": "http://127.0.0.1:5000"},
        "services": {
            "pricing": [
                replica("pricing-v1-0", "v1", ready_admin),
                replica("pricing-v2-0", "v2", dead_admin),
            ]
        },
        "publishers": {},
    }


@pytest.fixture
def admin() -> FakeApi:
    with fake_api() as fake:
        fake.on("GET", "/ready", 200, {})
        yield fake


def test_status_table_checks_readiness_live(admin, tmp_path, capsys) -> None:
    state = StateDir(tmp_path / "state")
    state.root.mkdir()
    dead = f"127.0.0.1:{free_port()}"
    write_json_atomic(state.status_path, status_doc(state, admin.address, dead))
    code, out, _ = run(capsys, "status", "--state-dir", str(state.root))
    assert code == 0
    pid = os.getpid()
    width = max(len("ADMIN"), len(admin.address), len(dead))
    assert out.splitlines() == [
        f"control plane: http://127.0.0.1:4000 (restarts: 1)   state dir: {state.root}",
        "published: frontend -> http://127.0.0.1:5000",
        "",
        "SERVICE   REPLICA        SUBSET   READY   PID"
        + " " * (len(str(pid)) - 3)
        + "   APP              INBOUND          OUTBOUND         "
        + "ADMIN".ljust(width)
        + "   RESTARTS",
        f"pricing   pricing-v1-0   v1       yes     {pid}   127.0.0.1:1003   127.0.0.1:1001"
        f"   127.0.0.1:1002   {admin.address.ljust(width)}   0/0",
        f"pricing   pricing-v2-0   v2       no      {pid}   127.0.0.1:1003   127.0.0.1:1001"
        f"   127.0.0.1:1002   {dead.ljust(width)}   2/1",
    ]


def test_status_json_keeps_the_documented_shape(admin, tmp_path, capsys) -> None:
    state = StateDir(tmp_path / "state")
    state.root.mkdir()
    dead = f"127.0.0.1:{free_port()}"
    doc = status_doc(state, admin.address, dead)
    write_json_atomic(state.status_path, doc)
    code, out, _ = run(capsys, "status", "--json", "--state-dir", str(state.root))
    assert code == 0
    shown = json.loads(out)
    doc["services"]["pricing"][1]["ready"] = False
    assert shown == doc


def test_status_and_down_without_a_mesh(tmp_path, capsys) -> None:
    root = tmp_path / "none"
    code, _, err = run(capsys, "status", "--state-dir", str(root))
    assert code == 1
    assert err == (
        f"gossamer status: no mesh running from {root} "
        f"(start one with: gossamer up -d FILE --state-dir {root})\n"
    )
    assert run(capsys, "down", "--state-dir", str(root)) == (
        0,
        f"no mesh running from {root}\n",
        "",
    )


def test_up_reports_every_problem_of_the_file_with_its_line(tmp_path, capsys) -> None:
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text(
        "apiVersion: gossamer.dev/v1alpha1\n"
        "kind: Service\n"
        "metadata: {name: web}\n"
        "spec:\n"
        "  replicas: -1\n"
        "---\n"
        "apiVersion: gossamer.dev/v1alpha1\n"
        "kind: HTTPRoute\n"
        "metadata: {name: r}\n"
        "spec:\n"
        "  parentRefs: [{name: web}]\n"
        "  rules: [{backendRefs: [{name: nowhere}]}]\n"
    )
    code, out, err = run(capsys, "up", str(mesh), "--state-dir", str(tmp_path / "s"))
    assert code == 1
    assert out == ""
    assert err.startswith(f"gossamer up: {mesh} has problems:\n{mesh}:5:")
    assert not (tmp_path / "s").exists()  # nothing was started


def test_up_with_no_file(tmp_path, capsys) -> None:
    code, _, err = run(capsys, "up", str(tmp_path / "nope.yaml"), "--state-dir", str(tmp_path))
    assert code == 1
    assert err == f"gossamer up: {tmp_path / 'nope.yaml'}: no such file\n"


def test_up_refuses_a_second_mesh_in_the_same_state_dir(tmp_path, capsys) -> None:
    state = StateDir(tmp_path / "state")
    state.root.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state.pid_path.write_text(f"{sleeper.pid}\n")
        code, _, err = run(capsys, "up", "mesh.yaml", "--state-dir", str(state.root))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert code == 1
    assert f"a mesh is already running from {state.root} (supervisor pid {sleeper.pid})" in err
    assert f"gossamer down --state-dir {state.root}" in err


def test_summary_says_where_everything_is() -> None:
    doc = {
        "file": "/shop/mesh.yaml",
        "controlPlane": "http://127.0.0.1:4000",
        "published": {"frontend": "http://127.0.0.1:5000"},
        "services": {
            "pricing": [{"replica": "pricing-v1-0"}, {"replica": "pricing-v2-0"}],
            "frontend": [{"replica": "frontend-0"}],
        },
    }
    # One line per service, the published one with its URL.
    assert format_summary(doc) == (
        "mesh ready: /shop/mesh.yaml\n"
        "  control plane   http://127.0.0.1:4000\n"
        "  frontend        frontend-0    http://127.0.0.1:5000 (published)\n"
        "  pricing         pricing-v1-0, pricing-v2-0"
    )


def test_paths_are_reported_absolute(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GOSSAMER_STATE_DIR", raising=False)
    code, out, _ = run(capsys, "down")
    assert (code, out) == (0, f"no mesh running from {tmp_path / '.gossamer'}\n")
