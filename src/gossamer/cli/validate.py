"""`gossamer validate FILE...`: check configuration files offline, reporting every problem."""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from typing import Any

from gossamer.config import models
from gossamer.config.errors import plural
from gossamer.config.loader import Loaded, expand_paths
from gossamer.config.validate import collect_and_check


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "validate",
        help="check configuration files without running anything",
        description=(
            "Load the YAML files (a directory: its *.yaml and *.yml files) as one mesh and check "
            "them: schema, field values, and references between resources. Prints every problem "
            "as FILE:LINE:COLUMN: FIELD: MESSAGE and exits 1 if there is any."
        ),
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="YAML file or directory")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    paths: list[str] = list(args.files)
    missing = [path for path in paths if not os.path.exists(path)]
    if missing:
        # Printed here rather than raised as CommandError: under `python -m gossamer.cli.main`
        # that class exists twice (__main__ and gossamer.cli.main) and would escape as a traceback.
        for path in missing:
            print(f"gossamer validate: {path}: no such file or directory", file=sys.stderr)
        return 1
    # Every problem at once: cross-resource checks run on the documents that did load too (a
    # Service that failed to load still counts as known, so its users are not reported again).
    loaded, problems = collect_and_check(paths)
    problems.sort(key=lambda p: p.sort_key())
    if problems:
        for problem in problems:
            print(problem)
        print(f"{plural(len(problems), 'problem')} found")
        return 1
    for path in paths:
        files, _ = expand_paths([path])
        mine = [r for r in loaded if r.filename in files]
        print(f"{path}: ok ({_summary(mine)})")
    return 0


def _summary(resources: list[Loaded]) -> str:
    counts: Counter[str] = Counter(r.resource.kind for r in resources)
    parts = [f"{counts[k]} {k}" for k in models.KINDS if counts[k]]
    text = plural(len(resources), "resource")
    return f"{text}: {', '.join(parts)}" if parts else text
