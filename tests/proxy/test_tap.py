"""The admin listener's live tap (GET /tap) on a real DataPlane: filters, limits, slow tappers."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
from test_dataplane import (
    Backend,
    Client,
    _cleanups,
    cluster,
    dead_address,
    echo,
    run,
    snapshot,
    start_dataplane,
    vhost,
    wait_until,
)

from gossamer.proxy.admin import AdminServer
from gossamer.proxy.dataplane import DataPlane
from gossamer.telemetry.metrics import Registry
from gossamer.telemetry.tap_filter import TapFilterError, parse_filter


class View:
    """The admin listener's view of a proxy: always ready (these tests only tap)."""

    def readiness(self) -> tuple[bool, str]:
        return True, ""

    def config_document(self) -> dict[str, object]:
        return {}

    def request_quit(self) -> None:
        return None


async def start_admin(dp: DataPlane, registry: Registry) -> tuple[AdminServer, str]:
    admin = AdminServer(View(), registry, taps=dp.taps)
    host, port = await admin.start("127.0.0.1", 0)
    return admin, f"{host}:{port}"


class TapClient:
    """GET /tap over a raw connection; `lines()` reads NDJSON records as they come."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.status = 0
        self.body = b""

    @classmethod
    async def open(cls, admin: str, query: str = "", method: str = "GET") -> TapClient:
        host, port = admin.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"{method} /tap{query} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n".encode()
        )
        client = cls(reader, writer)

        async def cleanup() -> None:
            client.close()

        _cleanups.append(cleanup)
        head = await reader.readuntil(b"\r\n\r\n")
        client.status = int(head.split(b" ", 2)[1])
        if client.status != 200:
            client.body = await reader.read()
        return client

    async def record(self) -> dict[str, Any]:
        line = await self.reader.readline()
        assert line, "the tap ended"
        doc: dict[str, Any] = json.loads(line)
        return doc

    async def rest(self) -> list[dict[str, Any]]:
        """Every record until the stream ends."""
        data = await self.reader.read()
        return [json.loads(line) for line in data.splitlines()]

    def close(self) -> None:
        self.writer.close()


def test_filters_parse_and_refuse_bad_values() -> None:
    f = parse_filter({"path": "/a", "method": "post", "status": "5XX", "direction": "inbound"})
    assert (f.path, f.method, f.status, f.status_class, f.direction) == (
        "/a",
        "POST",
        None,
        5,
        "inbound",
    )
    assert parse_filter(f.query()) == f
    assert parse_filter({"status": "404"}).status == 404
    assert parse_filter({"path": "", "method": ""}) == parse_filter({})
    for params, word in (
        ({"status": "600"}, "status"),
        ({"status": "abc"}, "status"),
        ({"direction": "sideways"}, "direction"),
        ({"path": "nope"}, "path"),
        ({"method": "GE T"}, "method"),
        ({"colour": "red"}, "colour"),
    ):
        with pytest.raises(TapFilterError, match=word):
            parse_filter(params)


def test_tap_streams_records_that_pass_its_filter() -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        dp, _, out, registry = await start_dataplane(
            snapshot(
                [vhost("pricing"), vhost("gone")],
                [cluster("pricing", [app.address]), cluster("gone", [dead_address()])],
            )
        )
        admin, where = await start_admin(dp, registry)
        try:
            assert dp.outbound.tap is None  # nobody taps: the record point tests None only
            every = await TapClient.open(where)
            errors = await TapClient.open(where, "?status=5xx")
            posts = await TapClient.open(where, "?path=/a&method=post&direction=outbound")
            inbound_only = await TapClient.open(where, "?direction=inbound")
            assert {every.status, errors.status, posts.status, inbound_only.status} == {200}
            assert dp.outbound.tap is dp.taps
            client = await Client.open(out)
            assert (await client.request(b"/a/1", b"pricing")).status == 200
            assert (await client.request(b"/a/2?q=1", b"pricing", b"POST", b"hey")).status == 200
            assert (await client.request(b"/b", b"nowhere")).status == 404
            assert (await client.request(b"/a/3", b"gone")).status == 503
            records = [await every.record() for _ in range(4)]
            assert [(r["method"], r["path"], r["status"]) for r in records] == [
                ("GET", "/a/1", 200),
                ("POST", "/a/2?q=1", 200),
                ("GET", "/b", 404),
                ("GET", "/a/3", 503),
            ]
            first = records[0]
            assert first["direction"] == "outbound"
            assert first["upstreamCluster"] == "pricing.default"
            assert first["upstreamEndpoint"] == app.address
            assert first["time"].endswith("Z")
            assert records[1]["bytesReceived"] == 3
            assert records[2]["flags"] == "no-route"
        finally:
            await admin.close()
        assert [(r["path"], r["flags"]) for r in await errors.rest()] == [
            ("/a/3", "connect-failure")
        ]
        assert [r["path"] for r in await posts.rest()] == ["/a/2?q=1"]
        assert await inbound_only.rest() == []
        # The admin closed every tap: requests pay nothing for taps again.
        await wait_until(lambda: dp.outbound.tap is None and not dp.taps.taps)

    run(main())


def test_tap_refuses_bad_filters_other_methods_and_too_many_taps() -> None:
    async def main() -> None:
        dp, _, _, registry = await start_dataplane(snapshot([], []))
        dp.taps.max_taps = 2
        admin, where = await start_admin(dp, registry)
        try:
            bad = await TapClient.open(where, "?status=9xx")
            assert bad.status == 400
            assert b"status '9xx'" in bad.body
            post = await TapClient.open(where, method="POST")
            assert post.status == 405
            taps = [await TapClient.open(where) for _ in range(2)]
            assert [t.status for t in taps] == [200, 200]
            third = await TapClient.open(where)
            assert third.status == 503
            assert json.loads(third.body.split(b"\n", 1)[0])["error"]["code"] == "too_many_taps"
            taps[0].close()  # a tap that leaves frees its place
            await wait_until(lambda: len(dp.taps.taps) == 1)
            again = await TapClient.open(where)
            assert again.status == 200
            for t in (taps[1], again):
                t.close()
            await wait_until(lambda: dp.outbound.tap is None)
        finally:
            await admin.close()

    run(main())


def test_a_tapper_that_does_not_read_loses_records_not_requests() -> None:
    """A tap client that never reads: its records are dropped and counted once its buffer is
    full; requests go on at full speed and a reading tap next to it sees every one."""
    requests = 600
    long = b"z" * 6000  # big records: past what the kernel's socket buffers take in

    async def main() -> None:
        app = await Backend(echo).start()
        dp, _, out, registry = await start_dataplane(
            snapshot([vhost("pricing")], [cluster("pricing", [app.address])])
        )
        dp.taps.max_buffer = 16 * 1024
        admin, where = await start_admin(dp, registry)
        host, port = where.rsplit(":", 1)
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(slow, (host, int(port)))
            slow.send(b"GET /tap HTTP/1.1\r\nhost: admin\r\n\r\n")
            fast = await TapClient.open(where)
            await wait_until(lambda: len(dp.taps.taps) == 2)
            slow_tap = dp.taps.taps[0]
            clients = [await Client.open(out) for _ in range(4)]
            seen: list[dict[str, Any]] = []

            async def read_fast() -> None:
                while len(seen) < requests:
                    doc = await fast.record()
                    if "tapDropped" not in doc:
                        seen.append(doc)

            reader = asyncio.create_task(read_fast())
            started = time.monotonic()

            async def send(client: Client, n: int) -> None:
                for i in range(n):
                    r = await client.request(b"/x/%d/" % i + long, b"pricing", b"POST", b"y")
                    assert r.status == 200

            await asyncio.gather(*(send(c, requests // 4) for c in clients))
            elapsed = time.monotonic() - started
            await asyncio.wait_for(reader, 5.0)
            assert len(seen) == requests
            assert slow_tap.dropped > 0
            assert slow_tap.sent + slow_tap.dropped == requests
            assert elapsed < 5.0, f"{requests} requests took {elapsed:.1f}s with a stuck tapper"
            fast.close()
        finally:
            slow.close()
            await admin.close()

    run(main())
