"""`gossamer analyze [-f FILE ...]`: config that is legal but wrong, as findings with hints."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gossamer.cli.main import CommandError
from gossamer.cli.resources import (
    ClientApi,
    add_control_plane_args,
    control_plane_target,
    render_table,
)

if TYPE_CHECKING:
    from gossamer.config.analyze import Finding
    from gossamer.config.errors import Problem
    from gossamer.config.loader import Loaded, Unloaded

_FAIL_ON = ("error", "warning", "info")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="find config that is legal but wrong (files, or the running mesh)",
        description="Analyze the configuration, as `istioctl analyze` does: routes to services "
        "with no endpoints, shadowed route rules, policies that select nothing, a DENY that "
        "leaves an ALLOW nothing to allow, unsafe retries, and more. Each finding has a stable "
        "code (docs/analyze.md), a severity, where it is and a hint. With -f, the files are "
        "analyzed as one mesh before they are applied; without, the running mesh's resources "
        "and registered endpoints. Exit status 1 when a finding is at least as severe as "
        "--fail-on (default: error).",
    )
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        metavar="FILE",
        help="a YAML file or directory to analyze instead of the running mesh (repeatable)",
    )
    p.add_argument(
        "--with-mesh",
        action="store_true",
        help="with -f: analyze the files as if applied to the running mesh (its resources, a "
        "file's replacing a stored one of the same kind, namespace and name, and its endpoints)",
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument(
        "--fail-on",
        choices=_FAIL_ON,
        default="error",
        help="the least severe finding that makes the exit status 1",
    )
    add_control_plane_args(p)
    p.set_defaults(func=cmd_analyze)


def cmd_analyze(args: argparse.Namespace) -> int:
    from gossamer.config.analyze import at_least

    if args.with_mesh and not args.filename:
        raise CommandError("--with-mesh needs -f FILE: the files to analyze on the running mesh")
    if args.filename and args.with_mesh:
        url, creds = control_plane_target(args)
        findings = live_findings(ClientApi(url, creds), args.filename)
        source = f"{', '.join(args.filename)} on {url}"
    elif args.filename:
        findings = file_findings(args.filename)
        source = ", ".join(args.filename)
    else:
        url, creds = control_plane_target(args)
        findings = live_findings(ClientApi(url, creds))
        source = url
    failing = at_least(findings, args.fail_on)
    if args.json:
        print(json.dumps(findings_doc(findings, source, not failing), indent=2))
    else:
        print(format_findings(findings, source))
    return 1 if failing else 0


def file_findings(paths: Sequence[str]) -> list[Finding]:
    """Analyze files as one mesh; documents that do not load are GSM000 findings.

    Raises:
        CommandError: a file or directory that does not exist.
    """
    from gossamer.config.analyze import analyze, from_problems, sort_findings

    loaded, problems, unloaded = _load_files(paths)
    return sort_findings(from_problems(problems, loaded) + analyze(loaded, None, unloaded))


def _load_files(paths: Sequence[str]) -> tuple[list[Loaded], list[Problem], list[Unloaded]]:
    from gossamer.config.loader import collect_files, expand_paths

    _, missing = expand_paths(paths)
    if missing:
        raise CommandError("; ".join(str(p) for p in missing))
    unloaded: list[Unloaded] = []
    loaded, problems = collect_files(paths, unloaded)
    return loaded, problems, unloaded


def live_findings(api: ClientApi, paths: Sequence[str] = ()) -> list[Finding]:
    """Analyze what the control plane stores, with the endpoints its registry holds; with
    `paths`, those files' resources replace the stored ones of the same key (as apply would)."""
    from gossamer.config.analyze import Endpoint, Finding, analyze, from_problems, sort_findings
    from gossamer.config.loader import collect_objects
    from gossamer.config.validate import STORED

    files: list[Loaded] = []
    found: list[Finding] = []
    unloaded: list[Unloaded] = []
    if paths:
        files, file_problems, unloaded = _load_files(paths)
        found = from_problems(file_problems, files)
    stored = api.list_resources(None, None)
    items: list[dict[str, Any]] = api.call(api.client.endpoints)
    endpoints = [Endpoint.from_api(item) for item in items]
    kept, problems = collect_objects(stored, STORED, unloaded)
    replaced = {r.key for r in files}
    loaded = [r for r in kept if r.key not in replaced] + files
    found += from_problems(problems, kept)
    named: list[Finding] = []
    for f in found:
        # A stored resource that no longer loads (a newer version's rules): name it anyway.
        if not f.resource and f.path.startswith("resources["):
            index, _, rest = f.path.removeprefix("resources[").partition("].")
            item = stored[int(index)] if index.isdigit() and int(index) < len(stored) else {}
            meta = item.get("metadata") or {}
            key = f"{item.get('kind', '?')}/{meta.get('namespace', 'default')}/{meta.get('name')}"
            f = Finding(f.code, key, rest, f.message, f.hint, f.file, f.line)
        named.append(f)
    return sort_findings(named + analyze(loaded, endpoints, unloaded))


def findings_doc(findings: Sequence[Finding], source: str, ok: bool) -> dict[str, Any]:
    counts = Counter(f.severity for f in findings)
    return {
        "source": source,
        "ok": ok,
        "errors": counts["error"],
        "warnings": counts["warning"],
        "infos": counts["info"],
        "findings": [f.to_dict() for f in findings],
    }


def format_findings(findings: Sequence[Finding], source: str) -> str:
    if not findings:
        return f"no problems found in {source}"
    rows = [
        [f.code, f.severity, f.resource or "-", f.where or "-", f.message, f.hint] for f in findings
    ]
    table = render_table(["CODE", "SEVERITY", "RESOURCE", "WHERE", "MESSAGE", "HINT"], rows)
    return f"{table}\n\n{summary(findings)}"


def summary(findings: Sequence[Finding]) -> str:
    counts = Counter(f.severity for f in findings)
    return (
        f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info "
        "(the codes: docs/analyze.md)"
    )
