"""`bench/chaos`: run the chaos scenarios, print scenario / bound / measured, exit 1 on a miss."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chaoslib.mesh import REPO
from chaoslib.scenarios import SCENARIOS, TIME_LIMIT, Result, run

WIDTHS = (16, 44, 50)  # scenario, bound, measured: 120 columns with the verdict


def table(results: Sequence[Result]) -> str:
    """One row per bound (scenario, bound, measured, pass/MISS), long cells wrapped in place."""
    rows = [("scenario", "bound", "measured", "")]
    for r in results:
        if r.error:
            rows.append((r.name, r.bound, r.error, "MISS"))
            continue
        for i, c in enumerate(r.checks):
            rows.append(
                (r.name if i == 0 else "", c.bound, c.measured, "pass" if c.passed else "MISS")
            )
    lines = []
    for row in rows:
        cells = [textwrap.wrap(row[i], WIDTHS[i]) or [""] for i in range(3)]
        for n in range(max(len(c) for c in cells)):
            parts = [
                (c[n] if n < len(c) else "").ljust(w) for c, w in zip(cells, WIDTHS, strict=True)
            ]
            lines.append("  ".join([*parts, row[3] if n == 0 else ""]).rstrip())
    return "\n".join(lines)


def document(results: Sequence[Result], started: dt.datetime) -> dict[str, Any]:
    return {
        "passed": all(r.passed for r in results),
        "scenarios": [r.as_dict() for r in results],
        "meta": {
            "date": started.strftime("%Y-%m-%d %H:%M UTC"),
            "machine": {"nproc": os.cpu_count(), "kernel": f"Linux {platform.release()}"},
            "loadavg_end": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
            "scenario_time_limit_s": TIME_LIMIT,
            "command": os.environ.get("BENCH_COMMAND", "bench/chaos"),
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench/chaos",
        description="Chaos scenarios on meshes from examples/chaos (see docs/chaos.md).",
    )
    p.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable; default: all four)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON, not a table")
    p.add_argument(
        "--output",
        type=Path,
        help="where to write the results (default: bench/results/chaos.json for a full run, "
        "bench/.work/chaos.json for a --scenario run)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work dirs (logs, state)")
    args = p.parse_args(argv)
    names = args.scenario or list(SCENARIOS)
    output = args.output or (
        REPO / "bench/.work/chaos.json" if args.scenario else REPO / "bench/results/chaos.json"
    )

    started = dt.datetime.now(dt.UTC)
    root = Path(tempfile.mkdtemp(prefix="gossamer-chaos-"))
    results = []
    try:
        for name in names:
            print(f"bench/chaos: {name}: {SCENARIOS[name].about}", file=sys.stderr, flush=True)
            work = root / name
            work.mkdir()
            result = run(name, work)
            verdict = "pass" if result.passed else "MISS"
            print(f"bench/chaos: {name}: {verdict} in {result.seconds:.1f} s", file=sys.stderr)
            results.append(result)
    except KeyboardInterrupt:
        return 130
    finally:
        if args.keep:
            print(f"bench/chaos: work dirs kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)

    doc = document(results, started)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(output)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(table(results))
        print(f"wrote {output}")
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
