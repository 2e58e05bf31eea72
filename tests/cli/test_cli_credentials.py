"""How the CLI finds the operator API's token and CA bundle: the mesh's state dir, or the env."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from gossamer.cli.main import CommandError
from gossamer.cli.resources import control_plane_target

URL = "https://127.0.0.1:4443"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("GOSSAMER_TOKEN", "GOSSAMER_CA_BUNDLE", "GOSSAMER_CONTROL_PLANE"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "status.json").write_text(json.dumps({"controlPlane": URL}))
    cp = tmp_path / "control-plane"
    cp.mkdir()
    (cp / "admin.token").write_text("gso_0123456789abcdef.secret\n")
    (cp / "ca-bundle.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    return tmp_path


def args(state: Path, url: str | None = None) -> argparse.Namespace:
    return argparse.Namespace(state_dir=str(state), control_plane=url)


def test_a_mesh_started_by_up_needs_nothing_else(state: Path) -> None:
    url, creds = control_plane_target(args(state))
    assert url == URL
    assert creds.token == "gso_0123456789abcdef.secret"
    assert creds.ca_bundle == state / "control-plane" / "ca-bundle.pem"
    assert "secret" not in repr(creds)
    # The same URL given explicitly is the same mesh: same credentials.
    assert control_plane_target(args(state, URL + "/"))[1] == creds


def test_the_environment_wins_and_another_url_gets_no_local_secrets(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GOSSAMER_TOKEN", "gso_fedcba9876543210.other")
    _, creds = control_plane_target(args(state))
    assert creds.token == "gso_fedcba9876543210.other"
    assert creds.ca_bundle == state / "control-plane" / "ca-bundle.pem"

    monkeypatch.delenv("GOSSAMER_TOKEN")
    url, creds = control_plane_target(args(state, "https://10.0.0.9:4443"))
    assert url == "https://10.0.0.9:4443"
    assert (creds.token, creds.ca_bundle) == (None, None)
    monkeypatch.setenv("GOSSAMER_CA_BUNDLE", "/etc/mesh/bundle.pem")
    assert control_plane_target(args(state, url))[1].ca_bundle == Path("/etc/mesh/bundle.pem")


def test_no_mesh_and_no_url_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOSSAMER_CONTROL_PLANE", raising=False)
    with pytest.raises(CommandError, match="no running mesh found"):
        control_plane_target(args(tmp_path / "nothing"))
