"""`gossamer control-plane` flags of the one mTLS listener: bad values are one-line usage errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def run(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gossamer.cli.main", "control-plane", "--state-dir",
         str(tmp_path), *flags],
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--svid-ttl", "soon"), "--svid-ttl: 'soon' is not a duration"),
        (("--svid-ttl", "500ms"), "--svid-ttl must be at least 1s"),
        (("--trust-domain", "Shop.Test"), "--trust-domain: trust domain 'Shop.Test' has 'S'"),
        (("--internal-listen", "127.0.0.1:0"), "unrecognized arguments: --internal-listen"),
        (
            ("--heartbeat-ttl", "3", "--registration-expiry", "2"),
            "--registration-expiry must be longer than --heartbeat-ttl (3), got 2",
        ),
        (("--telemetry-interval", "often"), "--telemetry-interval: 'often' is not a duration"),
        (("--telemetry-interval", "0s"), "--telemetry-interval must be longer than 0s"),
        (
            ("--telemetry-interval", "5s", "--telemetry-retention", "8s"),
            "--telemetry-retention (8s) must hold at least two scrapes",
        ),
    ],
)
def test_bad_flags_are_usage_errors(tmp_path: Path, flags: tuple[str, ...], message: str) -> None:
    out = run(tmp_path, *flags)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "ca-key.pem").exists()  # nothing was created
