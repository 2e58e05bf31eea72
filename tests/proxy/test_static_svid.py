"""`gossamer proxy --snapshot FILE --svid-cert C --svid-key K`: mTLS, the SVID managed elsewhere."""

from __future__ import annotations

import subprocess
from pathlib import Path

import msgspec
import pytest
from test_agent_fakes import make_snapshot
from test_main_subprocess import DEADLINE, PROXY, get, start_proxy, stop, wait_ready_file
from test_mtls_support import make_pki, spiffe, with_tls

from gossamer import snapshot as snapshot_mod


@pytest.mark.integration
def test_a_static_svid_serves_strict_mtls(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    files = pki.svid("web")
    snap = with_tls(make_snapshot(PROXY), "STRICT", pki.bundle_pem)
    snap_file = tmp_path / "snapshot.json"
    snap_file.write_bytes(snapshot_mod.encode(snap))
    ready_file = tmp_path / "ready.json"
    proc = start_proxy(
        "--service", "web", "--proxy-id", PROXY, "--snapshot", str(snap_file),
        "--svid-cert", str(files.cert_chain), "--svid-key", str(files.key),
        "--ready-file", str(ready_file), "--drain-timeout", "1",
    )  # fmt: skip
    try:
        doc = wait_ready_file(proc, ready_file)
        status, body = get(f"http://{doc['admin']}/config")
        assert status == 200
        tls = msgspec.json.decode(body)["tls"]
        assert tls["mode"] == "STRICT"
        assert tls["svidLoaded"] is True
        assert tls["spiffeId"] == spiffe("web")
        # The inbound listener speaks mTLS with that SVID: openssl sees its SPIFFE ID.
        client = pki.svid("caller")
        out = subprocess.run(
            [
                "openssl", "s_client", "-connect", doc["inbound"], "-tls1_3",
                "-CAfile", str(pki.bundle_file), "-cert", str(client.cert_chain),
                "-key", str(client.key), "-verify_return_error", "-showcerts",
            ],
            input=b"", capture_output=True, timeout=DEADLINE, check=False,
        )  # fmt: skip
        text = out.stdout.decode()
        assert "Verify return code: 0 (ok)" in text, out.stderr.decode()
        assert "TLSv1.3" in text
    finally:
        code, err = stop(proc)
    assert code == 0, err
    assert "Traceback" not in err


def test_static_svid_flags_are_checked(tmp_path: Path) -> None:
    cases = [
        (["--snapshot", "s.json", "--svid-cert", "c.pem"], "--svid-cert and --svid-key go"),
        (
            ["--control-plane", "https://127.0.0.1:1", "--ca-bundle", "b.pem",
             "--svid-cert", "c.pem", "--svid-key", "k.pem"],
            "--svid-cert is for --snapshot",
        ),
    ]  # fmt: skip
    for args, message in cases:
        proc = start_proxy("--service", "web", "--proxy-id", PROXY, *args)
        _, err = proc.communicate(timeout=DEADLINE)
        assert proc.returncode == 2
        assert message in err.decode()


@pytest.mark.integration
def test_an_unusable_static_svid_is_one_line_and_exit_1(tmp_path: Path) -> None:
    snap_file = tmp_path / "snapshot.json"
    snap_file.write_bytes(snapshot_mod.encode(make_snapshot(PROXY)))
    cert = tmp_path / "c.pem"
    cert.write_text("not a certificate\n")
    key = tmp_path / "k.pem"
    key.write_text("not a key\n")
    key.chmod(0o600)
    proc = start_proxy(
        "--service", "web", "--proxy-id", PROXY, "--snapshot", str(snap_file),
        "--svid-cert", str(cert), "--svid-key", str(key),
    )  # fmt: skip
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1
    assert "--svid-cert/--svid-key:" in err.decode()
    assert "Traceback" not in err.decode()
