"""Turn per-round figures into medians, ratios and goals; write latest.json and the docs section."""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TARGETS = (
    "direct",
    "gossamer",
    "envoy",
    "nginx",
    "haproxy",
    "mesh-path",
    "mesh-path-mtls",
    "envoy-mesh-mtls",
    "nginx-mesh-tls",
)
PEERS = ("envoy", "nginx", "haproxy")
# Two hops with mutual TLS between them: Gossamer's sidecars against the peers doing the same.
MTLS_TARGET = "mesh-path-mtls"
MTLS_PEERS = ("envoy-mesh-mtls", "nginx-mesh-tls")
# The figures every target object carries (the interface scripts rely on), then the extra ones.
KEYS = ("rps_c50", "p50_us_c1", "p99_us_c1", "p50_us_c50", "p99_us_c50", "rss_mib")
EXTRA_KEYS = ("rps_c1", "errors")
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"

# The goals for one sidecar.
RPS_GOAL = 0.7  # at least this fraction of a peer's requests/s
ADDED_P50_GOAL = 1.3  # at most this multiple of a peer's added p50 at c=1
RSS_GOAL_MIB = 40.0

Round = Mapping[str, float | int | None]


def median(values: Sequence[float | int | None]) -> float | None:
    present = [float(v) for v in values if v is not None]
    return statistics.median(present) if present else None


def combine(rounds: Sequence[Round], error: str | None = None) -> dict[str, Any]:
    """One target's object: the median of each figure across rounds (errors are summed)."""
    out: dict[str, Any] = {}
    for key in KEYS + EXTRA_KEYS:
        if key == "errors":
            out[key] = int(sum(int(r.get(key) or 0) for r in rounds))
        else:
            value = median([r.get(key) for r in rounds])
            out[key] = None if value is None else round(value, 1)
    out["rounds"] = len(rounds)
    if error:
        out["error"] = error
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 3)


def ratios(targets: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Gossamer against each peer: req/s at c=50, added p50 at c=1 (minus direct's), RSS."""
    direct_p50 = targets.get("direct", {}).get("p50_us_c1")
    added: dict[str, float | None] = {}
    for name in TARGETS[1:]:
        p50 = targets.get(name, {}).get("p50_us_c1")
        added[name] = None if p50 is None or direct_p50 is None else round(p50 - direct_p50, 1)
    g = targets.get("gossamer", {})
    m = targets.get(MTLS_TARGET, {})
    return {
        "added_p50_us_c1": added,
        "rps_c50": {
            f"gossamer/{p}": _ratio(g.get("rps_c50"), targets.get(p, {}).get("rps_c50"))
            for p in PEERS
        },
        "added_p50_c1": {f"gossamer/{p}": _ratio(added["gossamer"], added[p]) for p in PEERS},
        "rss": {
            f"gossamer/{p}": _ratio(g.get("rss_mib"), targets.get(p, {}).get("rss_mib"))
            for p in PEERS
        },
        # The mTLS mesh path against each peer's, and against Gossamer's own plaintext path.
        "mtls": {
            "rps_c50": {
                f"{MTLS_TARGET}/{p}": _ratio(m.get("rps_c50"), targets.get(p, {}).get("rps_c50"))
                for p in (*MTLS_PEERS, "mesh-path")
            },
            "added_p50_c1": {
                f"{MTLS_TARGET}/{p}": _ratio(added[MTLS_TARGET], added[p])
                for p in (*MTLS_PEERS, "mesh-path")
            },
        },
    }


def goals(targets: Mapping[str, Mapping[str, Any]], r: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it was met (None: unknown)."""
    out: list[dict[str, Any]] = []
    for peer in ("envoy", "nginx"):
        value = r["rps_c50"][f"gossamer/{peer}"]
        out.append(
            {
                "goal": f"gossamer req/s at c=50 >= {RPS_GOAL}x {peer}",
                "value": value,
                "met": None if value is None else value >= RPS_GOAL,
            }
        )
    for peer in ("envoy", "nginx"):
        value = r["added_p50_c1"][f"gossamer/{peer}"]
        out.append(
            {
                "goal": f"gossamer added p50 at c=1 <= {ADDED_P50_GOAL}x {peer}'s",
                "value": value,
                "met": None if value is None else value <= ADDED_P50_GOAL,
            }
        )
    rss = targets.get("gossamer", {}).get("rss_mib")
    out.append(
        {
            "goal": f"gossamer RSS < {RSS_GOAL_MIB:g} MiB",
            "value": rss,
            "met": None if rss is None else rss < RSS_GOAL_MIB,
        }
    )
    return out


def warnings(
    per_round: Mapping[str, Sequence[Mapping[str, Any]]],
    failed: Mapping[str, str],
    noise_limit_pct: float,
) -> list[str]:
    """One line per target whose runs were disturbed, had failed requests, or lost a round.

    Args:
        per_round: target -> each round's raw figures (with noise_pct_c50/c1 and steal_pct).
        failed: target -> why a round failed, for targets that still have other rounds.
        noise_limit_pct: the share of a core other processes may take before a run is suspect.
    """
    out = []
    for target, rounds in per_round.items():
        noise = [
            max(r.get("noise_pct_c50", 0.0), r.get("noise_pct_c1", 0.0), r.get("steal_pct", 0.0))
            for r in rounds
        ]
        noisy = [n for n in noise if n > noise_limit_pct]
        if noisy:
            out.append(
                f"{target}: in {len(noisy)} of {len(rounds)} rounds other processes or steal took "
                f"more than {noise_limit_pct:g}% of a core ({min(noisy):g}-{max(noisy):g}%)"
            )
        bad = sum(int(r.get("errors") or 0) for r in rounds)
        if bad:
            out.append(f"{target}: {bad} failed requests")
        if target in failed:
            out.append(f"{target}: a round failed: {failed[target]}")
    return out


def document(targets: Mapping[str, dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """latest.json: one top-level object per target (all of TARGETS, always), plus "meta"."""
    doc: dict[str, Any] = {}
    for name in TARGETS:
        doc[name] = targets.get(name) or {**{k: None for k in KEYS}, "error": "not measured"}
    doc["meta"] = meta
    return doc


def write_json(path: Path, doc: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def table(doc: Mapping[str, Any]) -> str:
    """A Markdown table of the figures (readable in a terminal too)."""
    added = doc["meta"]["ratios"]["added_p50_us_c1"]
    lines = [
        "| target | req/s c=50 | p50 c=50 | p99 c=50 | p50 c=1 | p99 c=1 | added p50 c=1 "
        "| RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in TARGETS:
        t = doc[name]
        if t.get("rps_c50") is None:
            why = str(t.get("error", "?")).replace("|", "/")
            why = why if len(why) <= 120 else why[:117] + "..."
            lines.append(f"| {name} | not measured: {why} |||||||")
            continue
        lines.append(
            f"| {name} | {_fmt(t['rps_c50'])} | {_fmt(t['p50_us_c50'])} µs | "
            f"{_fmt(t['p99_us_c50'])} µs | {_fmt(t['p50_us_c1'])} µs | {_fmt(t['p99_us_c1'])} µs | "
            f"{_fmt(added.get(name)) + ' µs' if added.get(name) is not None else '-'} | "
            f"{_fmt(t['rss_mib'], 1)} |"
        )
    return "\n".join(lines)


def ratio_lines(doc: Mapping[str, Any]) -> str:
    r = doc["meta"]["ratios"]
    lines = []
    for peer in PEERS:
        lines.append(
            f"- Gossamer / {peer}: req/s {_fmt(r['rps_c50'][f'gossamer/{peer}'], 2)}x, "
            f"added p50 at c=1 {_fmt(r['added_p50_c1'][f'gossamer/{peer}'], 2)}x, "
            f"RSS {_fmt(r['rss'][f'gossamer/{peer}'], 2)}x"
        )
    mtls = r.get("mtls")
    if mtls is not None:
        for peer in (*MTLS_PEERS, "mesh-path"):
            key = f"{MTLS_TARGET}/{peer}"
            lines.append(
                f"- {MTLS_TARGET} / {peer}: req/s {_fmt(mtls['rps_c50'][key], 2)}x, "
                f"added p50 at c=1 {_fmt(mtls['added_p50_c1'][key], 2)}x"
            )
    for g in doc["meta"]["goals"]:
        mark = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
        lines.append(f"- Goal: {g['goal']}: {_fmt(g['value'], 2)} ({mark})")
    return "\n".join(lines)


def markdown_section(doc: Mapping[str, Any]) -> str:
    meta = doc["meta"]
    m = meta["machine"]
    warnings = "".join(f"- Warning: {w}\n" for w in meta.get("warnings", []))
    return (
        f"{BEGIN}\n"
        f"_Generated by `bench/run` on {meta['date']}; do not edit by hand._\n\n"
        f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['kernel']}; load average "
        f"{meta['loadavg_start']} at the start, {meta['loadavg_end']} at the end. "
        f"{meta['rounds']} round(s), medians quoted; each run: {meta['warmup_s']:g} s warm-up at "
        f"c=50, then {meta['duration_s']:g} s at c=50 and {meta['duration_s']:g} s at c=1 "
        f"(`wrk -t1 --latency`). {meta['pinning']}\n\n"
        f"Command: `{meta['command']}`\n\n"
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}\n\n"
        f"{table(doc)}\n\n"
        f"{ratio_lines(doc)}\n"
        f"{warnings}"
        f"{END}"
    )


def update_docs(path: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the text between the markers (or append the section if they are absent)."""
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    path.write_text(text)
