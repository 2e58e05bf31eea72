"""The `gossamer` entry point: exit codes and output hygiene shared by every command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop" / "mesh.yaml"


def test_a_reader_that_leaves_early_gets_no_traceback() -> None:
    """`gossamer ... | head` must end quietly with 141 (SIGPIPE's status), never a traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gossamer", "validate", str(SHOP)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the command writes a byte
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141
    assert b"Traceback" not in err
    assert b"BrokenPipe" not in err


def test_no_command_prints_help_and_exits_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gossamer"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "usage: gossamer" in proc.stdout
