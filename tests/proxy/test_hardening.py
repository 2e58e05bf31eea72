"""Limits and refusals at the proxy's edges, in-process on uvloop.

Response head size, request header count, proxy credentials, https through the forward proxy,
CONNECT, redirect bodies and the header timeout; real data planes and backends on 127.0.0.1
(helpers from test_dataplane.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import msgspec
from test_dataplane import (
    Backend,
    Client,
    Seen,
    cluster,
    echo,
    metric_value,
    ok,
    run,
    snapshot,
    start_dataplane,
    vhost,
)

from gossamer import snapshot as snap


def test_a_response_head_over_the_limit_is_a_502_in_one_read_and_split() -> None:
    """The upstream's 200 KB head is not forwarded, however it arrives; the client gets 502
    `upstream-headers-too-large`, and the next request is served."""
    big = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-big: " + b"a" * 200_000 + b"\r\n\r\nok"

    backends: list[Backend] = []

    async def split(seen: Seen) -> bytes | None:
        protocol = backends[0].protocols[-1]
        assert protocol.transport is not None
        protocol.transport.write(big[:100_000])
        await asyncio.sleep(0.02)  # let the first part arrive in a read of its own
        return big[100_000:]

    def handler(seen: Seen) -> bytes | Awaitable[bytes | None]:
        if seen.url == b"/big":
            return big
        if seen.url == b"/split":
            return split(seen)
        return ok()

    async def main() -> None:
        backend = await Backend(handler).start()
        backends.append(backend)
        _dp, _, out, registry = await start_dataplane(
            snapshot([vhost("svc")], [cluster("svc", [backend.address])])
        )
        client = await Client.open(out)
        for target in (b"/big", b"/split"):
            r = await client.request(target, b"svc")
            assert (r.status, r.header(b"x-gossamer-flags")) == (
                502,
                b"upstream-headers-too-large",
            ), target
            body = msgspec.json.decode(r.body)
            assert "65536-byte header limit" in body["message"]
            r = await client.request(b"/small", b"svc")
            assert (r.status, r.body) == (200, b"ok")
        flag = 'gossamer_proxy_local_responses_total{direction="outbound",flag="upstream-headers'
        assert metric_value(registry, flag) == 2
        client.close()

    run(main())


def test_more_request_header_fields_than_the_limit_get_431_naming_the_count() -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        _dp, _, out, _ = await start_dataplane(
            snapshot([vhost("svc")], [cluster("svc", [app.address])])
        )
        client = await Client.open(out)
        # host + 99 = 100 fields: allowed.
        fields = b"".join(b"x-f%d: v\r\n" % i for i in range(99))
        r = await client.request(b"/", b"svc", headers=fields)
        assert r.status == 200
        r = await client.request(b"/", b"svc", headers=fields + b"x-one-more: v\r\n")
        assert (r.status, r.header(b"x-gossamer-flags")) == (431, b"headers-too-large")
        assert "101 header fields" in msgspec.json.decode(r.body)["message"]
        assert await client.at_eof()
        assert len(app.seen) == 1
        client.close()

        # Configurable in ProxySettings.
        _dp, _, out, _ = await start_dataplane(
            snapshot([vhost("svc")], [cluster("svc", [app.address])]), max_request_headers=3
        )
        client = await Client.open(out)
        r = await client.request(b"/", b"svc", headers=b"a: 1\r\nb: 2\r\n")
        assert r.status == 200
        r = await client.request(b"/", b"svc", headers=b"a: 1\r\nb: 2\r\nc: 3\r\n")
        assert r.status == 431
        assert "more than 3" in msgspec.json.decode(r.body)["message"]
        client.close()

    run(main())


def test_proxy_credentials_are_not_forwarded_either_way() -> None:
    """Proxy-Authorization is for the proxy, Proxy-Authenticate from the upstream's proxy."""

    def app_handler(seen: Seen) -> bytes:
        return ok(b"ok", b"proxy-authenticate: Basic realm=x\r\nx-kept: 1\r\n")

    async def main() -> None:
        app = await Backend(app_handler).start()
        _dp, _, out, _ = await start_dataplane(
            snapshot([vhost("svc")], [cluster("svc", [app.address])])
        )
        client = await Client.open(out)
        r = await client.request(b"/", b"svc", headers=b"Proxy-Authorization: Basic c2VjcmV0\r\n")
        assert r.status == 200
        assert r.header(b"proxy-authenticate") is None
        assert r.header(b"x-kept") == b"1"
        names = [k for k, _ in app.seen[0].headers]
        assert b"proxy-authorization" not in names
        client.close()

    run(main())


def test_https_absolute_form_on_the_outbound_listener_is_a_clear_400() -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        _dp, _, out, _ = await start_dataplane(
            snapshot([vhost("svc")], [cluster("svc", [app.address])])
        )
        client = await Client.open(out)
        client.send(b"GET https://svc/x HTTP/1.1\r\nhost: svc\r\n\r\n")
        r = await client.response()
        assert (r.status, r.header(b"x-gossamer-flags")) == (400, b"bad-request")
        message = msgspec.json.decode(r.body)["message"]
        assert "https:// through the mesh's forward proxy is not supported" in message
        assert "call http://svc" in message
        assert await client.at_eof()
        client.close()
        # The plain http form is served.
        client = await Client.open(out)
        client.send(b"GET http://svc/x HTTP/1.1\r\nhost: svc\r\n\r\n")
        r = await client.response()
        assert (r.status, r.header(b"x-seen-url")) == (200, b"/x")
        assert app.seen[0].url == b"/x"
        client.close()

    run(main())


def test_connect_gets_501_not_implemented() -> None:
    async def main() -> None:
        _dp, _, out, _ = await start_dataplane(snapshot([], []))
        _, port = out.rsplit(":", 1)
        reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
        writer.write(b"CONNECT svc:443 HTTP/1.1\r\nhost: svc:443\r\n\r\n")
        line = await reader.readline()
        assert line == b"HTTP/1.1 501 Not Implemented\r\n"
        writer.close()

    run(main())


def test_a_redirect_body_says_where_to_not_error() -> None:
    async def main() -> None:
        redirect = snap.RequestRedirectFilter(
            request_redirect=snap.RequestRedirect(hostname="other", status_code=301)
        )
        vh = snap.VirtualHost(
            name="svc.default",
            domains=["svc"],
            rules=[snap.RouteRule(name="r", filters=[redirect], backends=[])],
        )
        _dp, _, out, _ = await start_dataplane(snapshot([vh], []))
        client = await Client.open(out)
        r = await client.request(b"/x", b"svc")
        assert (r.status, r.header(b"x-gossamer-flags")) == (301, b"redirect")
        location = r.header(b"location")
        assert location is not None
        assert msgspec.json.decode(r.body) == {"redirect": location.decode(), "status": 301}
        client.close()

    run(main())


def test_header_timeout_after_a_response_gets_408_and_an_idle_connection_a_bare_close() -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        _dp, _, out, registry = await start_dataplane(
            snapshot([vhost("svc")], [cluster("svc", [app.address])]),
            header_timeout=0.2,
            downstream_idle_timeout=0.2,
        )
        client = await Client.open(out)
        first = await client.request(b"/", b"svc")
        assert first.status == 200
        client.send(b"GET /slow HTTP/1.1\r\nhost: svc\r\n")
        r = await client.response()
        assert (r.status, r.header(b"x-gossamer-flags")) == (408, b"header-timeout")
        rid = r.header(b"x-request-id")
        assert rid is not None
        assert rid != first.header(b"x-seen-rid")
        assert await client.at_eof()
        client.close()
        flag = 'gossamer_proxy_local_responses_total{direction="outbound",flag="header-timeout"}'
        assert metric_value(registry, flag) == 1

        # Idle between requests: closed without a word, as keep-alive allows.
        idle = await Client.open(out)
        assert (await idle.request(b"/", b"svc")).status == 200
        assert await idle.at_eof()
        idle.close()

    run(main())
