"""Fakes shared by the proxy process tests: a control plane speaking the documented protocol, and a
data plane that records what it was given. No tests live here."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

from gossamer import snapshot as snapshot_mod
from gossamer.proxy.dataplane import BoundAddresses
from gossamer.security.tls import SvidFiles
from gossamer.snapshot import Cluster, ProxyIdentity, Snapshot

DEADLINE = 5.0


def make_snapshot(proxy_id: str = "web-0", cluster: str = "pricing.default") -> Snapshot:
    return snapshot_mod.seal(
        Snapshot(
            proxy=ProxyIdentity(proxy_id=proxy_id, service="web"),
            clusters=[Cluster(name=cluster, service=cluster.split(".")[0])],
        )
    )


class SnapshotError(Exception):
    """Stands in for gossamer.proxy.dataplane.SnapshotError (matched by name)."""


class FakeDataPlane:
    """Records applied snapshots; refuses any snapshot with a cluster named "bad.default"."""

    def __init__(self) -> None:
        self.applied: list[Snapshot] = []
        self.drained: float | None = None
        self.started = False
        self.svids: list[SvidFiles | None] = []

    async def start(self) -> BoundAddresses:
        self.started = True
        return BoundAddresses(inbound="127.0.0.1:1", outbound="127.0.0.1:2")

    def apply(self, snapshot: Snapshot) -> None:
        if any(c.name == "bad.default" for c in snapshot.clusters):
            raise SnapshotError("cluster bad.default: load balancer cannot be built")
        self.applied.append(snapshot)

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109
        self.drained = timeout

    def set_svid(self, files: SvidFiles | None) -> None:
        self.svids.append(files)


class FakeControlPlane:
    """An asyncio HTTP/1.1 server on 127.0.0.1 speaking the proxy <-> control plane protocol.

    `snapshot_body` is what GET .../snapshot returns (raw bytes, so tests can send broken JSON);
    `forget()` drops every registration, so heartbeats get 404 as after a restart.
    """

    def __init__(self, heartbeat_interval: float = 0.05) -> None:
        self.heartbeat_interval = heartbeat_interval
        self.registrations: list[tuple[str, dict[str, Any]]] = []
        self.known: set[str] = set()
        self.heartbeats: list[tuple[str, dict[str, Any]]] = []
        self.acks: list[dict[str, Any]] = []
        self.polls: list[str] = []
        self.deregistered: list[str] = []
        self.snapshot_body: bytes | None = None
        self.snapshot_version = ""
        self.port = 0
        self.server: asyncio.Server | None = None
        self._changed = asyncio.Condition()
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self._writers):
            w.close()
        for task in list(self._handlers):
            task.cancel()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.server.wait_closed()
        self.server = None

    def forget(self) -> None:
        self.known.clear()

    async def set_snapshot(self, body: bytes, version: str) -> None:
        async with self._changed:
            self.snapshot_body, self.snapshot_version = body, version
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool], what: str) -> None:
        async with asyncio.timeout(DEADLINE):
            async with self._changed:
                await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                length = 0
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b""):
                        break
                    name, _, value = h.decode().partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                status, answer = await self._route(method, target, body)
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                    b"connection: close\r\n\r\n" % (status, len(answer)) + answer
                )
                await writer.drain()
                await self._notify()
                return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            # Cancelled when the server stops mid long-poll; ending quietly keeps the loop's
            # exception handler out of the test output.
            return
        finally:
            self._handlers.discard(task)
            self._writers.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _route(self, method: str, target: str, body: bytes) -> tuple[int, bytes]:
        url = urlsplit(target)
        parts = url.path.strip("/").split("/")
        assert parts[:2] == ["v1", "proxies"], target
        proxy_id = parts[2]
        action = parts[3] if len(parts) > 3 else ""
        if method == "POST" and action == "register":
            self.registrations.append((proxy_id, msgspec.json.decode(body)))
            self.known.add(proxy_id)
            return 200, msgspec.json.encode({"heartbeatInterval": self.heartbeat_interval})
        if method == "POST" and action == "heartbeat":
            self.heartbeats.append((proxy_id, msgspec.json.decode(body)))
            return (200, b"{}") if proxy_id in self.known else (404, b'{"error": {}}')
        if method == "POST" and action == "ack":
            self.acks.append(msgspec.json.decode(body))
            return 200, b"{}"
        if method == "DELETE" and action == "":
            self.deregistered.append(proxy_id)
            self.known.discard(proxy_id)
            return 200, b"{}"
        if method == "GET" and action == "snapshot":
            query = parse_qs(url.query, keep_blank_values=True)
            version = query["version"][0]
            wait = float(query["wait"][0])
            self.polls.append(version)
            await self._notify()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait), self._changed:
                    await self._changed.wait_for(
                        lambda: self.snapshot_body is not None and self.snapshot_version != version
                    )
            if self.snapshot_body is not None and self.snapshot_version != version:
                return 200, self.snapshot_body
            return 304, b""
        return 404, b'{"error": {}}'
