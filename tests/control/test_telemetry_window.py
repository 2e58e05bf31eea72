"""The rolling window's parts with a driven clock: the text parser, counter resets, rates, success
rates and histogram_quantile interpolation, and scrapes of real (fake-content) /metrics servers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from gossamer.control.telemetry_window import (
    MetricsParseError,
    TelemetryWindow,
    histogram_quantile,
    is_success,
    parse_golden,
    parse_sample,
)
from gossamer.proxy.golden import GoldenMetrics
from gossamer.telemetry.metrics import Registry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Target:
    proxy_id: str
    admin: str


class FakeProxy:
    """A proxy's golden families (the sidecar's GoldenMetrics), rendered as its /metrics does."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        # The sidecar's own families (proxy/golden.py), so the labels are the contract's.
        self.registry = Registry()
        golden = GoldenMetrics(self.registry)
        self.requests = golden.requests
        self.duration = golden.duration
        self.registry.counter("gossamer_proxy_requests_total", "Not golden.", ("x",)).labels(
            "y"
        ).inc(5)

    def hit(
        self,
        n: int,
        seconds: float,
        status: int = 200,
        direction: str = "outbound",
        src: str = "frontend.default",
        dst: str = "pricing.default",
        route: str = "default/pricing#0",
    ) -> None:
        if direction == "inbound":
            route = ""
        self.requests.labels(direction, src, "", dst, "", route, str(status), "").inc(n)
        child = self.duration.labels(direction, src, dst, route, f"{status // 100}xx")
        for _ in range(n):
            child.observe(seconds)

    def text(self) -> str:
        return self.registry.render().decode()


def test_parser_reads_labels_escapes_and_values() -> None:
    name, labels, value = parse_sample(
        'gossamer_requests_total{route="a\\"b\\\\c\\nd",status_code="200"} 3 1700000000000'
    )
    assert name == "gossamer_requests_total"
    assert labels == {"route": 'a"b\\c\nd', "status_code": "200"}
    assert value == 3.0
    assert parse_sample("up 1") == ("up", {}, 1.0)
    assert parse_sample('x_bucket{le="+Inf"} 7')[1:] == ({"le": "+Inf"}, 7.0)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ('gossamer_requests_total{route="open} 1', "no closing quote"),
        ("gossamer_requests_total{route=x} 1", 'name="value"'),
        ('gossamer_requests_total{route="a"} many', "'many' is not a number"),
        ("gossamer_requests_total", "needs a value"),
        ('gossamer_request_duration_seconds_bucket{le="soon"} 1', "le='soon'"),
    ],
)
def test_parser_names_the_bad_line(line: str, words: str) -> None:
    with pytest.raises(MetricsParseError) as caught:
        parse_golden(f"# HELP x y\n{line}\n")
    assert "line 2" in str(caught.value)
    assert words in str(caught.value)


def test_parse_golden_sums_away_identities_and_flags_and_skips_other_families() -> None:
    proxy = FakeProxy()
    proxy.hit(3, 0.004)
    proxy.requests.labels(
        "outbound", "frontend.default", "id", "pricing.default", "", "default/pricing#0", "200", "x"
    ).inc(2)
    golden = parse_golden(proxy.text())
    key = ("outbound", "frontend.default", "pricing.default", "default/pricing#0", "200")
    assert golden.requests == {key: 5.0}
    assert golden.buckets[(*key[:4], 0.005)] == 3.0
    assert golden.buckets[(*key[:4], float("inf"))] == 3.0


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    # 10 in (0, 0.1], 10 in (0.1, 0.2]: the median is the top of the first bucket.
    buckets = {0.1: 10.0, 0.2: 20.0, float("inf"): 20.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.75, buckets) == pytest.approx(0.15)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)
    # The rank in +Inf: the highest finite bound.
    assert histogram_quantile(0.99, {0.1: 1.0, float("inf"): 10.0}) == 0.1
    assert histogram_quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None
    assert histogram_quantile(0.5, {}) is None


def test_success_is_a_response_below_500() -> None:
    assert [is_success(c) for c in ("200", "404", "101")] == [True, True, True]
    assert [is_success(c) for c in ("503", "0", "")] == [False, False, False]


def test_window_rates_success_and_quantiles_with_a_driven_clock() -> None:
    clock = Clock()
    window = TelemetryWindow(lambda: [], interval=5, retention=600, clock=clock)
    proxy = FakeProxy()
    window.add_sample("p1", clock(), proxy.text())
    for _ in range(12):  # one minute: 10 req/s, 1 in 10 fails, 90% fast
        clock.now += 5
        proxy.hit(45, 0.004)
        proxy.hit(5, 0.2, status=503)
        window.add_sample("p1", clock(), proxy.text())
    [edge] = window.stats("edge", 60)
    assert edge.name == "frontend.default -> pricing.default"
    assert edge.to_json("edge")["rps"] == pytest.approx(10.0)
    out = edge.to_json("edge")
    assert out["successRate"] == pytest.approx(0.9)
    assert out["requests"] == 600
    assert 0.0025 < out["p50"] <= 0.005  # type: ignore[operator]
    assert 0.1 < out["p95"] <= 0.25  # type: ignore[operator]
    [route] = window.stats("route", 60)
    assert route.name == "default/pricing#0"
    assert route.to_json("route")["service"] == "pricing.default"
    # Outbound only: nothing inbound was counted, so no service row (known ones show empty).
    assert window.stats("service", 60) == []
    [known] = window.stats("service", 60, known_services=["pricing.default"])
    assert known.to_json("service")["successRate"] is None
    # A shorter window sees only its own samples.
    clock.now += 5
    proxy.hit(100, 0.004)
    window.add_sample("p1", clock(), proxy.text())
    [short] = window.stats("edge", 5)
    assert short.requests == 100
    assert short.rps == pytest.approx(20.0)


def test_counter_reset_counts_the_new_values_not_a_negative() -> None:
    clock = Clock()
    window = TelemetryWindow(lambda: [], interval=5, retention=600, clock=clock)
    proxy = FakeProxy()
    proxy.hit(1000, 0.004)
    window.add_sample("p1", clock(), proxy.text())
    clock.now += 5
    proxy.hit(50, 0.004)
    window.add_sample("p1", clock(), proxy.text())
    proxy.reset()  # the proxy restarted
    clock.now += 5
    proxy.hit(30, 0.004, direction="inbound")
    window.add_sample("p1", clock(), proxy.text())
    [edge] = window.stats("edge", 60)
    assert edge.requests == 50
    [svc] = window.stats("service", 60)
    assert svc.requests == 30
    assert svc.rps == pytest.approx(3.0)  # 30 over the 10 s the samples span


def test_window_forgets_old_samples_and_vanished_proxies() -> None:
    clock = Clock()
    window = TelemetryWindow(lambda: [], interval=5, retention=20, clock=clock)
    proxy = FakeProxy()
    for _ in range(10):
        proxy.hit(10, 0.004)
        window.add_sample("p1", clock(), proxy.text())
        clock.now += 5
    assert len(window._proxies["p1"].samples) <= 6
    # Now is 5 s after the last sample: the window's baseline is the sample 20 s ago.
    [edge] = window.stats("edge", 20)
    assert edge.requests == 30
    assert edge.rps == pytest.approx(2.0)
    window.forget_others([])
    assert window.stats("edge", 20) == []


def test_filter_by_service_name_with_or_without_namespace() -> None:
    clock = Clock()
    window = TelemetryWindow(lambda: [], interval=5, retention=600, clock=clock)
    proxy = FakeProxy()
    window.add_sample("p", clock(), proxy.text())
    clock.now += 5
    proxy.hit(5, 0.004, direction="inbound", dst="pricing.default")
    proxy.hit(5, 0.004, direction="inbound", dst="cart.shop")
    window.add_sample("p", clock(), proxy.text())
    assert [r.name for r in window.stats("service", 60)] == ["cart.shop", "pricing.default"]
    assert [r.name for r in window.stats("service", 60, service="cart")] == ["cart.shop"]
    assert [r.name for r in window.stats("service", 60, service="cart.default")] == []


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="interval must be positive"):
        TelemetryWindow(lambda: [], interval=0)
    with pytest.raises(ValueError, match="at least two scrapes"):
        TelemetryWindow(lambda: [], interval=5, retention=5)


@contextlib.asynccontextmanager
async def serve_metrics() -> AsyncIterator[tuple[str, FakeProxy, list[str]]]:
    """A real HTTP /metrics server on 127.0.0.1:0 serving a FakeProxy's families; `mode[0]` picks
    its behaviour ("ok", "hang", "500", anything else: a broken body)."""
    proxy = FakeProxy()
    mode = ["ok"]
    done = asyncio.Event()  # releases hanging handlers at teardown
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            if mode[0] == "hang":
                await done.wait()
                return
            body = proxy.text().encode() if mode[0] == "ok" else b"broken"
            status = b"200 OK" if mode[0] != "500" else b"500 Internal"
            writer.write(b"HTTP/1.1 %s\r\ncontent-length: %d\r\n\r\n%s" % (status, len(body), body))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"127.0.0.1:{port}", proxy, mode
        done.set()
        for writer in writers:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        server.close()


@pytest.fixture
async def metrics_server() -> AsyncIterator[tuple[str, FakeProxy, list[str]]]:
    async with serve_metrics() as served:
        yield served


async def test_scrapes_real_servers_and_records_failures(
    metrics_server: tuple[str, FakeProxy, list[str]],
) -> None:
    admin, proxy, mode = metrics_server
    clock = Clock()
    targets = [Target("p1", admin), Target("gone", "127.0.0.1:1"), Target("no-admin", "")]
    window = TelemetryWindow(lambda: targets, interval=5, retention=600, timeout=0.3, clock=clock)
    await window.scrape_once()
    clock.now += 5
    proxy.hit(25, 0.004)
    await window.scrape_once()
    [edge] = window.stats("edge", 60)
    assert edge.rps == pytest.approx(5.0)
    assert set(window.failing()) == {"gone"}
    mode[0] = "hang"
    loop = asyncio.get_running_loop()
    started = loop.time()
    await window.scrape_once()
    assert loop.time() - started < 2.0
    assert "no answer within 0.3s" in window.failing()["p1"]
    mode[0] = "500"
    await window.scrape_once()
    assert "500" in window.failing()["p1"]
    targets.clear()
    await window.scrape_once()
    assert window.failing() == {}
    assert window.stats("edge", 60) == []
