"""Probes the local app: `GET <readiness path>` (2xx/3xx = ready), or a TCP connect when no path."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger("gossamer.proxy")


async def probe_app(host: str, port: int, path: str | None, time_limit: float) -> tuple[bool, str]:
    """One probe of the app. Returns (ready, why-not); never raises for a failing app."""
    try:
        async with asyncio.timeout(time_limit):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                if path is None:
                    return True, ""
                writer.write(
                    b"GET %s HTTP/1.1\r\nhost: %s:%d\r\nuser-agent: gossamer-proxy\r\n"
                    b"connection: close\r\n\r\n"
                    % (path.encode("ascii", "replace"), host.encode(), port)
                )
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        return False, f"app {host}:{port} did not answer within {time_limit:g}s"
    except OSError as exc:
        return False, f"app {host}:{port} unreachable: {exc.strerror or exc}"
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False, f"app {host}:{port} sent no HTTP status line for GET {path}"
    status = int(parts[1])
    if 200 <= status < 400:
        return True, ""
    return False, f"app answered {status} on GET {path}"


class ReadinessProbe:
    """Probes the app every `interval` seconds; calls `on_change(ready)` when the answer flips."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str | None,
        *,
        interval: float = 1.0,
        timeout: float = 0.5,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.interval = interval
        self.timeout = timeout
        self.on_change = on_change
        self.ready = False
        self.reason = "app not probed yet"
        self.probes = 0
        self._probed = asyncio.Event()

    async def probe_once(self) -> bool:
        ready, why = await probe_app(self.host, self.port, self.path, self.timeout)
        self.probes += 1
        changed = ready != self.ready
        self.ready, self.reason = ready, why
        self._probed.set()
        if changed:
            if ready:
                log.info("app ready (%s:%d%s)", self.host, self.port, self.path or "")
            else:
                log.info("app not ready: %s", why)
            if self.on_change is not None:
                self.on_change(ready)
        return ready

    async def wait_probed(self) -> None:
        """Until at least one probe has finished."""
        await self._probed.wait()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.probe_once()
            await asyncio.sleep(max(0.0, self.interval - (loop.time() - started)))
