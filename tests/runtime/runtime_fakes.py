"""Paths of the fake components the runtime tests run in place of the proxy and control plane."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
FAKE_GOSSAMER = [sys.executable, str(HERE / "fake_gossamer.py")]
FAKE_APP = f"{sys.executable} {HERE / 'fake_app.py'}"
