"""Rate limits through real data planes on 127.0.0.1 (helpers from test_dataplane.py).

Local buckets on the inbound and outbound listeners answer 429 `rate-limited` with Retry-After
and the IETF RateLimit fields, on a connection that stays usable; a Global rule goes through a
real redis-server (tests/redislib.py), pausing the request (body included) while Redis answers,
and fails closed when Redis is gone.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import msgspec
from test_dataplane import (
    Backend,
    Client,
    cluster,
    echo,
    metric_value,
    run,
    snapshot,
    start_dataplane,
    vhost,
)

from gossamer import snapshot as snap

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from redislib import RedisServer, redis_server

__all__ = ["redis_server"]  # the fixture, used by name


def with_limits(base: snap.Snapshot, limits: snap.RateLimits) -> snap.Snapshot:
    return snap.seal(msgspec.structs.replace(base, rate_limits=limits))


def decisions(registry: object, direction: str, rule: str, decision: str) -> float:
    return metric_value(
        registry,  # type: ignore[arg-type]
        "gossamer_proxy_rate_limit_decisions_total"
        f'{{direction="{direction}",rule="{rule}",decision="{decision}"}}',
    )


def test_inbound_local_limit_answers_429_with_the_headers_and_keeps_the_connection() -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        limit = snap.RateLimitRule(
            name="default/catalog-limits#0",
            matches=[snap.RouteMatch(path=snap.PathMatch(type="PathPrefix", value="/api"))],
            keys=[snap.RateLimitKey(type="SourceIdentity")],
            requests=2,
            period=60.0,
        )
        base = snapshot([], [], app_port=app.port, service="catalog")
        dp, inbound, _, registry = await start_dataplane(
            with_limits(base, snap.RateLimits(inbound=[limit]))
        )
        client = await Client.open(inbound)
        for _ in range(2):
            assert (await client.request(b"/api/items", b"catalog")).status == 200
        r = await client.request(b"/api/items", b"catalog", method=b"POST", body=b"dropped")
        assert (r.status, r.header(b"x-gossamer-flags")) == (429, b"rate-limited")
        assert r.header(b"retry-after") == b"30"
        assert r.header(b"ratelimit-policy") == b'"default/catalog-limits#0";q=2;w=60'
        assert r.header(b"ratelimit") == b'"default/catalog-limits#0";r=0;t=30'
        body = msgspec.json.decode(r.body)
        assert body["error"] == "rate-limited"
        assert "default/catalog-limits#0" in body["message"]
        assert len(app.seen) == 2  # the refused request never reached the app
        # Not matched by the rule: served; the connection is still usable.
        assert (await client.request(b"/health", b"catalog")).status == 200
        # The same Snapshot again (or one with the rule unchanged) keeps the empty bucket.
        dp.apply(with_limits(base, snap.RateLimits(inbound=[limit])))
        assert (await client.request(b"/api/items", b"catalog")).status == 429
        assert decisions(registry, "inbound", limit.name, "allowed") == 2
        assert decisions(registry, "inbound", limit.name, "limited") == 2
        # Without rate limits, nothing is checked any more.
        dp.apply(base)
        assert (await client.request(b"/api/items", b"catalog")).status == 200

    run(main())


def test_outbound_limit_per_route_rule() -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        limit = snap.RateLimitRule(
            name="default/pricing-calls#0",
            route_rules=["default"],
            keys=[snap.RateLimitKey(type="Route"), snap.RateLimitKey(type="Header", name="x-user")],
            requests=1,
            period=1.0,
        )
        base = snapshot([vhost("pricing")], [cluster("pricing", [app.address])])
        _dp, _, outbound, registry = await start_dataplane(
            with_limits(base, snap.RateLimits(outbound=[limit]))
        )
        client = await Client.open(outbound)
        alice, bob = b"x-user: alice\r\n", b"x-user: bob\r\n"
        assert (await client.request(b"/p", b"pricing", headers=alice)).status == 200
        r = await client.request(b"/p", b"pricing", headers=alice)
        assert r.status == 429
        assert r.header(b"retry-after") == b"1"
        assert (await client.request(b"/p", b"pricing", headers=bob)).status == 200
        assert decisions(registry, "outbound", limit.name, "limited") == 1

    run(main())


def test_global_limit_through_redis_pauses_the_request_then_limits_and_fails_closed(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        limit = snap.RateLimitRule(
            name="default/catalog-global#0",
            keys=[snap.RateLimitKey(type="Header", name="x-user")],
            requests=3,
            period=60.0,
            scope="Global",
            failure_mode="FailClosed",
        )
        limits = snap.RateLimits(
            inbound=[limit],
            redis=snap.RedisServer(address=redis_server.address, timeout=0.5),
        )
        base = snapshot([], [], app_port=app.port, service="catalog")
        _dp, inbound, _, registry = await start_dataplane(with_limits(base, limits))
        client = await Client.open(inbound)
        user = b"x-user: ann\r\n"
        # The first request waits for Redis (no budget yet); its body still reaches the app.
        r = await client.request(
            b"/a", b"catalog", method=b"POST", body=b"x" * 300_000, headers=user
        )
        assert r.status == 200
        assert r.body == b"x" * 300_000
        statuses = [
            (await client.request(b"/a", b"catalog", headers=user)).status for _ in range(3)
        ]
        assert statuses == [200, 200, 429]
        assert b"gossamer:default/catalog-global#0:ann" in redis_server.command("KEYS", "*")

        redis_server.stop()
        r = await client.request(b"/a", b"catalog", headers=b"x-user: bea\r\n")
        assert (r.status, r.header(b"x-gossamer-flags")) == (429, b"rate-limited")
        body = msgspec.json.decode(r.body)
        assert "unavailable" in body["message"]
        assert r.header(b"retry-after") is not None
        assert decisions(registry, "inbound", limit.name, "fail_closed") == 1
        assert decisions(registry, "inbound", limit.name, "allowed") == 3
        assert len(app.seen) == 3

    run(main())


def test_concurrent_requests_waiting_on_one_redis_fetch_share_what_it_grants(
    redis_server: RedisServer,
) -> None:
    """Ten connections find no budget at once and wait on the fetches in flight: the bucket's
    4 tokens go to four of them, the other six get 429, none is left hanging."""

    async def main() -> None:
        app = await Backend(echo).start()
        limit = snap.RateLimitRule(
            name="default/burst#0", requests=2, burst=2, period=60.0, scope="Global"
        )
        limits = snap.RateLimits(
            inbound=[limit], redis=snap.RedisServer(address=redis_server.address, timeout=1.0)
        )
        base = snapshot([], [], app_port=app.port, service="catalog")
        _dp, inbound, _, registry = await start_dataplane(with_limits(base, limits))
        clients = [await Client.open(inbound) for _ in range(10)]
        responses = await asyncio.gather(*(c.request(b"/x", b"catalog") for c in clients))
        statuses = sorted(r.status for r in responses)
        assert statuses == [200] * 4 + [429] * 6
        assert decisions(registry, "inbound", limit.name, "limited") == 6
        assert metric_value(registry, "gossamer_proxy_rate_limit_redis_errors_total") == 0

    run(main())


def test_a_request_waiting_on_a_removed_global_rule_goes_through() -> None:
    """A Snapshot update that drops a Global rule while a request waits on Redis (here one that
    never answers, with a long timeout) lets that request through, promptly: the rule no longer
    applies. The connection then serves the next request without any limit."""

    async def main() -> None:
        heard = asyncio.Event()
        hung: list[asyncio.StreamWriter] = []

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            hung.append(writer)
            while await reader.read(65536):
                heard.set()

        redis = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = redis.sockets[0].getsockname()[1]
        try:
            app = await Backend(echo).start()
            limit = snap.RateLimitRule(
                name="default/g#0",
                requests=5,
                period=1.0,
                scope="Global",
                failure_mode="FailClosed",
            )
            limits = snap.RateLimits(
                inbound=[limit], redis=snap.RedisServer(address=f"127.0.0.1:{port}", timeout=30.0)
            )
            base = snapshot([], [], app_port=app.port, service="catalog")
            dp, inbound, _, registry = await start_dataplane(with_limits(base, limits))
            client = await Client.open(inbound)
            client.send(b"POST /w HTTP/1.1\r\nhost: catalog\r\ncontent-length: 4\r\n\r\nbody")
            async with asyncio.timeout(5.0):
                await heard.wait()  # the request waits on the fetch Redis never answers
            loop = asyncio.get_running_loop()
            started = loop.time()
            dp.apply(with_limits(base, snap.RateLimits()))
            r = await client.response()
            assert (r.status, r.body) == (200, b"body")
            assert loop.time() - started < 5.0  # not the 30 s timeout
            assert decisions(registry, "inbound", limit.name, "allowed") == 1
            assert decisions(registry, "inbound", limit.name, "fail_closed") == 0
            assert (await client.request(b"/next", b"catalog")).status == 200
            assert len(app.seen) == 2
        finally:
            for w in hung:
                w.close()
            redis.close()
            await redis.wait_closed()

    run(main())
