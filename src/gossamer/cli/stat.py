"""`gossamer stat`: success rate, requests per second and latency per service, route or edge."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from gossamer.cli.main import CommandError
from gossamer.cli.resources import ClientApi, add_control_plane_args, control_plane_target

_KINDS = {"routes": "route", "edges": "edge"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "stat",
        help="success rate, requests per second and p50/p95/p99 per service, route or edge",
        description="The golden signals over a recent window, from the control plane's rolling "
        "window of every proxy's metrics (no Prometheus needed), like `linkerd viz stat`. "
        "Services count what their own sidecars saw (inbound); routes and edges what the "
        "callers' sidecars saw (outbound). Success: a response below 500.",
    )
    p.add_argument(
        "target",
        nargs="?",
        default=None,
        metavar="SERVICE",
        help="a service (name or name.namespace) for its row only; `routes` or `edges` for "
        "those (with --service to narrow them); default: every service",
    )
    p.add_argument("--service", help="with routes or edges: only those of this service")
    p.add_argument("--window", default="1m", help="how far back to look (default 1m; at most 10m)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    add_control_plane_args(p)
    p.set_defaults(func=cmd_stat)


def cmd_stat(args: argparse.Namespace) -> int:
    by = "service"
    service = args.service
    if args.target in _KINDS:
        by = _KINDS[args.target]
    elif args.target is not None:
        if service is not None:
            raise CommandError("--service goes with routes or edges; give a SERVICE or --service")
        service = args.target
    url, creds = control_plane_target(args)
    api = ClientApi(url, creds)
    query = {"by": by, "window": args.window, "service": service}
    answer: dict[str, Any] = api.call(lambda: api.client.request("GET", "/v1/stats", query=query))
    items: list[dict[str, Any]] = list(answer.get("items", []))
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    if service is not None and not items and by == "service":
        raise CommandError(f"no service {service!r} in the mesh's recent traffic or registry")
    print(format_stats(by, items))
    for failing in answer.get("failing", []):
        print(f"\nnote: proxy {failing['proxyId']} could not be scraped: {failing['error']}")
    return 0


def _percent(value: Any) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _rps(value: Any) -> str:
    return f"{value:.1f}rps" if value else "0.0rps"


def _latency(value: Any) -> str:
    if value is None:
        return "-"
    ms = value * 1000
    return f"{ms:.0f}ms" if ms >= 10 else f"{ms:.1f}ms"


def format_stats(by: str, items: Sequence[dict[str, Any]]) -> str:
    """A table like `linkerd viz stat`: NAME, SUCCESS, RPS, P50, P95, P99 (plus the service of a
    route, or source and destination of an edge)."""
    from gossamer.cli.resources import render_table

    if not items:
        return f"no {by} has traffic in this window"
    tail = ["SUCCESS", "RPS", "P50", "P95", "P99"]
    if by == "edge":
        headers = ["SOURCE", "DESTINATION", *tail]
    elif by == "route":
        headers = ["ROUTE", "SERVICE", *tail]
    else:
        headers = ["NAME", *tail]
    rows = []
    for item in items:
        numbers = [
            _percent(item.get("successRate")),
            _rps(item.get("rps")),
            _latency(item.get("p50")),
            _latency(item.get("p95")),
            _latency(item.get("p99")),
        ]
        if by == "edge":
            rows.append([str(item.get("source")), str(item.get("destination")), *numbers])
        elif by == "route":
            rows.append([str(item.get("name")), str(item.get("service")), *numbers])
        else:
            rows.append([str(item.get("name")), *numbers])
    return render_table(headers, rows)
