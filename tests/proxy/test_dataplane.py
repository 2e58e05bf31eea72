"""End-to-end tests of the data plane on uvloop: real sockets on 127.0.0.1, real backends.

Every test builds a static Snapshot, starts `DataPlane`s in-process and talks to them with a raw
HTTP/1.1 client (httptools-parsed, independent of the proxy's codec) or curl. Backends are small
asyncio servers that record what reached them.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import httptools
import pytest
import uvloop

from gossamer import snapshot as snap
from gossamer.proxy.dataplane import DataPlane, ProxySettings, SnapshotError
from gossamer.proxy.exchange import READ_UPSTREAM_FULL
from gossamer.telemetry.metrics import Registry

DEADLINE = 10.0


# What a test opened, closed by `run` whatever the outcome.
_cleanups: list[Callable[[], Awaitable[None]]] = []


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run a test body on a fresh uvloop loop, bounded by a deadline, then close what it opened."""

    async def bounded() -> None:
        try:
            async with asyncio.timeout(DEADLINE):
                await coro
        finally:
            while _cleanups:
                await _cleanups.pop()()
            await asyncio.sleep(0.01)  # let transports finish closing

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(bounded())


# --- backends -------------------------------------------------------------------------------------


@dataclass
class Seen:
    method: bytes
    url: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    conn_id: int


# A handler gets the request and returns the raw response bytes, None to never answer, or an
# awaitable of either (to answer late).
Handler = Callable[[Seen], "bytes | Awaitable[bytes | None] | None"]


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


class _BackendProtocol(asyncio.Protocol):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.parser = httptools.HttpRequestParser(self)
        backend.connections += 1
        backend.protocols.append(self)
        self.conn_id = backend.connections
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[Seen] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.backend.hold_reads is not None:
            transport.pause_reading()  # type: ignore[attr-defined]
            self.backend.hold_reads.add_done_callback(
                lambda _: transport.resume_reading()  # type: ignore[attr-defined]
            )
        self.task = asyncio.get_running_loop().create_task(self.serve())
        self.backend.tasks.add(self.task)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        seen = Seen(method, self.url, self.headers, bytes(self.body), self.conn_id)
        self.backend.seen.append(seen)
        self.queue.put_nowait(seen)

    async def serve(self) -> None:
        while True:
            seen = await self.queue.get()
            result = self.backend.handler(seen)
            if result is not None and not isinstance(result, bytes):
                result = await result
            if result is None:
                await asyncio.Event().wait()  # never answer
            assert self.transport is not None
            self.transport.write(result)
            if b"connection: close" in result.lower():
                self.transport.close()


@dataclass
class Backend:
    handler: Handler
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    protocols: list[_BackendProtocol] = field(default_factory=list)
    hold_reads: asyncio.Future[None] | None = None  # reading starts when this resolves
    server: asyncio.AbstractServer | None = None
    address: str = ""

    async def start(self) -> Backend:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _BackendProtocol(self), "127.0.0.1", 0)

        async def cleanup() -> None:
            self.close()

        _cleanups.append(cleanup)
        port = self.server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        return self

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in self.tasks:
            t.cancel()
        for p in self.protocols:
            if p.transport is not None:
                p.transport.close()


def echo(seen: Seen) -> bytes:
    """Answers with the request body and what it saw in a few headers."""
    rid = dict(seen.headers).get(b"x-request-id", b"")
    return ok(seen.body, b"x-seen-url: %s\r\nx-seen-rid: %s\r\n" % (seen.url, rid))


async def wait_until(condition: Callable[[], bool], deadline: float = 5.0) -> None:
    """Poll `condition` every 5 ms until it holds; fail after `deadline` seconds."""
    for _ in range(int(deadline / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached before the deadline")


def dead_address() -> str:
    """A loopback port nobody listens on (bound, then closed)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


# --- client ---------------------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class Client:
    """A raw keep-alive HTTP/1.1 client over one connection (not for HEAD requests)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ready: list[Response] = []
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self.parser = httptools.HttpResponseParser(self)

    @classmethod
    async def open(cls, address: str) -> Client:
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        client = cls(reader, writer)

        async def cleanup() -> None:
            client.close()

        _cleanups.append(cleanup)
        return client

    def on_message_begin(self) -> None:
        self._headers = []
        self._body = bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        self.ready.append(Response(status, self._headers, bytes(self._body)))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self) -> Response:
        while not self.ready:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("connection closed before a whole response")
            self.parser.feed_data(data)
        return self.ready.pop(0)

    async def request(
        self,
        target: bytes,
        host: bytes,
        method: bytes = b"GET",
        body: bytes | None = None,
        headers: bytes = b"",
    ) -> Response:
        framing = b"" if body is None else b"content-length: %d\r\n" % len(body)
        self.send(
            b"%s %s HTTP/1.1\r\nhost: %s\r\n%s%s\r\n%s"
            % (method, target, host, framing, headers, body or b"")
        )
        return await self.response()

    async def at_eof(self) -> bool:
        """True when the proxy closes the connection within 2 s (with nothing more to read)."""
        try:
            async with asyncio.timeout(2.0):
                data = await self.reader.read(1)
        except TimeoutError:
            return False
        return data == b""

    def close(self) -> None:
        self.writer.close()


# --- snapshots ------------------------------------------------------------------------------------


def cluster(
    name: str,
    addresses: list[str],
    pool: snap.ConnectionPool | None = None,
    budget: snap.RetryBudget | None = None,
    policy: snap.LoadBalancerPolicy = "ROUND_ROBIN",
) -> snap.Cluster:
    return snap.Cluster(
        name=f"{name}.default",
        service=name,
        endpoints=[snap.Endpoint(address=a) for a in addresses],
        connection_pool=pool or snap.ConnectionPool(),
        retry_budget=budget or snap.RetryBudget(),
        load_balancer=snap.LoadBalancer(policy=policy),
    )


def vhost(
    name: str,
    backends: list[tuple[str, int]] | None = None,
    retry: snap.RetryPolicy | None = None,
    timeouts: snap.Timeouts | None = None,
    filters: list[snap.RouteFilter] | None = None,
    rule: str = "default",
) -> snap.VirtualHost:
    return snap.VirtualHost(
        name=f"{name}.default",
        domains=[name, f"{name}.default"],
        rules=[
            snap.RouteRule(
                name=rule,
                filters=filters or [],
                backends=[
                    snap.WeightedCluster(cluster=f"{c}.default", weight=w)
                    for c, w in (backends or [(name, 1)])
                ],
                retry=retry,
                timeouts=timeouts or snap.Timeouts(),
            )
        ],
    )


def snapshot(
    vhosts: list[snap.VirtualHost],
    clusters: list[snap.Cluster],
    app_port: int | None = None,
    service: str = "frontend",
) -> snap.Snapshot:
    return snap.seal(
        snap.Snapshot(
            proxy=snap.ProxyIdentity(proxy_id=f"{service}-0", service=service),
            listeners=snap.Listeners(
                inbound=snap.InboundListener(app_port=app_port) if app_port else None
            ),
            virtual_hosts=vhosts,
            clusters=clusters,
        )
    )


async def start_dataplane(
    snapshot_: snap.Snapshot, **settings: Any
) -> tuple[DataPlane, str, str, Registry]:
    registry = Registry()
    dp = DataPlane(asyncio.get_running_loop(), ProxySettings(**settings), registry)
    bound = await dp.start()

    async def cleanup() -> None:
        if not dp.draining:
            await dp.drain(0.0)

    _cleanups.append(cleanup)
    dp.apply(snapshot_)
    return dp, bound.inbound, bound.outbound, registry


async def mesh_pair(app: Backend) -> tuple[DataPlane, DataPlane, str]:
    """A 'frontend' sidecar whose outbound reaches a 'pricing' sidecar in front of `app`.

    Returns both data planes and the frontend's outbound address.
    """
    pricing, pricing_in, _, _ = await start_dataplane(
        snapshot([], [], app_port=app.port, service="pricing")
    )
    front, _, front_out, _ = await start_dataplane(
        snapshot([vhost("pricing")], [cluster("pricing", [pricing_in])])
    )
    return front, pricing, front_out


def metric_value(registry: Registry, line_start: str) -> float:
    for line in registry.render().decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --- (1) forwarding -------------------------------------------------------------------------------


def test_outbound_to_inbound_to_app_with_keep_alive_on_every_hop() -> None:
    """Requests on one client connection go outbound -> inbound -> app, reusing one upstream
    connection per hop, with request id, forwarded headers and hop-by-hop removal applied."""

    async def main() -> None:
        app = await Backend(echo).start()
        _front, pricing, out = await mesh_pair(app)
        client = await Client.open(out)
        for i in range(3):
            r = await client.request(
                b"/prices/%d?x=1" % i,
                b"pricing",
                headers=b"connection: keep-alive, x-private\r\nx-private: 1\r\n"
                b"keep-alive: timeout=5\r\nte: trailers\r\nproxy-connection: keep-alive\r\n",
            )
            assert r.status == 200
            assert r.header(b"x-seen-url") == b"/prices/%d?x=1" % i
            assert r.header(b"connection") is None
        assert app.connections == 1, "the inbound sidecar should reuse its app connection"
        assert len({s.conn_id for s in app.seen}) == 1
        seen = app.seen[0]
        names = [k for k, _ in seen.headers]
        for hop in (b"connection", b"x-private", b"keep-alive", b"te", b"proxy-connection"):
            assert hop not in names
        h = dict(seen.headers)
        assert h[b"host"] == b"pricing"
        assert len(h[b"x-request-id"]) == 32
        # Appended by both hops, each with the address it saw.
        assert h[b"x-forwarded-for"] == b"127.0.0.1, 127.0.0.1"
        assert h[b"x-forwarded-proto"] == b"http"
        # The request id survives the second hop unchanged, and each request has its own.
        assert len({dict(s.headers)[b"x-request-id"] for s in app.seen}) == 3
        pricing_conns = pricing.inbound.connections
        assert len(pricing_conns) == 1, "the outbound sidecar should reuse its upstream"
        client.close()
        app.close()

    run(main())


def test_existing_request_id_and_xff_are_kept_and_appended() -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        _front, _pricing, out = await mesh_pair(app)
        client = await Client.open(out)
        r = await client.request(
            b"/", b"pricing", headers=b"x-request-id: abc\r\nx-forwarded-for: 10.0.0.1\r\n"
        )
        assert r.header(b"x-seen-rid") == b"abc"
        h = dict(app.seen[0].headers)
        assert h[b"x-forwarded-for"] == b"10.0.0.1, 127.0.0.1, 127.0.0.1"
        client.close()
        app.close()

    run(main())


def test_bodies_stream_both_ways_content_length_chunked_and_big() -> None:
    """Content-Length and chunked request bodies arrive intact; a 5 MB body makes the round trip
    through both sidecars (flow control on both directions)."""

    async def main() -> None:
        app = await Backend(echo).start()
        _front, _pricing, out = await mesh_pair(app)
        client = await Client.open(out)
        r = await client.request(b"/cl", b"pricing", b"POST", b"hello")
        assert (r.status, r.body) == (200, b"hello")
        client.send(
            b"POST /ch HTTP/1.1\r\nhost: pricing\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3;x=y\r\nabc\r\n4\r\ndefg\r\n0\r\nx-trailer: 1\r\n\r\n"
        )
        r = await client.response()
        assert (r.status, r.body) == (200, b"abcdefg")
        big = bytes(range(256)) * (5 * 1024 * 1024 // 256)
        r = await client.request(b"/big", b"pricing", b"POST", big)
        assert r.status == 200
        assert r.body == big
        assert app.seen[-1].body == big
        client.close()
        app.close()

    run(main())


def test_flow_control_bounds_buffers_in_both_directions() -> None:
    """A slow reader on either side pauses the other side: the proxy's buffers stay bounded
    while 16 MB wait, and everything arrives once the reader catches up."""
    size = 16 * 1024 * 1024

    async def main() -> None:
        loop = asyncio.get_running_loop()
        app = await Backend(lambda s: ok(b"%d" % len(s.body))).start()
        app.hold_reads = loop.create_future()
        dp, _, out, _ = await start_dataplane(
            snapshot([vhost("app")], [cluster("app", [app.address])])
        )
        client = await Client.open(out)
        client.send(b"POST / HTTP/1.1\r\nhost: app\r\ncontent-length: %d\r\n\r\n" % size)
        client.send(b"x" * size)
        await wait_until(lambda: bool(dp.outbound.connections))
        conn = next(iter(dp.outbound.connections))
        # Paused because the upstream's write buffer is full, not just for want of a connection.
        await wait_until(lambda: conn.read_paused & READ_UPSTREAM_FULL != 0)
        pools = dp.tables.clusters["app.default"].pools.values()
        upstreams = [c for p in pools for c in p.idle] + [
            e.upstream for e in [conn.exchange] if e is not None and e.upstream is not None
        ]
        assert upstreams
        buffered = sum(u.transport.get_write_buffer_size() for u in upstreams if u.transport)
        assert buffered < 4 * 1024 * 1024
        app.hold_reads.set_result(None)
        r = await client.response()
        assert r.body == b"%d" % size

        big = b"y" * size
        app.handler = lambda s: ok(big)
        client.send(b"GET /big HTTP/1.1\r\nhost: app\r\n\r\n")
        # The client reads nothing yet: the proxy must stop reading the upstream.
        await wait_until(lambda: conn.write_paused)
        assert conn.transport is not None
        assert conn.transport.get_write_buffer_size() < 4 * 1024 * 1024
        r = await client.response()
        assert len(r.body) == size

    run(main())


def test_chunked_and_until_eof_responses_are_rechunked() -> None:
    """A chunked upstream body and one without length (ended by close) both go out chunked, and
    the client's connection stays open for the next request."""

    def handler(seen: Seen) -> bytes:
        if seen.url == b"/eof":
            return b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end"
        return (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n1\r\nc\r\n0\r\n\r\n"
        )

    async def main() -> None:
        app = await Backend(handler).start()
        _dp, _, out, _ = await start_dataplane(
            snapshot([vhost("app")], [cluster("app", [app.address])])
        )
        client = await Client.open(out)
        r = await client.request(b"/chunked", b"app")
        assert (r.status, r.body, r.header(b"transfer-encoding")) == (200, b"abc", b"chunked")
        r = await client.request(b"/eof", b"app")
        assert (r.status, r.body, r.header(b"transfer-encoding")) == (
            200,
            b"until the end",
            b"chunked",
        )
        assert r.header(b"connection") is None
        r = await client.request(b"/chunked", b"app")
        assert r.body == b"abc"

    run(main())


def test_pipelined_requests_are_answered_in_order() -> None:
    """Three requests in one write get three responses in order, the slow one first."""

    async def handler(seen: Seen) -> bytes:
        if seen.url == b"/slow":
            await asyncio.sleep(0.05)
        return ok(seen.url)

    async def main() -> None:
        app = await Backend(handler).start()
        _dp, _, out, _ = await start_dataplane(
            snapshot([vhost("app")], [cluster("app", [app.address])])
        )
        client = await Client.open(out)
        client.send(
            b"GET /slow HTTP/1.1\r\nhost: app\r\n\r\n"
            b"POST /b HTTP/1.1\r\nhost: app\r\ncontent-length: 2\r\n\r\nhi"
            b"GET /c HTTP/1.1\r\nhost: app\r\n\r\n"
        )
        bodies = [(await client.response()).body for _ in range(3)]
        assert bodies == [b"/slow", b"/b", b"/c"]
        client.close()
        app.close()

    run(main())


def test_routing_by_host_absolute_form_and_default_host() -> None:
    """Host picks the service; an absolute-form target (HTTP_PROXY clients) works on the same
    port; an unknown host goes to the default host when one is set, else gets no-route."""

    async def main() -> None:
        a = await Backend(lambda s: ok(b"A")).start()
        b = await Backend(lambda s: ok(b"B")).start()
        snap_ = snapshot(
            [vhost("alpha"), vhost("beta")],
            [cluster("alpha", [a.address]), cluster("beta", [b.address])],
        )
        _dp, _, out, registry = await start_dataplane(snap_)
        client = await Client.open(out)
        assert (await client.request(b"/", b"alpha")).body == b"A"
        assert (await client.request(b"/", b"beta.default")).body == b"B"
        assert (await client.request(b"http://beta/x", b"ignored")).body == b"B"
        assert b.seen[-1].url == b"/x"
        r = await client.request(b"/", b"nowhere")
        assert r.status == 404
        assert r.header(b"x-gossamer-flags") == b"no-route"
        assert r.header(b"content-type") == b"application/json"
        # The connection stays usable after a local response.
        assert (await client.request(b"/", b"alpha")).body == b"A"
        assert (
            metric_value(
                registry,
                'gossamer_proxy_local_responses_total{direction="outbound",flag="no-route"}',
            )
            == 1
        )
        _dp2, _, out2, _ = await start_dataplane(snap_, default_host="beta")
        c2 = await Client.open(out2)
        assert (await c2.request(b"/", b"127.0.0.1:1234")).body == b"B"
        client.close()
        c2.close()
        a.close()
        b.close()

    run(main())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_through_http_proxy_absolute_form() -> None:
    """A real client honouring a proxy setting (curl -x) reaches the mesh service."""

    async def main() -> None:
        app = await Backend(echo).start()
        _front, _pricing, out = await mesh_pair(app)
        proc = await asyncio.create_subprocess_exec(
            "curl",
            "-sS",
            "--max-time",
            "5",
            "-x",
            f"http://{out}",
            "-d",
            "payload",
            "http://pricing/curl",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr
        assert stdout == b"payload"
        assert app.seen[0].url == b"/curl"
        app.close()

    run(main())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_big_upload_with_expect_100_continue() -> None:
    """curl sends `Expect: 100-continue` for a big body: the proxy answers 100 itself, strips
    Expect, and streams the body to the app."""

    async def main() -> None:
        app = await Backend(lambda s: ok(b"%d" % len(s.body))).start()
        _front, _pricing, out = await mesh_pair(app)
        proc = await asyncio.create_subprocess_exec(
            *("curl", "-sS", "--max-time", "5", "-x", f"http://{out}"),
            *("-H", "Expect: 100-continue", "--data-binary", "@-", "http://pricing/upload"),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        stdout, stderr = await proc.communicate(b"z" * 2_000_000)
        assert proc.returncode == 0, stderr
        assert stdout == b"2000000"
        assert b"expect" not in dict(app.seen[0].headers)

    run(main())


def test_weighted_split_follows_weights() -> None:
    async def main() -> None:
        v1 = await Backend(lambda s: ok(b"v1")).start()
        v2 = await Backend(lambda s: ok(b"v2")).start()
        snap_ = snapshot(
            [vhost("svc", backends=[("v1", 80), ("v2", 20)])],
            [cluster("v1", [v1.address]), cluster("v2", [v2.address])],
        )
        dp, _, out, _ = await start_dataplane(snap_)
        dp.rand.seed(7)
        client = await Client.open(out)
        counts = {b"v1": 0, b"v2": 0}
        for _ in range(200):
            counts[(await client.request(b"/", b"svc")).body] += 1
        assert 130 <= counts[b"v1"] <= 190, counts
        client.close()
        v1.close()
        v2.close()

    run(main())


# --- (2) flags, retries, timeouts, limits ---------------------------------------------------------


def test_retry_on_connect_failure_goes_to_the_other_endpoint() -> None:
    async def main() -> None:
        good = await Backend(lambda s: ok(b"good")).start()
        retry = snap.RetryPolicy(attempts=2, retry_on=["connect-failure"])
        _dp, _, out, registry = await start_dataplane(
            snapshot([vhost("svc", retry=retry)], [cluster("svc", [dead_address(), good.address])])
        )
        client = await Client.open(out)
        for _ in range(4):  # round robin hits the dead endpoint first at least once
            assert (await client.request(b"/", b"svc")).body == b"good"
        assert metric_value(registry, 'gossamer_proxy_retries_total{cluster="svc.default"}') >= 1
        client.close()
        good.close()

    run(main())


def test_connect_failure_without_retry_is_flagged() -> None:
    async def main() -> None:
        _dp, _, out, _ = await start_dataplane(
            snapshot([vhost("svc")], [cluster("svc", [dead_address()])])
        )
        client = await Client.open(out)
        r = await client.request(b"/", b"svc")
        assert (r.status, r.header(b"x-gossamer-flags")) == (503, b"connect-failure")
        client.close()

    run(main())


def test_retry_on_503_with_retry_on_5xx() -> None:
    async def main() -> None:
        bad = await Backend(lambda s: b"HTTP/1.1 503 No\r\ncontent-length: 4\r\n\r\nbusy").start()
        good = await Backend(lambda s: ok(b"good")).start()
        retry = snap.RetryPolicy(attempts=1, retry_on=["5xx"])
        _dp, _, out, _ = await start_dataplane(
            snapshot([vhost("svc", retry=retry)], [cluster("svc", [bad.address, good.address])])
        )
        client = await Client.open(out)
        for _ in range(4):
            r = await client.request(b"/", b"svc", b"POST", b"body")
            assert (r.status, r.body) == (200, b"good")
        assert bad.seen
        assert all(s.body == b"body" for s in bad.seen)
        assert all(s.body == b"body" for s in good.seen)
        client.close()
        bad.close()
        good.close()

    run(main())


def test_per_try_timeout_then_success_on_another_endpoint() -> None:
    async def main() -> None:
        hang = await Backend(lambda s: None).start()
        good = await Backend(lambda s: ok(b"good")).start()
        retry = snap.RetryPolicy(attempts=1, retry_on=["5xx"], per_try_timeout=0.1)
        _dp, _, out, _ = await start_dataplane(
            snapshot([vhost("svc", retry=retry)], [cluster("svc", [hang.address, good.address])])
        )
        client = await Client.open(out)
        for _ in range(2):
            r = await client.request(b"/", b"svc")
            assert (r.status, r.body) == (200, b"good")
        assert hang.seen, "the hanging endpoint should have had one try"
        client.close()
        hang.close()
        good.close()

    run(main())


def test_request_timeout_is_flagged_504() -> None:
    async def main() -> None:
        hang = await Backend(lambda s: None).start()
        _dp, _, out, _ = await start_dataplane(
            snapshot(
                [vhost("svc", timeouts=snap.Timeouts(request=0.1))],
                [cluster("svc", [hang.address])],
            )
        )
        client = await Client.open(out)
        r = await client.request(b"/", b"svc")
        assert (r.status, r.header(b"x-gossamer-flags")) == (504, b"timeout")
        client.close()
        hang.close()

    run(main())


def test_retry_budget_exhaustion_is_flagged() -> None:
    """With a zero budget, a failed try is not retried and the answer names the budget."""

    async def main() -> None:
        bad = await Backend(lambda s: b"HTTP/1.1 503 No\r\ncontent-length: 0\r\n\r\n").start()
        retry = snap.RetryPolicy(attempts=3, retry_on=["5xx", "connect-failure"])
        budget = snap.RetryBudget(ratio=0.0, min_per_second=0.0, ttl=10.0)
        _dp, _, out, _ = await start_dataplane(
            snapshot(
                [vhost("svc", retry=retry), vhost("dead", retry=retry)],
                [
                    cluster("svc", [bad.address], budget=budget),
                    cluster("dead", [dead_address()], budget=budget),
                ],
            )
        )
        client = await Client.open(out)
        r = await client.request(b"/", b"svc")
        assert (r.status, r.header(b"x-gossamer-flags")) == (503, b"retry-budget-exhausted")
        r = await client.request(b"/", b"dead")
        assert (r.status, r.header(b"x-gossamer-flags")) == (503, b"retry-budget-exhausted")
        assert len(bad.seen) == 1
        client.close()
        bad.close()

    run(main())


def test_no_healthy_endpoint_is_flagged() -> None:
    async def main() -> None:
        unhealthy = snap.Cluster(
            name="svc.default",
            service="svc",
            endpoints=[snap.Endpoint(address="127.0.0.1:9", healthy=False)],
        )
        _dp, _, out, registry = await start_dataplane(snapshot([vhost("svc")], [unhealthy]))
        client = await Client.open(out)
        r = await client.request(b"/", b"svc")
        assert (r.status, r.header(b"x-gossamer-flags")) == (503, b"no-healthy-endpoint")
        assert b'"error":"no-healthy-endpoint"' in r.body
        assert (
            metric_value(
                registry,
                'gossamer_proxy_requests_total{direction="outbound",cluster="svc.default",'
                'status_class="5xx"}',
            )
            == 1
        )
        client.close()

    run(main())


def test_overflow_when_pending_requests_exceed_the_limit() -> None:
    """One connection allowed, one pending: the third concurrent request overflows, and the
    pending one is served when the first finishes."""

    async def main() -> None:
        release = asyncio.Event()

        async def handler(seen: Seen) -> bytes:
            if seen.url == b"/hold":
                await release.wait()
            return ok(seen.url)

        app = await Backend(handler).start()
        pool = snap.ConnectionPool(max_connections=1, max_pending_requests=1)
        dp, _, out, _ = await start_dataplane(
            snapshot([vhost("svc")], [cluster("svc", [app.address], pool=pool)])
        )
        c1, c2, c3 = [await Client.open(out) for _ in range(3)]
        c1.send(b"GET /hold HTTP/1.1\r\nhost: svc\r\n\r\n")
        await wait_until(lambda: bool(app.seen))
        c2.send(b"GET /second HTTP/1.1\r\nhost: svc\r\n\r\n")
        await wait_until(lambda: bool(dp.tables.clusters["svc.default"].pending))
        r3 = await c3.request(b"/third", b"svc")
        assert (r3.status, r3.header(b"x-gossamer-flags")) == (503, b"overflow")
        release.set()
        assert (await c1.response()).body == b"/hold"
        assert (await c2.response()).body == b"/second"
        assert app.connections == 1
        for c in (c1, c2, c3):
            c.close()
        app.close()

    run(main())


def test_max_requests_per_connection_rotates_connections() -> None:
    async def main() -> None:
        app = await Backend(lambda s: ok()).start()
        pool = snap.ConnectionPool(max_requests_per_connection=2)
        _dp, _, out, _ = await start_dataplane(
            snapshot([vhost("svc")], [cluster("svc", [app.address], pool=pool)])
        )
        client = await Client.open(out)
        for _ in range(5):
            assert (await client.request(b"/", b"svc")).status == 200
        assert app.connections == 3
        client.close()
        app.close()

    run(main())


def test_upstream_reset_mid_request_is_flagged_502() -> None:
    async def main() -> None:
        app = await Backend(lambda s: b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc").start()

        async def closer(seen: Seen) -> bytes:
            return b"garbage that is not http\r\n\r\n"

        bad = await Backend(closer).start()
        _dp, _, out, _ = await start_dataplane(
            snapshot([vhost("svc")], [cluster("svc", [bad.address])])
        )
        client = await Client.open(out)
        r = await client.request(b"/", b"svc")
        assert (r.status, r.header(b"x-gossamer-flags")) == (502, b"upstream-reset")
        client.close()
        app.close()
        bad.close()

    run(main())


# --- (3) hardening --------------------------------------------------------------------------------


def test_garbage_gets_400_and_close() -> None:
    async def main() -> None:
        _dp, _, out, _ = await start_dataplane(snapshot([], []))
        client = await Client.open(out)
        client.send(b"THIS IS NOT HTTP\r\n\r\n")
        r = await client.response()
        assert (r.status, r.header(b"x-gossamer-flags")) == (400, b"bad-request")
        assert r.header(b"connection") == b"close"
        assert await client.at_eof()
        client.close()

    run(main())


def test_oversized_head_gets_431() -> None:
    async def main() -> None:
        _dp, _, out, _ = await start_dataplane(snapshot([], []), max_header_bytes=1024)
        client = await Client.open(out)
        r = await client.request(b"/", b"svc", headers=b"x-big: " + b"a" * 2048 + b"\r\n")
        assert (r.status, r.header(b"x-gossamer-flags")) == (431, b"headers-too-large")
        assert await client.at_eof()
        client.close()

    run(main())


def test_slowloris_is_cut_off_after_the_header_timeout() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        _dp, _, out, _ = await start_dataplane(snapshot([], []), header_timeout=0.2)
        client = await Client.open(out)
        started = loop.time()
        client.send(b"GET / HTTP/1.1\r\n")
        for _ in range(3):
            await asyncio.sleep(0.03)
            client.send(b"x-a: b\r\n")
        # Told why before the close: no byte of a response had gone out.
        r = await client.response()
        assert (r.status, r.header(b"x-gossamer-flags")) == (408, b"header-timeout")
        assert r.header(b"connection") == b"close"
        assert "0.2s header timeout" in r.body.decode()
        assert await client.at_eof()
        assert loop.time() - started < 1.0
        client.close()

    run(main())


def test_drain_finishes_in_flight_requests_with_connection_close() -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def handler(seen: Seen) -> bytes:
            await release.wait()
            return ok(b"done")

        app = await Backend(handler).start()
        dp, _, out, _ = await start_dataplane(
            snapshot([vhost("svc")], [cluster("svc", [app.address])])
        )
        busy = await Client.open(out)
        idle = await Client.open(out)
        busy.send(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
        await wait_until(lambda: bool(app.seen))
        drain = asyncio.ensure_future(dp.drain(5.0))
        assert await idle.at_eof(), "an idle connection closes at once"
        release.set()
        r = await busy.response()
        assert (r.status, r.body, r.header(b"connection")) == (200, b"done", b"close")
        await drain
        host, port = out.rsplit(":", 1)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, int(port))
        app.close()

    run(main())


def test_drain_timeout_answers_what_is_still_waiting_with_503_draining() -> None:
    async def main() -> None:
        never = asyncio.Event()

        async def handler(seen: Seen) -> bytes:
            await never.wait()
            return ok()

        app = await Backend(handler).start()
        dp, _, out, _ = await start_dataplane(
            snapshot([vhost("svc")], [cluster("svc", [app.address])])
        )
        client = await Client.open(out)
        client.send(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
        await wait_until(lambda: bool(app.seen))
        await dp.drain(0.2)
        # Told why, instead of a bare reset: the upstream had not answered within the drain.
        r = await client.response()
        assert (r.status, r.header(b"x-gossamer-flags")) == (503, b"draining")
        assert r.header(b"connection") == b"close"
        assert "0.2s drain timeout" in r.body.decode()
        assert await client.at_eof()
        client.close()
        app.close()

    run(main())


def test_apply_keeps_old_tables_on_error_and_pools_across_updates() -> None:
    async def main() -> None:
        app = await Backend(lambda s: ok()).start()
        good = snapshot([vhost("svc")], [cluster("svc", [app.address])])
        dp, _, out, _ = await start_dataplane(good)
        client = await Client.open(out)
        assert (await client.request(b"/", b"svc")).status == 200
        runtime = dp.tables.clusters["svc.default"]
        bad = snapshot([vhost("svc", backends=[("missing", 1)])], [cluster("svc", [app.address])])
        with pytest.raises(SnapshotError, match="missing"):
            dp.apply(bad)
        assert (await client.request(b"/", b"svc")).status == 200
        # Same endpoint in a new snapshot: same runtime, same warm connection.
        dp.apply(
            snapshot(
                [vhost("svc"), vhost("other")],
                [cluster("svc", [app.address]), cluster("other", [app.address])],
            )
        )
        assert dp.tables.clusters["svc.default"] is runtime
        assert (await client.request(b"/", b"svc")).status == 200
        assert app.connections == 1
        client.close()
        app.close()

    run(main())
