"""Active health checks against real little HTTP servers on 127.0.0.1 (proxy/health.py)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest
from test_outlier import HEAD

from gossamer import snapshot as snap
from gossamer.proxy.breaker import resilience_metrics
from gossamer.proxy.cluster import ClusterRuntime
from gossamer.proxy.health import probe_request
from gossamer.proxy.loadbalance.base import EJECT_HEALTH_CHECK, EJECT_OUTLIER, EndpointState
from gossamer.proxy.stats import DataPlaneMetrics
from gossamer.telemetry.metrics import Registry


class Backend:
    """Answers every request with `status` (None: reads the request and never answers)."""

    def __init__(self) -> None:
        self.status: int | None = 200
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.address = ""
        # Every connection's writer: a probe accepted just before stop() must be closed too, or
        # its transport is collected unclosed during a later test (a ResourceWarning there).
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self.server.sockets[0].getsockname()[:2]
        self.address = f"{host}:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        self.requests.append(head)
        status = self.status
        if status is None:
            return  # hangs: stop() closes it
        writer.write(b"HTTP/1.1 %d X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok" % status)
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        for writer in self.writers:
            writer.close()
        for writer in self.writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def backends() -> AsyncIterator[tuple[Backend, Backend]]:
    a, b = Backend(), Backend()
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


async def eventually(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until `predicate()` holds, checking every 10 ms, failing after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


CHECK = snap.HealthCheck(
    path="/healthz", interval=0.05, timeout=0.3, healthy_threshold=2, unhealthy_threshold=2
)


def cluster_spec(addresses: list[str], check: snap.HealthCheck | None = CHECK) -> snap.Cluster:
    return snap.Cluster(
        name="inventory.default",
        service="inventory",
        endpoints=[snap.Endpoint(address=a) for a in addresses],
        health_check=check,
    )


def make_runtime(spec: snap.Cluster, registry: Registry) -> ClusterRuntime:
    metrics = DataPlaneMetrics(registry)
    for family in resilience_metrics(metrics).families():
        registry.register(family)
    return ClusterRuntime(
        asyncio.get_running_loop(), spec, metrics, "outbound", rand=random.Random(5)
    )


def down(e: EndpointState) -> bool:
    return bool(e.ejected & EJECT_HEALTH_CHECK)


def count(registry: Registry, result: str) -> float:
    metric = registry.get("gossamer_proxy_health_checks_total")
    assert metric is not None
    return metric.labels("inventory.default", result).value  # type: ignore[union-attr]


async def test_failing_endpoint_goes_out_and_comes_back_after_the_thresholds(
    backends: tuple[Backend, Backend],
) -> None:
    """Down after 2 failures in a row, up after 2 passes in a row; the other one stays up."""
    bad, good = backends
    registry = Registry()
    rt = make_runtime(cluster_spec([bad.address, good.address]), registry)
    try:
        ep_bad, ep_good = rt.endpoints
        await eventually(lambda: len(bad.requests) >= 1 and len(good.requests) >= 1)
        assert not down(ep_bad)
        assert bad.requests[0].startswith(b"GET /healthz HTTP/1.1\r\n")
        assert b"host: inventory\r\n" in bad.requests[0]
        bad.status = 503
        seen = len(bad.requests)
        await eventually(lambda: down(ep_bad))
        assert len(bad.requests) >= seen + 2
        assert not down(ep_good)
        assert rt.health is not None
        assert rt.health.down == 1
        # The balancer skips it.
        for _ in range(20):
            pool = rt.pick(HEAD, None)
            assert pool is not None
            assert pool.endpoint is ep_good
        bad.status = 302  # a redirect passes
        seen = len(bad.requests)
        await eventually(lambda: not down(ep_bad))
        assert len(bad.requests) >= seen + 2
        assert rt.health.down == 0
        assert count(registry, "failure") >= 2
        assert count(registry, "success") >= 4
    finally:
        rt.close()


async def test_a_silent_endpoint_times_out_and_a_closed_port_fails(
    backends: tuple[Backend, Backend],
) -> None:
    silent, _ = backends
    silent.status = None
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    registry = Registry()
    check = snap.HealthCheck(interval=0.05, timeout=0.1, healthy_threshold=1, unhealthy_threshold=1)
    rt = make_runtime(cluster_spec([silent.address, closed], check), registry)
    try:
        await eventually(lambda: all(down(e) for e in rt.endpoints))
        assert count(registry, "timeout") >= 1
        assert count(registry, "failure") >= 1
    finally:
        rt.close()


async def test_update_without_health_check_stops_probing_and_puts_endpoints_back(
    backends: tuple[Backend, Backend],
) -> None:
    bad, good = backends
    bad.status = 500
    registry = Registry()
    rt = make_runtime(cluster_spec([bad.address, good.address]), registry)
    try:
        ep_bad = rt.endpoints[0]
        ep_bad.ejected |= EJECT_OUTLIER  # another mechanism's bit is left alone
        await eventually(lambda: down(ep_bad))
        checker = rt.health
        assert checker is not None
        rt.update(cluster_spec([bad.address, good.address], check=None))
        assert rt.health is None
        assert ep_bad.ejected == EJECT_OUTLIER
        assert all(c.timer is None and c.task is None for c in checker.checks.values())
        # A new health check starts afresh, endpoints up.
        rt.update(cluster_spec([bad.address, good.address]))
        assert rt.health is not None
        assert rt.health is not checker
        assert not down(ep_bad)
        await eventually(lambda: down(ep_bad))
    finally:
        rt.close()
    assert rt.health is None
    # Closing leaves nothing scheduled: no probe arrives any more.
    seen = len(bad.requests) + len(good.requests)
    await asyncio.sleep(0)
    assert len(bad.requests) + len(good.requests) == seen


async def test_endpoint_state_survives_membership_changes(
    backends: tuple[Backend, Backend],
) -> None:
    """An endpoint marked down stays down when another endpoint joins; a removed one is
    forgotten."""
    bad, good = backends
    bad.status = 500
    registry = Registry()
    rt = make_runtime(cluster_spec([bad.address]), registry)
    try:
        ep_bad = rt.endpoints[0]
        await eventually(lambda: down(ep_bad))
        rt.update(cluster_spec([bad.address, good.address]))
        assert rt.endpoints[0] is ep_bad
        assert down(ep_bad)
        await eventually(lambda: len(good.requests) >= 1)
        rt.update(cluster_spec([good.address]))
        assert not down(ep_bad)
        assert rt.health is not None
        assert list(rt.health.checks) == [good.address]
    finally:
        rt.close()


# --- settings ------------------------------------------------------------------------------------


def test_probe_request_percent_encodes_the_path_like_the_router() -> None:
    """The config accepts non-ASCII and spaces in a path: they go out percent-encoded."""
    request = probe_request("/santé check", "inventory")
    assert request.startswith(b"GET /sant%C3%A9%20check HTTP/1.1\r\nhost: inventory\r\n")
    assert request.endswith(b"connection: close\r\n\r\n")
    assert request.count(b"\r\n") == 5  # request line, three headers, the blank line


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"path": "/h HTTP/1.1\r\nx-evil: 1\r\n\r\nGET /admin"}, "health_check.path"),
        ({"path": "/ok\n"}, "health_check.path"),
        ({"path": "healthz"}, "health_check.path"),
        ({"path": "/healthz?full=1#x"}, "health_check.path"),
        ({"interval": 0.0}, "health_check.interval"),
        ({"interval": math.inf}, "health_check.interval"),
        ({"timeout": math.nan}, "health_check.timeout"),
        ({"timeout": -1.0}, "health_check.timeout"),
        ({"healthy_threshold": 0}, "health_check.healthy_threshold"),
        ({"unhealthy_threshold": -2}, "health_check.unhealthy_threshold"),
    ],
)
async def test_bad_settings_are_refused_naming_the_field(
    change: dict[str, Any], field: str
) -> None:
    """ClusterRuntime.check (the data plane NACKs), a new checker and configure all refuse them;
    a refused configure changes nothing."""
    spec = msgspec.structs.replace(
        cluster_spec(["127.0.0.1:1"]), health_check=msgspec.structs.replace(CHECK, **change)
    )
    loop = asyncio.get_running_loop()
    with pytest.raises(ValueError, match=re.escape(field)):
        ClusterRuntime.check(spec, loop)
    with pytest.raises(ValueError, match=re.escape(field)):
        make_runtime(spec, Registry())
    rt = make_runtime(cluster_spec(["127.0.0.1:1"]), Registry())
    try:
        assert rt.health is not None
        before = rt.health.request
        with pytest.raises(ValueError, match=re.escape(field)):
            rt.health.configure(msgspec.structs.replace(CHECK, **change))
        assert rt.health.request == before
        assert rt.health.interval == CHECK.interval
    finally:
        rt.close()


async def test_a_service_that_would_end_the_host_header_is_refused() -> None:
    spec = msgspec.structs.replace(cluster_spec(["127.0.0.1:1"]), service="inv\r\nx-evil: 1")
    with pytest.raises(ValueError, match="Host"):
        ClusterRuntime.check(spec, asyncio.get_running_loop())
    # Without health checks the service name goes into no probe: nothing to refuse here.
    ClusterRuntime.check(
        msgspec.structs.replace(spec, health_check=None), asyncio.get_running_loop()
    )
