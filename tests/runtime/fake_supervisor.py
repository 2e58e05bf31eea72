"""A supervisor process running a mesh with the fake components, for tests that kill it outright.

Usage: fake_supervisor.py MESH_FILE STATE_DIR. Like `gossamer up --supervise` with FAKE_GOSSAMER in
place of the real proxy and control plane: it writes status.json (state "ready") and then waits.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from runtime_fakes import FAKE_GOSSAMER

from gossamer.config.loader import load_text
from gossamer.runtime.logs import LogMux
from gossamer.runtime.plan import build_plan
from gossamer.runtime.state import StateDir
from gossamer.runtime.supervisor import RuntimeOptions, Supervisor


def main() -> int:
    file, state_dir = Path(sys.argv[1]), Path(sys.argv[2])
    plan = build_plan([item.resource for item in load_text(file.read_text())], file.parent)

    def apply(api: str, resources: list[dict[str, Any]]) -> None:
        pass

    options = RuntimeOptions(
        state=StateDir(state_dir), file=file, gossamer=FAKE_GOSSAMER, start_timeout=20.0
    )
    sup = Supervisor(plan, options, LogMux(sys.stdout), apply)
    try:
        sup.start()
        sup.wait()
    finally:
        sup.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
