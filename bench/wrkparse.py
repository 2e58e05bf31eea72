"""Parse what `wrk --latency` prints into numbers: requests/s, percentiles in µs, errors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_UNIT_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0, "m": 60_000_000.0, "h": 3_600_000_000.0}
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\d+(?:\.\d+)?)(us|ms|s|m|h)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+(\d+(?:\.\d+)?)\s*$", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in (\d+(?:\.\d+)?)(us|ms|s|m|h),", re.MULTILINE)
_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)\s*$", re.MULTILINE)
_SOCKET = re.compile(
    r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)\s*$", re.MULTILINE
)


class WrkParseError(ValueError):
    """wrk's output lacks a figure the benchmark needs (it crashed, or --latency was missing)."""


@dataclass(frozen=True)
class WrkResult:
    rps: float
    requests: int
    duration_s: float
    percentiles_us: dict[float, float] = field(default_factory=dict)
    non_2xx: int = 0
    socket_errors: dict[str, int] = field(default_factory=dict)

    def p(self, percentile: float) -> float:
        try:
            return self.percentiles_us[percentile]
        except KeyError:
            raise WrkParseError(f"wrk output has no {percentile:g}% latency line") from None

    @property
    def errors(self) -> int:
        """Requests that did not get a 2xx/3xx answer, plus socket errors of any kind."""
        return self.non_2xx + sum(self.socket_errors.values())


def to_us(value: str, unit: str) -> float:
    """Convert a wrk duration such as ("1.53", "ms") to microseconds."""
    try:
        return float(value) * _UNIT_US[unit]
    except KeyError:
        raise WrkParseError(f"unknown wrk time unit {unit!r}") from None


def parse(text: str) -> WrkResult:
    """Read `wrk --latency` output; raise WrkParseError naming what is missing."""
    rps = _RPS.search(text)
    if rps is None:
        first = text.strip().splitlines()[:1]
        raise WrkParseError(f"no 'Requests/sec:' line in wrk output (starts: {first!r})")
    total = _TOTAL.search(text)
    if total is None:
        raise WrkParseError("no 'N requests in T' line in wrk output")
    percentiles = {float(p): to_us(v, u) for p, v, u in _PERCENTILE.findall(text)}
    if not percentiles:
        raise WrkParseError("no latency distribution in wrk output (run wrk with --latency)")
    non_2xx = _NON_2XX.search(text)
    sock = _SOCKET.search(text)
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sock.groups()), strict=True))
        if sock
        else {}
    )
    return WrkResult(
        rps=float(rps.group(1)),
        requests=int(total.group(1)),
        duration_s=to_us(total.group(2), total.group(3)) / 1_000_000.0,
        percentiles_us=percentiles,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=socket_errors,
    )
