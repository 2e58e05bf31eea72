"""Active health checks: GET a path on every endpoint of a cluster, take failing ones out.

From `Cluster.health_check`: each endpoint is probed every `interval` (jittered by +-10%, and
the first probe of each at a random point of the first interval, so a cluster's endpoints are
not probed in step) with `GET <path>` through the connection path the cluster uses: plaintext,
or the cluster's mTLS (`OutboundTls`, the peer's identity checked as for requests). A 2xx or 3xx
status line within `timeout` passes; anything else (refused, reset, timeout, other status,
refused identity) fails. An endpoint is marked down after `unhealthy_threshold` failures in a row
(the `EJECT_HEALTH_CHECK` bit: fail-fast and outlier detection keep their own bits) and up again
after `healthy_threshold` passes in a row. Endpoints start up.

A probe uses its own short connection (`Connection: close`), outside the cluster's connection
limits and pools, as Envoy's health checker does. Its bytes are built once per configuration by
`probe_request`: the path percent-encoded as the router sends a configured path, and anything that
could end the request line or a header (CR, LF) refused, by `check_health_check` before the data
plane builds anything (a NACK) and again by `configure`. Probes run only while the cluster has a
health check: the checker is started when the Snapshot gives one and stopped when an update
removes it or the cluster closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gossamer import snapshot as snap
from gossamer.http import syntax
from gossamer.proxy.loadbalance.base import EJECT_HEALTH_CHECK, EndpointState
from gossamer.proxy.outlier import check_seconds
from gossamer.proxy.upstream import TlsConnectError
from gossamer.telemetry.metrics import CounterChild

if TYPE_CHECKING:
    from gossamer.proxy.mtls import OutboundTls

log = logging.getLogger("gossamer.proxy.health")

JITTER = 0.1
MAX_STATUS_LINE = 4096  # bytes read for the status line before the probe gives up


def probe_request(path: str, service: str) -> bytes:
    """The bytes of a probe: `GET <path>` with the service as Host, on a connection of its own.

    The path goes out as the router would send a configured one (non-ASCII and spaces
    percent-encoded), so nothing in it can end the request line or add a header.

    Raises:
        ValueError: the path does not start with "/" or holds "?", "#" or control characters
            (CR, LF among them); the service holds CR, LF or NUL or is not latin-1.
    """
    try:
        target = syntax.encode_path(path)
    except ValueError as exc:
        raise ValueError(f"health_check.path: {exc}") from None
    try:
        host = syntax.encode_header_value(service)
    except ValueError as exc:
        raise ValueError(f"service (the health checks' Host): {exc}") from None
    return (
        b"GET " + target + b" HTTP/1.1\r\nhost: " + host + b"\r\n"
        b"user-agent: gossamer-health-check\r\nconnection: close\r\n\r\n"
    )


def check_health_check(config: snap.HealthCheck, service: str) -> None:
    """Raise ValueError naming the field for settings the checker cannot run with."""
    probe_request(config.path, service)
    check_seconds("health_check.interval", config.interval)
    check_seconds("health_check.timeout", config.timeout)
    for field, value in (
        ("healthy_threshold", config.healthy_threshold),
        ("unhealthy_threshold", config.unhealthy_threshold),
    ):
        if value < 1:
            raise ValueError(f"health_check.{field} must be 1 or more, not {value}")


class ProbeFailed(Exception):
    """A probe that got no usable answer; the message says why (for the debug log)."""


class _StatusLine(asyncio.Protocol):
    """Sends one request, reads the status line of the answer, and closes."""

    def __init__(self, request: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.status: asyncio.Future[int] = loop.create_future()
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self) -> None:
        if self.transport is not None:
            self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.status.done():
            return
        self.buffer += data
        line, sep, _ = self.buffer.partition(b"\r\n")
        if not sep:
            if len(self.buffer) > MAX_STATUS_LINE:
                self._fail("status line too long")
            return
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            self._fail(f"not an HTTP status line: {line[:80]!r}")
            return
        self.status.set_result(int(parts[1]))
        self.close()

    def _fail(self, reason: str) -> None:
        if not self.status.done():
            self.status.set_exception(ProbeFailed(reason))
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.status.done():
            self.status.set_exception(ProbeFailed("connection closed before a status line"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class _EndpointCheck:
    """The probing state of one endpoint (kept by address across Snapshot updates)."""

    __slots__ = ("endpoint", "failures", "successes", "task", "timer")

    def __init__(self, endpoint: EndpointState) -> None:
        self.endpoint = endpoint
        self.successes = 0
        self.failures = 0
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None


class HealthChecker:
    """Active health checking of one cluster's endpoints."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        cluster: str,
        service: str,
        config: snap.HealthCheck,
        results: dict[str, CounterChild],
        rand: random.Random,
    ) -> None:
        """`results`: the health-check counter's children by result (success, failure,
        timeout)."""
        self.loop = loop
        self.cluster = cluster
        self.results = results
        self.rand = rand
        self.tls: OutboundTls | None = None  # the cluster's, kept current by ClusterRuntime
        self.checks: dict[str, _EndpointCheck] = {}
        self.down = 0  # endpoints with the EJECT_HEALTH_CHECK bit set
        self.closed = False
        self.service = service
        self.configure(config)

    def configure(self, config: snap.HealthCheck) -> None:
        """Take (new) settings; probes already scheduled keep their time.

        Raises:
            ValueError: settings `check_health_check` refuses (nothing is changed).
        """
        check_health_check(config, self.service)
        self.request = probe_request(config.path, self.service)
        self.path = config.path
        self.interval = config.interval
        self.timeout = config.timeout
        self.healthy_threshold = config.healthy_threshold
        self.unhealthy_threshold = config.unhealthy_threshold

    def set_endpoints(self, endpoints: Sequence[EndpointState]) -> None:
        """Probe these endpoints from now on; removed ones stop (and lose their mark)."""
        checks: dict[str, _EndpointCheck] = {}
        for e in endpoints:
            check = self.checks.pop(e.address, None)
            if check is None:
                check = _EndpointCheck(e)
                if not self.closed:
                    check.timer = self.loop.call_later(
                        self.rand.random() * self.interval, self._start, check
                    )
            check.endpoint = e
            checks[e.address] = check
        for gone in self.checks.values():
            self._stop(gone)
        self.checks = checks
        self.down = sum(1 for c in checks.values() if c.endpoint.ejected & EJECT_HEALTH_CHECK)

    def close(self) -> None:
        """Stop probing and put every endpoint back (health checks were turned off)."""
        self.closed = True
        for check in self.checks.values():
            self._stop(check)
        self.down = 0

    def _stop(self, check: _EndpointCheck) -> None:
        if check.timer is not None:
            check.timer.cancel()
            check.timer = None
        if check.task is not None:
            check.task.cancel()
            check.task = None
        check.endpoint.ejected &= ~EJECT_HEALTH_CHECK

    def _start(self, check: _EndpointCheck) -> None:
        check.timer = None
        if self.closed:
            return
        check.task = self.loop.create_task(self._run(check))

    async def _run(self, check: _EndpointCheck) -> None:
        result = await self.probe(check.endpoint)
        check.task = None
        if self.closed or self.checks.get(check.endpoint.address) is not check:
            return
        if result is not None:
            self.record(check, result)
        delay = self.interval * (1.0 - JITTER + 2.0 * JITTER * self.rand.random())
        check.timer = self.loop.call_later(delay, self._start, check)

    def record(self, check: _EndpointCheck, result: str) -> None:
        """Count one probe's result and move the endpoint down or up at the thresholds."""
        self.results[result].inc()
        e = check.endpoint
        if result == "success":
            check.failures = 0
            check.successes += 1
            if e.ejected & EJECT_HEALTH_CHECK and check.successes >= self.healthy_threshold:
                e.ejected &= ~EJECT_HEALTH_CHECK
                self.down -= 1
                log.info("cluster %s: endpoint %s passes health checks", self.cluster, e.address)
        else:
            check.successes = 0
            check.failures += 1
            if not e.ejected & EJECT_HEALTH_CHECK and check.failures >= self.unhealthy_threshold:
                e.ejected |= EJECT_HEALTH_CHECK
                self.down += 1
                log.warning(
                    "cluster %s: endpoint %s failed %d health checks in a row",
                    self.cluster,
                    e.address,
                    check.failures,
                )

    async def probe(self, endpoint: EndpointState) -> str | None:
        """One probe of `endpoint`: "success", "failure" or "timeout"; None when the probe
        could not be made for a reason that is not the endpoint's (this proxy has no SVID yet)."""
        proto: _StatusLine | None = None
        try:
            async with asyncio.timeout(self.timeout):
                proto = await self._connect(endpoint)
                proto.send()
                status = await proto.status
        except TimeoutError:
            return "timeout"
        except asyncio.CancelledError:
            raise
        except TlsConnectError as exc:
            if not exc.endpoint_fault:
                return None
            log.debug("health check of %s (cluster %s): %s", endpoint.address, self.cluster, exc)
            return "failure"
        except Exception as exc:  # refused, reset, TLS refused, garbage: all mean "failed"
            log.debug("health check of %s (cluster %s): %s", endpoint.address, self.cluster, exc)
            return "failure"
        finally:
            if proto is not None:
                proto.close()
                if not proto.status.done():
                    proto.status.cancel()
                else:
                    with contextlib.suppress(BaseException):
                        proto.status.exception()
        return "success" if 200 <= status < 400 else "failure"

    async def _connect(self, endpoint: EndpointState) -> _StatusLine:
        loop = self.loop
        tls = self.tls
        if tls is None:
            _, proto = await loop.create_connection(
                lambda: _StatusLine(self.request, loop), endpoint.host, endpoint.port
            )
            return proto
        proto = await tls.connect(
            loop, lambda: _StatusLine(self.request, loop), endpoint, self.timeout
        )
        refused, _ = tls.verified_peer(proto.transport, endpoint.address)
        if refused is not None:
            proto.close()
            raise ProbeFailed(refused)
        return proto
