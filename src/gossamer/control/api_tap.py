"""The control plane's tap: `GET /v1/tap?service=` merges the live taps of a service's proxies.

Each registered proxy of the service serves `GET /tap` on its admin listener (proxy/tap.py): the
access-log records of the requests it finishes, inbound (what the service received) and outbound
(what it sent), as NDJSON. This route opens the tap of every one of them with the same filter,
adds `"proxyId"` to each record and streams the merged lines to the operator until they leave.
Proxies that register later are picked up within `TAP_REFRESH` seconds; one that goes away just
stops contributing (and is tried again if it is still registered at the next refresh).

The merge is bounded: lines wait in a queue of `MAX_QUEUED` and past that are dropped and counted;
the stream then carries `{"tapDropped": N}` (N dropped here so far). A proxy's own drops arrive
the same way with its `proxyId`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from gossamer.control.registry import Registration
from gossamer.telemetry.tap_filter import TapFilterError, parse_filter

if TYPE_CHECKING:
    from gossamer.control.server import ControlPlane

log = logging.getLogger("gossamer.control.api")

TAP_REFRESH = 2.0  # seconds between looks for new proxies of the tapped service
MAX_QUEUED = 10000  # merged lines waiting for a slow operator; more are dropped
MAX_LINE = 256 * 1024  # a proxy's record line longer than this ends its stream
CONNECT_TIMEOUT = 5.0
BATCH = 512  # lines sent in one chunk when they pile up


def _dial_address(admin: str) -> tuple[str, int]:
    """host, port of an admin address `host:port` (`[v6]:port`); a wildcard host is loopback."""
    host, _, port = admin.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return host, int(port)


class TapMerger:
    """The taps of a changing set of proxies, merged into one NDJSON stream.

    Args:
        proxies: the registrations to tap now (read again every `refresh` seconds).
        query: the tap filter as query parameters, passed to every proxy.
    """

    def __init__(
        self,
        proxies: Callable[[], list[Registration]],
        query: dict[str, str],
        *,
        refresh: float | None = None,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self.proxies = proxies
        self.target = "/tap" + ("?" + urllib.parse.urlencode(query) if query else "")
        self.refresh = TAP_REFRESH if refresh is None else refresh
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(max_queued)
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.dropped = 0
        self._reported = 0

    def follow_new(self) -> None:
        for reg in self.proxies():
            task = self.tasks.get(reg.proxy_id)
            if reg.admin and (task is None or task.done()):
                self.tasks[reg.proxy_id] = asyncio.create_task(
                    self._follow(reg.proxy_id, reg.admin)
                )

    async def _follow(self, proxy_id: str, admin: str) -> None:
        """Copy one proxy's tap into the queue until it ends (or cannot be opened)."""
        try:
            host, port = _dial_address(admin)
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE)
        except (OSError, TimeoutError, ValueError) as exc:
            log.info(
                "tap: cannot reach the admin listener of proxy %s at %s: %s", proxy_id, admin, exc
            )
            return
        try:
            writer.write(
                f"GET {self.target} HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n".encode()
            )
            async with asyncio.timeout(CONNECT_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            if status != b"200":
                body = await reader.read(4096)
                log.info(
                    "tap: proxy %s refused its tap (HTTP %s): %s",
                    proxy_id,
                    status.decode("latin-1"),
                    body.decode("utf-8", "replace").strip(),
                )
                return
            prefix = b'{"proxyId":' + json.dumps(proxy_id).encode() + b","
            while True:
                line = await reader.readline()
                if not line.endswith(b"\n"):
                    return  # the proxy closed its tap (drain, restart)
                if not line.startswith(b"{") or len(line) < 4:
                    continue
                try:
                    self.queue.put_nowait(prefix + line[1:])
                except asyncio.QueueFull:
                    self.dropped += 1
        except (OSError, TimeoutError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            log.info("tap: the tap of proxy %s ended: %s", proxy_id, exc or type(exc).__name__)
        finally:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def stream(self, request: Request | None = None) -> AsyncIterator[bytes]:
        """The merged lines, in chunks, until the client leaves (`request` disconnects)."""
        loop = asyncio.get_running_loop()
        next_refresh = loop.time()
        try:
            while True:
                now = loop.time()
                if now >= next_refresh:
                    self.follow_new()
                    next_refresh = now + self.refresh
                try:
                    async with asyncio.timeout(next_refresh - now):
                        first = await self.queue.get()
                except TimeoutError:
                    if request is not None and await request.is_disconnected():
                        return
                    continue
                lines = [first]
                while len(lines) < BATCH and not self.queue.empty():
                    lines.append(self.queue.get_nowait())
                if self.dropped != self._reported:
                    self._reported = self.dropped
                    lines.append(b'{"tapDropped":%d}\n' % self.dropped)
                yield b"".join(lines)
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop following every proxy (the stream's end does this too)."""
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


def service_proxies(
    cp: ControlPlane, service: str, namespace: str | None
) -> Callable[[], list[Registration]]:
    def current() -> list[Registration]:
        return [
            reg
            for reg in cp.registry.endpoints(service)
            if namespace is None or reg.namespace == namespace
        ]

    return current


def tap_router(cp: ControlPlane) -> APIRouter:
    """The `/v1/tap` route bound to `cp` (any operator role may tap: `_Auth` in api.py)."""
    from gossamer.control.api import ApiError

    router = APIRouter()

    @router.get("/v1/tap")
    async def tap(
        request: Request,
        service: str,
        namespace: str | None = None,
        path: str | None = None,
        method: str | None = None,
        status: str | None = None,
        direction: str | None = None,
    ) -> StreamingResponse:
        """Stream the requests the proxies of `service` finish, as NDJSON, until the client
        leaves; `path` (a prefix), `method`, `status` (`503` or `5xx`) and `direction`
        (`inbound`: what the service received; `outbound`: what it sent) filter them."""
        params = {"path": path, "method": method, "status": status, "direction": direction}
        try:
            tap_filter = parse_filter(params)
        except TapFilterError as exc:
            name = str(exc).split(" ", 1)[0]
            raise ApiError(
                422,
                "invalid",
                f"the tap filter is invalid: {exc}",
                [{"path": f"query.{name}", "message": str(exc)}],
            ) from None
        proxies = service_proxies(cp, service, namespace)
        if not proxies():
            where = f" in namespace {namespace!r}" if namespace else ""
            raise ApiError(
                404,
                "not_found",
                f"no proxy of service {service!r}{where} is registered; see gossamer proxy-status",
            )
        merger = TapMerger(proxies, tap_filter.query())
        return StreamingResponse(
            merger.stream(request),
            media_type="application/x-ndjson",
            headers={"cache-control": "no-store"},
        )

    return router
