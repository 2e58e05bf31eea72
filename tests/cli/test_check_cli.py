"""`gossamer check` against a real control plane: healthy, expiring, expired, unreachable."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
from test_ca_cli import Served, gossamer, serve

from gossamer.cli.main import main
from gossamer.control.ca_service import (
    KEY_FILE,
    KEYS_DIR,
    STATE_KEY,
    AuthorityRecord,
    CaState,
)
from gossamer.control.registry import Registration, SvidStatus, registry_key
from gossamer.control.rotation import RotationState
from gossamer.control.store.sqlite import SqliteStore
from gossamer.security.bundle import fingerprint
from gossamer.security.ca import CertificateAuthority
from gossamer.security.csr import write_private_file

DAY = dt.timedelta(days=1)


def make_root(valid_days: float, started_days_ago: float) -> CertificateAuthority:
    now = dt.datetime.now(dt.UTC)
    return CertificateAuthority.create_root(
        "gossamer.local", validity=valid_days * DAY, now=now - started_days_ago * DAY
    )


def record(ca: CertificateAuthority) -> AuthorityRecord:
    return AuthorityRecord(
        fingerprint=fingerprint(ca.cert), cert=ca.cert_pem().decode(), added=time.time()
    )


def proxy(proxy_id: str, signer: str, not_after: float) -> Registration:
    svid = SvidStatus(
        spiffe_id="spiffe://gossamer.local/ns/default/sa/pricing",
        serial="0a",
        not_after=not_after,
        signer=signer,
    )
    return Registration(
        proxy_id=proxy_id,
        service="pricing",
        inbound="127.0.0.1:9",
        app_port=8080,
        ready=True,
        svid=svid,
    )


@asynccontextmanager
async def serving_with_env(state: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Served]:
    monkeypatch.setenv("GOSSAMER_STATE_DIR", str(state.parent / "no-mesh"))
    async with serve(state) as s:
        monkeypatch.setenv("GOSSAMER_TOKEN", s.cp.admin_token_file.read_text().strip())
        monkeypatch.setenv("GOSSAMER_CA_BUNDLE", str(s.cp.ca.bundle_path))
        yield s


async def test_a_healthy_mesh_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving_with_env(tmp_path / "cp", monkeypatch) as served:
        code, out, err = await gossamer(capsys, served, "check")
        assert code == 0, out + err
        assert "[ok]   the control plane answers" in out
        assert "[ok]   the API's certificate verifies with the mesh's bundle" in out
        assert "[ok]   root CA" in out
        assert "issues SVIDs" in out
        assert "[FAIL]" not in out
        assert "[warn]" not in out
        code, out, _ = await gossamer(capsys, served, "check", "--json")
        assert code == 0
        doc = json.loads(out)
        assert doc["ok"]
        assert doc["failures"] == 0
        assert {c["level"] for c in doc["checks"]} <= {"ok", "info"}


async def test_a_root_near_expiry_warns_without_failing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "cp"
    state.mkdir()
    # An operator's own root with 10 days left (one the mesh generated would be rotated
    # automatically instead).
    near = make_root(valid_days=12, started_days_ago=2)
    write_private_file(state / KEY_FILE, near.private_key_pem())
    ca_state = CaState(
        trust_domain="gossamer.local",
        active=fingerprint(near.cert),
        authorities=(msgspec.structs.replace(record(near), origin="imported"),),
    )
    store = await SqliteStore.open(state / "store.sqlite")
    await store.put(STATE_KEY, msgspec.json.encode(ca_state))
    await store.close()
    async with serving_with_env(state, monkeypatch) as served:
        code, out, err = await gossamer(capsys, served, "check")
    assert code == 0, out + err
    assert "[warn] root CA" in out
    assert "rotate it soon with gossamer ca rotate" in out
    assert "[FAIL]" not in out
    assert "ok: nothing failed" in out


async def test_expired_root_and_svids_fail_and_a_stalled_rotation_is_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rotation away from a root that expired meanwhile, held up by a proxy whose SVID (from
    that root) expired: check names all of it and exits 1."""
    state = tmp_path / "cp"
    state.mkdir()
    expired = make_root(valid_days=30, started_days_ago=60)
    near = make_root(valid_days=12, started_days_ago=2)
    old_fp, new_fp = fingerprint(expired.cert), fingerprint(near.cert)
    now = time.time()
    write_private_file(state / KEY_FILE, near.private_key_pem())
    (state / KEYS_DIR).mkdir(mode=0o700)
    write_private_file(state / KEYS_DIR / f"{old_fp}.pem", expired.private_key_pem())
    rotation = RotationState(
        id="r1",
        phase="reissuing",
        old=old_fp,
        new=new_fp,
        new_root=new_fp,
        started=now - 120,
        phase_started=now - 100,
        phase_timeout=10,
    )
    ca_state = CaState(
        trust_domain="gossamer.local",
        active=new_fp,
        authorities=(record(expired), record(near)),
        rotation=rotation,
    )
    store = await SqliteStore.open(state / "store.sqlite")
    await store.put(STATE_KEY, msgspec.json.encode(ca_state))
    for reg in (proxy("old-1", old_fp, now - 3600), proxy("slow-1", new_fp, now + 3600)):
        await store.put(registry_key(reg.proxy_id), msgspec.json.encode(reg))
    await store.close()

    async with serving_with_env(state, monkeypatch) as served:
        code, out, err = await gossamer(capsys, served, "check")
        assert code == 1, out + err
        lines = out.splitlines()
        assert any(line.startswith("[FAIL] root CA") and "EXPIRED" in line for line in lines)
        assert any(line.startswith("[warn] root CA") and "issues SVIDs" in line for line in lines)
        assert any(line.startswith("[FAIL] old-1: SVID") and "EXPIRED" in line for line in lines)
        assert any(
            line.startswith("[warn] slow-1: SVID") and "renewal is overdue" in line
            for line in lines
        )
        assert any(line.startswith("[warn] rotation r1 in progress") for line in lines)
        assert "old-1 still serve an SVID from the old CA" in out
        assert "FAILED: 2 check(s) failed" in out
        code, out, _ = await gossamer(capsys, served, "check", "--json")
        assert code == 1
        assert json.loads(out)["failures"] == 2


def test_an_unreachable_control_plane_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GOSSAMER_STATE_DIR", str(tmp_path / "no-mesh"))
    monkeypatch.delenv("GOSSAMER_CA_BUNDLE", raising=False)
    code = main(["check", "--control-plane", "https://127.0.0.1:1"])
    out = capsys.readouterr().out
    assert code == 1
    assert out.startswith("control plane\n-------------\n[FAIL] no control plane at")
