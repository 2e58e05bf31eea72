"""`gossamer top SERVICE`: the busiest (method, path) of a service, live, from its proxies' taps."""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gossamer.cli.main import CommandError
from gossamer.cli.tap import add_filter_args, follow

MAX_KEYS = 10000  # distinct (method, path) kept; the rest are counted under OTHER
MAX_SAMPLES = 10000  # latencies kept per row for its percentiles (the latest ones)
OTHER = ("*", "(other paths)")
CLEAR = "\x1b[H\x1b[2J"


@dataclass
class Row:
    """What the stream so far says about one (method, path)."""

    count: int = 0
    successes: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))


def percentile(values: list[float], p: float) -> float:
    """The nearest-rank `p` percentile of sorted `values` (not empty)."""
    rank = max(1, math.ceil(p / 100.0 * len(values)))
    return values[rank - 1]


class Top:
    """The table `gossamer top` draws, fed one access-log record at a time."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Row] = {}
        self.total = 0

    def add(self, doc: dict[str, Any]) -> None:
        method = str(doc.get("method") or "-")
        path = str(doc.get("path") or "-").split("?", 1)[0]
        key = (method, path)
        row = self.rows.get(key)
        if row is None:
            if len(self.rows) >= MAX_KEYS:
                key = OTHER
                row = self.rows.get(key)
            if row is None:
                row = self.rows[key] = Row()
        status = doc.get("status")
        row.count += 1
        # Success as `linkerd viz` counts it: a response that is not a 5xx (0: no response).
        if isinstance(status, int) and 0 < status < 500:
            row.successes += 1
        duration = doc.get("durationMs")
        if isinstance(duration, int | float):
            row.latencies.append(float(duration))
        self.total += 1

    def render(self, service: str, elapsed: float, limit: int) -> str:
        lines = [
            f"gossamer top {service}: {self.total} requests in {elapsed:.0f}s, "
            f"{len(self.rows)} paths",
            "",
        ]
        header = ("COUNT", "METHOD", "PATH", "SUCCESS", "P50", "P99")
        table: list[tuple[str, ...]] = [header]
        ranked = sorted(self.rows.items(), key=lambda kv: (-kv[1].count, kv[0]))
        for (method, path), row in ranked[:limit]:
            latencies = sorted(row.latencies)
            p50 = f"{percentile(latencies, 50):.1f}ms" if latencies else "-"
            p99 = f"{percentile(latencies, 99):.1f}ms" if latencies else "-"
            success = f"{100.0 * row.successes / row.count:.2f}%"
            table.append((str(row.count), method, path, success, p50, p99))
        if len(table) == 1:
            lines.append("(no requests yet)")
            return "\n".join(lines)
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        for r in table:
            cells = [
                r[i].rjust(widths[i]) if i in (0, 3, 4, 5) else r[i].ljust(widths[i])
                for i in range(len(header))
            ]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines)


def _interval(text: str) -> float:
    from gossamer.config.models import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--interval: {exc}") from None
    if seconds < 0.05:
        raise argparse.ArgumentTypeError("--interval must be at least 50ms")
    return seconds


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "top",
        help="the busiest paths of a service, live",
        description="Tap the proxies of SERVICE and show the busiest (method, path) pairs of "
        "the stream so far: request count, success rate (responses that are not 5xx) and "
        "p50/p99 latency, redrawn in place every --interval in a terminal. When stdout is not "
        "a terminal, one table is printed per interval. The query string is left out of the "
        "path. Runs until interrupted or --max-seconds.",
    )
    add_filter_args(p, "inbound")
    p.add_argument(
        "--interval",
        type=_interval,
        default="1s",
        metavar="DURATION",
        help="how often to redraw (default 1s)",
    )
    p.add_argument("--rows", type=int, default=20, help="rows shown (default 20)")
    p.set_defaults(func=cmd_top)


def cmd_top(args: argparse.Namespace) -> int:
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise CommandError("--max-seconds must be more than 0", code=2)
    if args.rows < 1:
        raise CommandError("--rows must be at least 1", code=2)
    top = Top()
    tty = sys.stdout.isatty()
    loop_start: list[float] = []

    def draw() -> None:
        elapsed = asyncio.get_running_loop().time() - loop_start[0]
        text = top.render(args.service, elapsed, args.rows)
        if tty:
            sys.stdout.write(CLEAR + text + "\n")
        else:
            sys.stdout.write(text + "\n\n")
        sys.stdout.flush()

    def on_record(doc: dict[str, Any]) -> bool:
        top.add(doc)
        return True

    async def run() -> None:
        loop_start.append(asyncio.get_running_loop().time())
        try:
            await follow(args, on_record, draw, args.interval)
        except CommandError:
            raise
        except BaseException:
            draw()  # the table so far, when interrupted
            raise
        draw()  # the final table (--max-seconds, or the tap ended)

    asyncio.run(run())
    return 0
