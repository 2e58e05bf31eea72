"""The control plane's rolling window of every proxy's golden metrics: `stat` without Prometheus.

A task scrapes each registered proxy's admin `/metrics` every `interval` seconds (plain HTTP on
loopback, bounded by a timeout and a size limit), keeps only the golden families it needs
(`gossamer_requests_total` and the `gossamer_request_duration_seconds` buckets) summed down to
a small key, and holds `retention` seconds of samples per proxy. Queries compute, per service,
route or edge over a window W: requests per second, success rate and p50/p95/p99.

Counter resets: a proxy that restarted starts its counters from zero. Between two samples of one
proxy, if any series went down or disappeared, the proxy restarted and the later sample's values
are the increase (what Prometheus' `rate()` does per series, here for the whole proxy at once,
because the summed keys would hide a single series' reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

log = logging.getLogger(__name__)

REQUESTS = "gossamer_requests_total"
DURATION_BUCKET = "gossamer_request_duration_seconds_bucket"
DEFAULT_INTERVAL = 5.0
DEFAULT_RETENTION = 600.0
DEFAULT_TIMEOUT = 2.0
# A sidecar's exposition is tens of KiB; this bounds what one broken proxy can make us read.
MAX_BODY_BYTES = 16 * 1024 * 1024
QUANTILES = (0.5, 0.95, 0.99)

By = Literal["service", "route", "edge"]
# (direction, source_service, destination_service, route, status_code)
RequestKey = tuple[str, str, str, str, str]
# (direction, source_service, destination_service, route, le)
BucketKey = tuple[str, str, str, str, float]


class MetricsParseError(ValueError):
    """A line of the exposition is not Prometheus text; the message names the line."""


@dataclass(slots=True)
class Golden:
    """The golden counters of one scrape, summed over the labels the window does not keep."""

    requests: dict[RequestKey, float] = field(default_factory=dict)
    buckets: dict[BucketKey, float] = field(default_factory=dict)


def _parse_labels(text: str, start: int, lineno: int) -> tuple[dict[str, str], int]:
    """Labels from `text[start]` == "{" to the matching "}"; returns them and the index after."""
    labels: dict[str, str] = {}
    i = start + 1
    n = len(text)
    while True:
        while i < n and text[i] in " ,":
            i += 1
        if i < n and text[i] == "}":
            return labels, i + 1
        eq = text.find("=", i)
        if eq < 0 or eq + 1 >= n or text[eq + 1] != '"':
            raise MetricsParseError(f'line {lineno}: a label is not name="value"')
        name = text[i:eq].strip()
        i = eq + 2
        value: list[str] = []
        while True:
            if i >= n:
                raise MetricsParseError(f"line {lineno}: label {name!r} has no closing quote")
            ch = text[i]
            if ch == "\\" and i + 1 < n:
                nxt = text[i + 1]
                value.append("\n" if nxt == "n" else nxt)
                i += 2
            elif ch == '"':
                i += 1
                break
            else:
                value.append(ch)
                i += 1
        labels[name] = "".join(value)


def parse_sample(line: str, lineno: int = 1) -> tuple[str, dict[str, str], float]:
    """One sample line of Prometheus text format 0.0.4: its name, labels and value.

    Raises:
        MetricsParseError: naming the line, when it is not a sample.
    """
    brace = line.find("{")
    space = line.find(" ")
    if brace >= 0 and (space < 0 or brace < space):
        name = line[:brace]
        labels, end = _parse_labels(line, brace, lineno)
    else:
        if space < 0:
            raise MetricsParseError(f"line {lineno}: a sample needs a value after its name")
        name, labels, end = line[:space], {}, space
    parts = line[end:].split()
    if not name or not parts:
        raise MetricsParseError(f"line {lineno}: a sample needs a name and a value")
    try:
        value = float(parts[0])
    except ValueError:
        raise MetricsParseError(f"line {lineno}: {parts[0]!r} is not a number") from None
    return name, labels, value


def parse_golden(text: str) -> Golden:
    """The golden families of an exposition; every other family is skipped unparsed.

    Raises:
        MetricsParseError: a golden line is malformed (naming the line).
    """
    out = Golden()
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.startswith(REQUESTS):
            is_requests = True
        elif line.startswith(DURATION_BUCKET):
            is_requests = False
        else:
            continue
        name, labels, value = parse_sample(line, lineno)
        if name not in (REQUESTS, DURATION_BUCKET) or math.isnan(value):
            continue
        base = (
            labels.get("direction", ""),
            labels.get("source_service", ""),
            labels.get("destination_service", ""),
            labels.get("route", ""),
        )
        if is_requests:
            rkey: RequestKey = (*base, labels.get("status_code", ""))
            out.requests[rkey] = out.requests.get(rkey, 0.0) + value
        else:
            le_text = labels.get("le", "")
            try:
                le = float(le_text)
            except ValueError:
                raise MetricsParseError(f"line {lineno}: le={le_text!r} is not a number") from None
            bkey: BucketKey = (*base, le)
            out.buckets[bkey] = out.buckets.get(bkey, 0.0) + value
    return out


def _increase(old: Golden, new: Golden) -> Golden:
    """What `new` counted since `old` (one proxy); a restart in between counts `new` whole."""
    if any(new.requests.get(k, -1.0) < v for k, v in old.requests.items()) or any(
        new.buckets.get(k, -1.0) < v for k, v in old.buckets.items()
    ):
        return new
    return Golden(
        {k: v - old.requests.get(k, 0.0) for k, v in new.requests.items()},
        {k: v - old.buckets.get(k, 0.0) for k, v in new.buckets.items()},
    )


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus' `histogram_quantile` on cumulative counts by upper bound (`le`), or None
    without observations: linear interpolation in the bucket holding the rank, the lowest
    bucket starting at 0, and the highest finite bound when the rank falls in `+Inf`."""
    bounds = sorted(buckets)
    if not bounds or not math.isinf(bounds[-1]):
        return None
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for i, bound in enumerate(bounds):
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return bounds[-2] if len(bounds) > 1 else None
            if i == 0 and bound <= 0:
                return bound
            in_bucket = count - prev_count
            if in_bucket <= 0:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / in_bucket
        prev_bound, prev_count = bound, count
    return bounds[-2] if len(bounds) > 1 else None


@dataclass(slots=True)
class Row:
    """One line of `stat`: a service, route or edge over the window."""

    name: str
    requests: float = 0.0
    successes: float = 0.0
    rps: float = 0.0
    # Cumulative bucket deltas by upper bound, summed over the proxies.
    buckets: dict[float, float] = field(default_factory=dict)
    source: str = ""
    destination: str = ""
    route: str = ""

    def to_json(self, by: By) -> dict[str, object]:
        out: dict[str, object] = {
            "name": self.name,
            "requests": round(self.requests, 3),
            "rps": round(self.rps, 3),
            "successRate": (
                round(self.successes / self.requests, 4) if self.requests > 0 else None
            ),
        }
        for q in QUANTILES:
            value = histogram_quantile(q, self.buckets)
            out[f"p{round(q * 100)}"] = None if value is None else round(value, 6)
        if by == "edge":
            out["source"], out["destination"] = self.source, self.destination
        if by == "route":
            out["service"] = self.destination
        return out


def is_success(status_code: str) -> bool:
    """A request succeeded when the client got a response below 500 (status 0: it left first)."""
    return status_code.isdigit() and 100 <= int(status_code) < 500


def matches_service(name: str, wanted: str) -> bool:
    """`wanted` is "svc.ns" (exact) or "svc" (that service in any namespace)."""
    return name == wanted or ("." not in wanted and name.split(".", 1)[0] == wanted)


class Target(Protocol):
    """What the window needs of a registration (control/registry.py `Registration`)."""

    @property
    def proxy_id(self) -> str: ...
    @property
    def admin(self) -> str: ...


@dataclass(slots=True)
class _Proxy:
    samples: deque[tuple[float, Golden]] = field(default_factory=deque)
    last_error: str = ""
    failures: int = 0


async def fetch_metrics(admin: str, max_bytes: int = MAX_BODY_BYTES) -> str:
    """GET http://<admin>/metrics (the caller bounds its time); raises OSError or ValueError."""
    host, sep, port_text = admin.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"admin address {admin!r} is not host:port")
    reader, writer = await asyncio.open_connection(host, int(port_text))
    try:
        writer.write(
            b"GET /metrics HTTP/1.1\r\nhost: %s\r\nconnection: close\r\n\r\n" % admin.encode()
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[1] != "200":
            raise ValueError(f"GET /metrics answered {status_line.strip()!r}")
        length = None
        for h in header_lines:
            name, _, value = h.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is not None:
            if length > max_bytes:
                raise ValueError(f"/metrics is {length} bytes, over the {max_bytes} limit")
            body = await reader.readexactly(length)
        else:
            chunks: list[bytes] = []
            size = 0
            while chunk := await reader.read(65536):
                size += len(chunk)
                if size > max_bytes:
                    raise ValueError(f"/metrics is over the {max_bytes} byte limit")
                chunks.append(chunk)
            body = b"".join(chunks)
    finally:
        # Abort, not close: nothing is left to send, and a peer that stopped reading must not
        # hold the scrape; waiting for it means no transport outlives the scrape.
        writer.transport.abort()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return body.decode("utf-8", errors="replace")


class TelemetryWindow:
    """Scrapes every proxy in `targets()` and answers `stats()` over the samples it keeps.

    `clock` is monotonic seconds (the event loop's by default), injected so tests drive time.
    """

    def __init__(
        self,
        targets: Callable[[], Iterable[Target]],
        *,
        interval: float = DEFAULT_INTERVAL,
        retention: float = DEFAULT_RETENTION,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"telemetry scrape interval must be positive, got {interval}")
        if retention < 2 * interval:
            raise ValueError(
                f"telemetry retention ({retention}s) must hold at least two scrapes "
                f"({2 * interval}s at an interval of {interval}s)"
            )
        self._targets = targets
        self.interval = interval
        self.retention = retention
        self.timeout = min(timeout, interval)
        self._clock = clock
        self._proxies: dict[str, _Proxy] = {}
        self.scrapes = 0
        self._scraped = asyncio.Event()  # set and replaced after each scrape

    def now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    # --- collecting ---------------------------------------------------------------------------

    def add_sample(self, proxy_id: str, when: float, text: str) -> None:
        """Record one scrape's exposition for a proxy (parse errors are the caller's to log).

        Raises:
            MetricsParseError: the exposition's golden lines are malformed.
        """
        golden = parse_golden(text)
        proxy = self._proxies.setdefault(proxy_id, _Proxy())
        proxy.samples.append((when, golden))
        proxy.last_error = ""
        # Keep one sample older than the retention: the baseline of a window that long.
        while len(proxy.samples) > 2 and proxy.samples[1][0] <= when - self.retention:
            proxy.samples.popleft()

    def record_failure(self, proxy_id: str, error: str) -> None:
        proxy = self._proxies.setdefault(proxy_id, _Proxy())
        proxy.last_error = error
        proxy.failures += 1

    def forget_others(self, live: Iterable[str]) -> None:
        """Drop proxies no longer registered (their samples would count no more anyway)."""
        keep = set(live)
        for proxy_id in list(self._proxies):
            if proxy_id not in keep:
                del self._proxies[proxy_id]

    async def scrape_once(self) -> None:
        """Scrape every registered proxy with an admin address, concurrently, each bounded."""
        targets = [t for t in self._targets() if t.admin]
        self.forget_others(t.proxy_id for t in self._targets())

        async def one(target: Target) -> None:
            try:
                async with asyncio.timeout(self.timeout):
                    text = await fetch_metrics(target.admin)
                self.add_sample(target.proxy_id, self.now(), text)
            except TimeoutError:
                self.record_failure(target.proxy_id, f"no answer within {self.timeout:g}s")
            except (OSError, ValueError, EOFError, asyncio.LimitOverrunError) as exc:
                self.record_failure(target.proxy_id, f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(one(t) for t in targets))
        self.scrapes += 1
        self._scraped.set()
        self._scraped = asyncio.Event()

    async def wait_scrapes(self, count: int) -> None:
        """Return once `count` more scrapes are done (the caller bounds the wait)."""
        target = self.scrapes + count
        while self.scrapes < target:
            await self._scraped.wait()

    async def run(self) -> None:
        """Scrape every `interval` seconds until cancelled; one bad scrape never stops it."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self.scrape_once()
            except Exception:
                log.exception("telemetry scrape failed; trying again next interval")
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))

    def failing(self) -> dict[str, str]:
        """Proxies whose last scrape failed, with why."""
        return {pid: p.last_error for pid, p in sorted(self._proxies.items()) if p.last_error}

    # --- answering ----------------------------------------------------------------------------

    def _increases(self, window: float, now: float) -> Iterable[tuple[float, Golden]]:
        """Per proxy: the span its samples cover in the window, and what it counted in it."""
        start = now - window
        for proxy in self._proxies.values():
            samples = [s for s in proxy.samples if s[0] <= now]
            if len(samples) < 2:
                continue
            # The baseline: the newest sample at or before the window's start, else the oldest.
            first = 0
            for i, (t, _) in enumerate(samples):
                if t <= start:
                    first = i
            chosen = samples[first:]
            if len(chosen) < 2:
                continue
            span = chosen[-1][0] - chosen[0][0]
            if span <= 0:
                continue
            total = Golden()
            for (_, old), (_, new) in itertools.pairwise(chosen):
                inc = _increase(old, new)
                for k, v in inc.requests.items():
                    total.requests[k] = total.requests.get(k, 0.0) + v
                for bk, bv in inc.buckets.items():
                    total.buckets[bk] = total.buckets.get(bk, 0.0) + bv
            yield span, total

    def stats(
        self,
        by: By,
        window: float,
        *,
        service: str | None = None,
        known_services: Sequence[str] = (),
    ) -> list[Row]:
        """Rows over the last `window` seconds, sorted by name.

        `service`: only rows of that service ("svc" or "svc.ns"). by=service counts what the
        callee's sidecars saw (inbound), keyed by destination service; by=route and by=edge
        what the callers' sidecars saw (outbound), keyed by route rule (requests that matched
        one) or by (source, destination). `known_services` get a row even without traffic.
        """
        now = self.now()
        rows: dict[tuple[str, ...], Row] = {}

        def row_for(direction: str, src: str, dst: str, route: str) -> Row | None:
            if by == "service":
                if direction != "inbound":
                    return None
                if service is not None and not matches_service(dst, service):
                    return None
                key: tuple[str, ...] = (dst,)
                made = Row(dst, destination=dst)
            elif by == "route":
                if direction != "outbound" or not route:
                    return None
                if service is not None and not matches_service(dst, service):
                    return None
                key = (route, dst)
                made = Row(route, destination=dst, route=route)
            else:
                if direction != "outbound":
                    return None
                if service is not None and not (
                    matches_service(src, service) or matches_service(dst, service)
                ):
                    return None
                key = (src, dst)
                made = Row(f"{src} -> {dst}", source=src, destination=dst)
            return rows.setdefault(key, made)

        if by == "service":
            for name in known_services:
                if service is None or matches_service(name, service):
                    rows.setdefault((name,), Row(name, destination=name))
        for span, inc in self._increases(window, now):
            for (direction, src, dst, route, code), value in inc.requests.items():
                row = row_for(direction, src, dst, route)
                if row is None or value <= 0:
                    continue
                row.requests += value
                row.rps += value / span
                if is_success(code):
                    row.successes += value
            for (direction, src, dst, route, le), value in inc.buckets.items():
                row = row_for(direction, src, dst, route)
                if row is not None:
                    row.buckets[le] = row.buckets.get(le, 0.0) + value
        return sorted(rows.values(), key=lambda r: (r.name, r.destination))
