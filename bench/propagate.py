"""The propagation benchmark behind `bench/propagation`: apply -> every proxy ACKed, over N applies.

It runs `gossamer up -d FILE` in a temp state dir, changes one HTTPRoute's first backend weight N
times through the control plane's `POST /v1/apply`, and after each apply polls `GET /v1/proxies`
until every proxy ACKed the latest Snapshot built for it (ackedVersion == sentVersion ==
currentVersion) and the change reached them: at least one version is new. Proxies the change does
not concern (a published front door only carries its own service's routes) keep their version.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import os
import platform
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import summary

REPO = Path(__file__).resolve().parent.parent
DOCS_BEGIN = "<!-- propagation:begin -->"
DOCS_END = "<!-- propagation:end -->"
GOAL_MS = 1000.0  # the issue: a change reaches all proxies within one second (p99)


class PropagationError(Exception):
    """A step of the benchmark failed; the message says which, in one line."""


def percentile(samples: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): with 20 samples, p99 is the largest."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def changed_route(route: dict[str, Any], step: int) -> dict[str, Any]:
    """The route with its first rule's first backend weight moved by `step`: each apply differs."""
    out = {k: copy.deepcopy(route[k]) for k in ("apiVersion", "kind", "metadata", "spec")}
    rules = out["spec"].get("rules") or [{}]
    refs = rules[0].get("backendRefs")
    if not refs:
        name = out["metadata"]["name"]
        raise PropagationError(f"HTTPRoute {name} has no backendRefs in its first rule to change")
    refs[0]["weight"] = int(route["spec"]["rules"][0]["backendRefs"][0].get("weight", 1)) + step
    out["spec"]["rules"] = rules
    return out


def all_acked(items: Sequence[dict[str, Any]], before: Mapping[str, str | None]) -> bool:
    """Every proxy ACKed the latest Snapshot built for it, and the change is among them.

    The control plane rebuilds every proxy's Snapshot in one pass, so once any version differs
    from `before`, each proxy the change concerns has its new version too; a proxy it does not
    concern keeps its old one, acked.

    Args:
        items: `GET /v1/proxies` items.
        before: proxyId -> sentVersion before the apply (empty: any acked state will do).
    """
    if not items:
        return False
    changed = not before
    for p in items:
        sent, acked = p.get("sentVersion"), p.get("ackedVersion")
        current = p.get("currentVersion", sent)
        if sent is None or acked != sent or current != sent:
            return False
        changed = changed or sent != before.get(p["proxyId"])
    return changed


class Api:
    """The operator API over HTTPS: the admin token and CA bundle from the mesh's state dir."""

    def __init__(self, base: str, state_dir: Path | None = None) -> None:
        self.base = base.rstrip("/")
        self.headers = {"content-type": "application/json"}
        context = None
        if state_dir is not None:
            cp_dir = state_dir / "control-plane"
            token = (cp_dir / "admin.token").read_text().strip()
            self.headers["authorization"] = f"Bearer {token}"
            context = ssl.create_default_context(cafile=str(cp_dir / "ca-bundle.pem"))
        self.opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )

    def call(self, method: str, path: str, body: object = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data=data, method=method, headers=self.headers
        )
        try:
            with self.opener.open(req, timeout=10) as resp:
                out: dict[str, Any] = json.loads(resp.read())
                return out
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise PropagationError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise PropagationError(f"{method} {path}: {exc}") from None

    def proxies(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.call("GET", "/v1/proxies")["items"]
        return items


def wait_acked(
    api: Api, before: Mapping[str, str | None], deadline_s: float, poll_s: float
) -> list[dict[str, Any]]:
    end = time.perf_counter() + deadline_s
    while True:
        items = api.proxies()
        if all_acked(items, before):
            return items
        if time.perf_counter() >= end:
            late = [p["proxyId"] for p in items if p.get("ackedVersion") != p.get("sentVersion")]
            raise PropagationError(
                f"not all proxies ACKed within {deadline_s:g}s "
                f"({len(items)} proxies; not acked: {', '.join(late) or 'none, but none changed'})"
            )
        time.sleep(poll_s)


def gossamer(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("gossamer", path=str(Path(sys.executable).parent)) or "gossamer"
    try:
        return subprocess.run(
            [exe, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise PropagationError(
            f"`gossamer {' '.join(args)}` took longer than {timeout:g}s"
        ) from None


def run(args: argparse.Namespace, state_dir: Path) -> dict[str, Any]:
    up = gossamer(
        "up", "-d", str(args.file), "--state-dir", str(state_dir), timeout=args.up_timeout
    )
    if up.returncode != 0:
        tail = (up.stderr or up.stdout).strip().splitlines()[-3:]
        raise PropagationError(f"gossamer up failed ({up.returncode}): {' | '.join(tail)}")
    status = gossamer("status", "--json", "--state-dir", str(state_dir), timeout=30)
    if status.returncode != 0:
        raise PropagationError(f"gossamer status failed: {status.stderr.strip()[:200]}")
    api = Api(json.loads(status.stdout)["controlPlane"], state_dir)

    routes = api.call("GET", "/v1/resources?kind=HTTPRoute")["items"]
    if args.route:
        routes = [r for r in routes if r["metadata"]["name"] == args.route]
    if not routes:
        raise PropagationError(f"no HTTPRoute {args.route or ''} in {args.file} to change".strip())
    route = routes[0]
    name = f"HTTPRoute/{route['metadata'].get('namespace', 'default')}/{route['metadata']['name']}"

    # Start from a settled mesh: every proxy has ACKed what it was sent.
    items = wait_acked(api, {}, args.deadline, args.poll)
    samples: list[float] = []
    for step in range(1, args.applies + 1):
        before = {p["proxyId"]: p.get("sentVersion") for p in items}
        body = {"resources": [changed_route(route, step)]}
        t0 = time.perf_counter()
        result = api.call("POST", "/v1/apply", body)
        actions = {r["key"]: r["action"] for r in result.get("results", [])}
        if actions.get(name) != "configured":
            raise PropagationError(
                f"apply {step}: {name} was {actions.get(name)!r}, not configured"
            )
        items = wait_acked(api, before, args.deadline, args.poll)
        ms = (time.perf_counter() - t0) * 1000.0
        samples.append(round(ms, 1))
        print(f"apply {step:2d}: {len(items)} proxies ACKed in {ms:7.1f} ms", file=sys.stderr)
        time.sleep(args.pause)
    return {
        "route": name,
        "proxies": len(items),
        "samples_ms": samples,
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/propagation", description=__doc__.split("\n\n")[0])
    p.add_argument("--file", type=Path, default=REPO / "examples/shop/mesh.yaml")
    p.add_argument("--route", help="the HTTPRoute to change (default: the first one)")
    p.add_argument("--applies", type=int, default=20)
    p.add_argument("--deadline", type=float, default=10.0, help="seconds allowed per apply")
    p.add_argument("--poll", type=float, default=0.01, help="seconds between GET /v1/proxies")
    p.add_argument("--pause", type=float, default=0.25, help="seconds between applies")
    p.add_argument("--up-timeout", type=float, default=120.0)
    p.add_argument("--output", type=Path, default=REPO / "bench/results/propagation.json")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = p.parse_args(argv)
    if args.applies < 1:
        p.error("--applies must be at least 1")
    if not args.file.is_file():
        p.error(f"{args.file}: no such file")

    started = dt.datetime.now(dt.UTC)
    load_start = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    state_dir = Path(tempfile.mkdtemp(prefix="gossamer-propagation-"))
    try:
        measured = run(args, state_dir)
    except PropagationError as exc:
        print(f"bench/propagation: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        down = gossamer("down", "--state-dir", str(state_dir), timeout=60)
        if down.returncode != 0:
            print(f"bench/propagation: gossamer down: {down.stderr.strip()[:200]}", file=sys.stderr)
        shutil.rmtree(state_dir, ignore_errors=True)

    samples = measured["samples_ms"]
    p99 = percentile(samples, 99)
    doc = {
        "applies": len(samples),
        "proxies": measured["proxies"],
        "p50_ms": percentile(samples, 50),
        "p99_ms": p99,
        "max_ms": max(samples),
        "goal": {"p99_ms_at_most": GOAL_MS, "met": p99 <= GOAL_MS},
        "samples_ms": samples,
        "meta": {
            "date": started.strftime("%Y-%m-%d %H:%M UTC"),
            "file": str(args.file.resolve().relative_to(REPO))
            if args.file.resolve().is_relative_to(REPO)
            else str(args.file),
            "route": measured["route"],
            "change": "first rule's first backendRef weight + i on apply i",
            "poll_s": args.poll,
            "pause_s": args.pause,
            "percentiles": "nearest rank (with 20 applies, p99 is the maximum)",
            "machine": {"nproc": os.cpu_count(), "kernel": f"Linux {platform.release()}"},
            "loadavg_start": load_start,
            "loadavg_end": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
            "command": os.environ.get("BENCH_COMMAND", "bench/propagation"),
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(args.output)
    print(
        f"config propagation over {len(samples)} applies to {measured['proxies']} proxies: "
        f"p50 {doc['p50_ms']:.1f} ms, p99 {p99:.1f} ms, max {doc['max_ms']:.1f} ms "
        f"(goal: p99 <= {GOAL_MS:g} ms: {'met' if doc['goal']['met'] else 'NOT met'})"
    )
    print(f"wrote {args.output}")
    if not args.no_docs:
        summary.update_docs(REPO / "docs/benchmarks.md", docs_section(doc), DOCS_BEGIN, DOCS_END)
        print("updated docs/benchmarks.md")
    return 0


def docs_section(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    met = "met" if doc["goal"]["met"] else "NOT met"
    return (
        f"{DOCS_BEGIN}\n"
        f"_Generated by `bench/propagation` on {meta['date']}; do not edit by hand._\n\n"
        f"`{meta['command']}`: {doc['applies']} applies of a changed {meta['route']} from "
        f"`{meta['file']}` reached all {doc['proxies']} proxies (every one ACKed) in "
        f"p50 **{doc['p50_ms']:.1f} ms**, p99 **{doc['p99_ms']:.1f} ms**, "
        f"max {doc['max_ms']:.1f} ms "
        f"(goal p99 <= {GOAL_MS:g} ms: {met}). Load average {meta['loadavg_start']} at the start, "
        f"{meta['loadavg_end']} at the end.\n"
        f"{DOCS_END}"
    )


if __name__ == "__main__":
    sys.exit(main())
