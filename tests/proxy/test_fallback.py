"""Route fallbacks end to end: cached, backend and static responses for every cause.

Real data planes and backends on 127.0.0.1 (helpers from test_dataplane.py). Staleness is driven
by swapping the rule's cache clock for a fake one; nothing waits for max_stale to pass.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_access_log_dataplane import read_log
from test_dataplane import (
    Backend,
    Client,
    Seen,
    cluster,
    dead_address,
    echo,
    metric_value,
    ok,
    run,
    start_dataplane,
    wait_until,
)

from gossamer import snapshot as snap
from gossamer.http.message import RequestHead
from gossamer.proxy.dataplane import DataPlane
from gossamer.proxy.response_cache import ResponseCache
from gossamer.proxy.router import RouteCompileError, RouteTable
from gossamer.telemetry.metrics import Registry

RULE = "default/pricing#0"
STATIC = snap.StaticResponse(
    status=200,
    headers=[snap.HeaderValue(name="content-type", value="application/json")],
    body='{"items":[]}',
)
ERROR_500 = b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\noops"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fallback_snapshot(
    fallback: snap.Fallback,
    pricing: list[str],
    lite: list[str] | None = None,
    retry: snap.RetryPolicy | None = None,
    timeouts: snap.Timeouts | None = None,
    pool: snap.ConnectionPool | None = None,
    budget: snap.RetryBudget | None = None,
) -> snap.Snapshot:
    clusters = [cluster("pricing", pricing, pool=pool, budget=budget)]
    if lite is not None:
        clusters.append(cluster("lite", lite))
    return snap.seal(
        snap.Snapshot(
            proxy=snap.ProxyIdentity(proxy_id="frontend-0", service="frontend"),
            virtual_hosts=[
                snap.VirtualHost(
                    name="pricing.default",
                    domains=["pricing"],
                    rules=[
                        snap.RouteRule(
                            name=RULE,
                            backends=[snap.WeightedCluster(cluster="pricing.default")],
                            retry=retry,
                            timeouts=timeouts or snap.Timeouts(),
                            fallback=fallback,
                        )
                    ],
                )
            ],
            clusters=clusters,
        )
    )


def fallbacks(registry: Registry, kind: str, cause: str) -> float:
    return metric_value(
        registry,
        f'gossamer_proxy_fallbacks_total{{route="{RULE}",kind="{kind}",cause="{cause}"}}',
    )


def rule_cache(dp: DataPlane) -> ResponseCache:
    return dp.tables.routes.caches[f"pricing.default|{RULE}|pricing.default"]


# --- static responses, one per cause --------------------------------------------------------------


def test_a_static_response_replaces_a_connect_failure() -> None:
    """The only endpoint refuses: the rule's static response, flagged fallback,connect-failure."""

    async def main() -> None:
        _dp, _, out, registry = await start_dataplane(
            fallback_snapshot(snap.Fallback(response=STATIC), [dead_address()])
        )
        client = await Client.open(out)
        r = await client.request(b"/items", b"pricing")
        assert (r.status, r.body) == (200, b'{"items":[]}')
        assert r.header(b"content-type") == b"application/json"
        assert r.header(b"x-gossamer-flags") == b"fallback,connect-failure"
        # The connection stays usable.
        r = await client.request(b"/items", b"pricing")
        assert r.status == 200
        assert fallbacks(registry, "response", "connect-failure") == 2

    run(main())


def test_a_final_5xx_is_replaced_after_the_retries_and_the_connection_is_kept() -> None:
    """Two 500s (first try and its retry): the fallback answers; the 500's body is read out, so
    the upstream connection serves the next request."""

    async def main() -> None:
        app = await Backend(lambda _seen: ERROR_500).start()
        retry = snap.RetryPolicy(
            attempts=1, retry_on=["5xx"], backoff=snap.Backoff(base_interval=0.001)
        )
        _dp, _, out, registry = await start_dataplane(
            fallback_snapshot(snap.Fallback(response=STATIC), [app.address], retry=retry)
        )
        client = await Client.open(out)
        for _ in range(2):
            r = await client.request(b"/items", b"pricing")
            assert (r.status, r.header(b"x-gossamer-flags")) == (200, b"fallback,upstream-5xx")
        assert len(app.seen) == 4
        assert app.connections == 1
        assert fallbacks(registry, "response", "upstream-5xx") == 2

    run(main())


def test_a_4xx_and_a_2xx_are_not_replaced() -> None:
    async def main() -> None:
        answers = {b"/missing": b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"}
        app = await Backend(lambda seen: answers.get(seen.url, ok(b"real"))).start()
        _dp, _, out, registry = await start_dataplane(
            fallback_snapshot(snap.Fallback(response=STATIC), [app.address])
        )
        client = await Client.open(out)
        assert (await client.request(b"/missing", b"pricing")).status == 404
        r = await client.request(b"/x", b"pricing")
        assert (r.status, r.body, r.header(b"x-gossamer-flags")) == (200, b"real", None)
        assert "gossamer_proxy_fallbacks_total{" not in registry.render().decode()

    run(main())


@pytest.mark.parametrize("cause", ["timeout", "upstream-reset", "no-healthy-endpoint"])
def test_static_fallback_for_other_failures(cause: str) -> None:
    """A per-try timeout, a garbled response (reset) and a cluster without endpoints."""

    async def main() -> None:
        timeouts = None
        addresses: list[str] = []
        if cause == "timeout":
            addresses = [(await Backend(lambda _seen: None).start()).address]
            timeouts = snap.Timeouts(backend_request=0.05)
        elif cause == "upstream-reset":
            addresses = [
                (await Backend(lambda _seen: b"garbage\r\nconnection: close").start()).address
            ]
        _dp, _, out, registry = await start_dataplane(
            fallback_snapshot(snap.Fallback(response=STATIC), addresses, timeouts=timeouts)
        )
        client = await Client.open(out)
        r = await client.request(b"/items", b"pricing")
        assert (r.status, r.header(b"x-gossamer-flags")) == (200, f"fallback,{cause}".encode())
        assert fallbacks(registry, "response", cause) == 1

    run(main())


def test_overflow_is_replaced_by_the_fallback() -> None:
    """max_requests 1, one request held by a silent backend: the next one is served by the
    fallback (cause overflow) at once."""

    async def main() -> None:
        app = await Backend(lambda _seen: None).start()
        _dp, _, out, registry = await start_dataplane(
            fallback_snapshot(
                snap.Fallback(response=STATIC),
                [app.address],
                pool=snap.ConnectionPool(max_requests=1),
            )
        )
        holder = await Client.open(out)
        holder.send(b"GET /hold HTTP/1.1\r\nhost: pricing\r\n\r\n")
        await wait_until(lambda: len(app.seen) == 1)
        client = await Client.open(out)
        r = await client.request(b"/items", b"pricing")
        assert (r.status, r.header(b"x-gossamer-flags")) == (200, b"fallback,overflow")
        assert fallbacks(registry, "response", "overflow") == 1

    run(main())


def test_an_exhausted_retry_budget_is_replaced_by_the_fallback() -> None:
    async def main() -> None:
        retry = snap.RetryPolicy(attempts=2, retry_on=["connect-failure"])
        budget = snap.RetryBudget(ratio=0.0, min_per_second=0.0)
        _dp, _, out, registry = await start_dataplane(
            fallback_snapshot(
                snap.Fallback(response=STATIC), [dead_address()], retry=retry, budget=budget
            )
        )
        client = await Client.open(out)
        r = await client.request(b"/items", b"pricing")
        assert r.header(b"x-gossamer-flags") == b"fallback,retry-budget-exhausted"
        assert fallbacks(registry, "response", "retry-budget-exhausted") == 1

    run(main())


def test_without_an_applicable_step_the_failure_goes_out_as_before() -> None:
    """Only max_stale and nothing cached: the 500 is relayed, the refusal answered 503."""

    async def main() -> None:
        app = await Backend(lambda _seen: ERROR_500).start()
        _dp, _, out, _ = await start_dataplane(
            fallback_snapshot(snap.Fallback(max_stale=60.0), [app.address])
        )
        client = await Client.open(out)
        r = await client.request(b"/items", b"pricing")
        assert (r.status, r.body) == (500, b"oops")

    run(main())


# --- cached responses -----------------------------------------------------------------------------


def test_the_last_good_response_is_served_while_fresh_then_not() -> None:
    """A 200 is kept; when the backend fails the same GET gets it (fallback,upstream-5xx) with its
    own fields; past max_stale the next step (static) answers instead."""

    healthy = {"on": True}

    def app_handler(seen: Seen) -> bytes:
        if healthy["on"]:
            return ok(b"v1 " + seen.url, b"content-type: text/plain\r\nx-version: 1\r\n")
        return ERROR_500

    async def main() -> None:
        app = await Backend(app_handler).start()
        dp, _, out, registry = await start_dataplane(
            fallback_snapshot(snap.Fallback(max_stale=30.0, response=STATIC), [app.address])
        )
        clock = FakeClock()
        rule_cache(dp).clock = clock
        client = await Client.open(out)
        assert (await client.request(b"/items?page=1", b"pricing")).body == b"v1 /items?page=1"
        healthy["on"] = False
        clock.now += 29.0
        r = await client.request(b"/items?page=1", b"pricing")
        assert (r.status, r.body) == (200, b"v1 /items?page=1")
        assert r.header(b"x-version") == b"1"
        assert r.header(b"content-type") == b"text/plain"
        assert r.header(b"x-gossamer-flags") == b"fallback,upstream-5xx"
        assert fallbacks(registry, "cached", "upstream-5xx") == 1
        # Another query is another entry: nothing kept for it, the static response answers.
        r = await client.request(b"/items?page=2", b"pricing")
        assert r.body == b'{"items":[]}'
        clock.now += 2.0  # 31 s old: too stale
        r = await client.request(b"/items?page=1", b"pricing")
        assert (r.body, r.header(b"x-gossamer-flags")) == (
            b'{"items":[]}',
            b"fallback,upstream-5xx",
        )
        assert fallbacks(registry, "response", "upstream-5xx") == 2

    run(main())


def test_only_get_and_head_2xx_with_small_whole_bodies_are_kept() -> None:
    """POSTs, 404s and bodies over max_body_bytes are not kept; a HEAD is kept as a HEAD."""

    async def main() -> None:
        def handler(seen: Seen) -> bytes:
            if seen.url == b"/big":
                return ok(b"x" * 200)
            if seen.url == b"/missing":
                return b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
            return ok(b"small")

        app = await Backend(handler).start()
        dp, _, out, _ = await start_dataplane(
            fallback_snapshot(snap.Fallback(max_stale=60.0, max_body_bytes=100), [app.address])
        )
        client = await Client.open(out)
        await client.request(b"/small", b"pricing")
        await client.request(b"/big", b"pricing")
        await client.request(b"/missing", b"pricing")
        await client.request(b"/post", b"pricing", method=b"POST", body=b"data")
        keys = set(rule_cache(dp).entries)
        assert keys == {(b"GET", b"pricing", b"/small", b"")}

    run(main())


def test_a_cached_head_answer_serves_a_later_head() -> None:
    async def main() -> None:
        state = {"up": True}

        def handler(_seen: Seen) -> bytes:
            if state["up"]:
                return b"HTTP/1.1 200 OK\r\ncontent-length: 42\r\nx-a: 1\r\n\r\n"
            return b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"

        app = await Backend(handler).start()
        _dp, _, out, _ = await start_dataplane(
            fallback_snapshot(snap.Fallback(max_stale=60.0), [app.address])
        )
        client = await Client.open(out)
        client.send(b"HEAD /doc HTTP/1.1\r\nhost: pricing\r\n\r\n")
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        state["up"] = False
        client.send(b"HEAD /doc HTTP/1.1\r\nhost: pricing\r\n\r\n")
        head = await client.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        lower = head.lower()
        assert b"content-length: 42" in lower
        assert b"x-gossamer-flags: fallback,upstream-5xx" in lower
        assert b"x-a: 1" in lower

    run(main())


def test_the_cache_survives_a_snapshot_update() -> None:
    """Endpoints change exactly when backends fail: a new Snapshot keeps the rule's cache."""

    async def main() -> None:
        app = await Backend(lambda _seen: ok(b"kept")).start()
        fb = snap.Fallback(max_stale=60.0)
        dp, _, out, _ = await start_dataplane(fallback_snapshot(fb, [app.address]))
        client = await Client.open(out)
        assert (await client.request(b"/a", b"pricing")).body == b"kept"
        before = rule_cache(dp)
        dp.apply(fallback_snapshot(fb, [dead_address()]))
        assert rule_cache(dp) is before
        r = await client.request(b"/a", b"pricing")
        assert (r.body, r.header(b"x-gossamer-flags")) == (b"kept", b"fallback,connect-failure")

    run(main())


# --- backend fallback -----------------------------------------------------------------------------


def test_a_backend_fallback_gets_the_request_with_its_body() -> None:
    async def main() -> None:
        lite = await Backend(echo).start()
        fb = snap.Fallback(backend=snap.WeightedCluster(cluster="lite.default"), response=STATIC)
        _dp, _, out, registry = await start_dataplane(
            fallback_snapshot(fb, [dead_address()], lite=[lite.address])
        )
        client = await Client.open(out)
        r = await client.request(b"/orders", b"pricing", method=b"POST", body=b"order-1")
        assert (r.status, r.body) == (200, b"order-1")
        assert r.header(b"x-gossamer-flags") == b"fallback,connect-failure"
        assert lite.seen[0].url == b"/orders"
        assert fallbacks(registry, "backend", "connect-failure") == 1
        # The connection goes on normally afterwards.
        r = await client.request(b"/orders", b"pricing", method=b"POST", body=b"order-2")
        assert r.body == b"order-2"

    run(main())


def test_a_failing_backend_fallback_ends_in_the_static_response_or_its_own_failure() -> None:
    """No fallback of the fallback: when the backend fallback gets no response, the static
    response is the last step; without one, the client sees the backend's failure."""

    async def main() -> None:
        with_static = snap.Fallback(
            backend=snap.WeightedCluster(cluster="lite.default"), response=STATIC
        )
        _dp, _, out, registry = await start_dataplane(
            fallback_snapshot(with_static, [dead_address()], lite=[dead_address()])
        )
        client = await Client.open(out)
        r = await client.request(b"/x", b"pricing")
        assert (r.body, r.header(b"x-gossamer-flags")) == (
            b'{"items":[]}',
            b"fallback,connect-failure",
        )
        assert fallbacks(registry, "backend", "connect-failure") == 1
        assert fallbacks(registry, "response", "connect-failure") == 1

        only_backend = snap.Fallback(backend=snap.WeightedCluster(cluster="lite.default"))
        _dp2, _, out2, _ = await start_dataplane(
            fallback_snapshot(only_backend, [dead_address()], lite=[dead_address()])
        )
        client2 = await Client.open(out2)
        r = await client2.request(b"/x", b"pricing")
        assert (r.status, r.header(b"x-gossamer-flags")) == (503, b"connect-failure")

    run(main())


def test_a_fresh_cached_response_wins_over_the_backend() -> None:
    async def main() -> None:
        state = {"up": True}
        app = await Backend(lambda _seen: ok(b"primary") if state["up"] else ERROR_500).start()
        lite = await Backend(lambda _seen: ok(b"lite")).start()
        fb = snap.Fallback(
            max_stale=60.0, backend=snap.WeightedCluster(cluster="lite.default"), response=STATIC
        )
        _dp, _, out, _ = await start_dataplane(
            fallback_snapshot(fb, [app.address], lite=[lite.address])
        )
        client = await Client.open(out)
        assert (await client.request(b"/a", b"pricing")).body == b"primary"
        state["up"] = False
        assert (await client.request(b"/a", b"pricing")).body == b"primary"  # cached
        assert (await client.request(b"/b", b"pricing")).body == b"lite"  # nothing cached
        assert len(lite.seen) == 1

    run(main())


def test_a_backend_fallback_after_a_timeout_gets_its_own_request_timeout(tmp_path: Path) -> None:
    """The primary never answers within the 0.3 s request timeout; the fallback backend answers
    in 50 ms. Its own deadline runs from when it starts (it used to inherit the original's, already
    passed, and failed at once); the access log still measures from the request's arrival."""

    async def lite_handler(_seen: Seen) -> bytes:
        await asyncio.sleep(0.05)  # a healthy degraded service, a little slow
        return ok(b"lite")

    async def main() -> None:
        log_file = tmp_path / "access.log"
        app = await Backend(lambda _seen: None).start()
        lite = await Backend(lite_handler).start()
        fb = snap.Fallback(backend=snap.WeightedCluster(cluster="lite.default"))
        dp, _, out, registry = await start_dataplane(
            fallback_snapshot(
                fb, [app.address], lite=[lite.address], timeouts=snap.Timeouts(request=0.3)
            ),
            access_log=str(log_file),
        )
        client = await Client.open(out)
        r = await client.request(b"/x", b"pricing")
        assert (r.status, r.body, r.header(b"x-gossamer-flags")) == (
            200,
            b"lite",
            b"fallback,timeout",
        )
        assert len(lite.seen) == 1
        assert fallbacks(registry, "backend", "timeout") == 1
        await dp.drain(1.0)
        (line,) = read_log(log_file)
        assert line["flags"] == "fallback,timeout"
        assert line["durationMs"] >= 300.0

    run(main())


# --- statuses without a body ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [204, 304])
def test_a_static_204_or_304_goes_without_a_body_or_a_length(status: int) -> None:
    """The configured body is dropped (these statuses never have one) and no Content-Length is
    sent, to a GET or a HEAD; the connection stays in step for the next request."""

    async def main() -> None:
        response = snap.StaticResponse(status=status, body="ignored")
        _dp, _, out, _ = await start_dataplane(
            fallback_snapshot(snap.Fallback(response=response), [dead_address()])
        )
        client = await Client.open(out)
        for method in (b"GET", b"HEAD", b"GET"):
            client.send(b"%s /x HTTP/1.1\r\nhost: pricing\r\n\r\n" % method)
            head = (await client.reader.readuntil(b"\r\n\r\n")).lower()
            assert head.startswith(b"http/1.1 %d" % status)
            assert b"content-length" not in head
            assert b"transfer-encoding" not in head
            assert b"x-gossamer-flags: fallback,connect-failure" in head
        # Nothing followed the heads: the next bytes are the next response's.
        r = await client.request(b"/x", b"pricing")
        assert (r.status, r.body) == (status, b"")

    run(main())


# --- access log -----------------------------------------------------------------------------------


def test_the_access_log_shows_the_fallback_status_and_flag(tmp_path: Path) -> None:
    async def main() -> None:
        log_file = tmp_path / "access.log"
        lite = await Backend(echo).start()
        fb = snap.Fallback(backend=snap.WeightedCluster(cluster="lite.default"))
        dp, _, out, _ = await start_dataplane(
            fallback_snapshot(fb, [dead_address()], lite=[lite.address]),
            access_log=str(log_file),
        )
        client = await Client.open(out)
        assert (await client.request(b"/x", b"pricing")).status == 200
        dp2, _, out2, _ = await start_dataplane(
            fallback_snapshot(snap.Fallback(response=STATIC), [dead_address()]),
            access_log=str(log_file),
        )
        client2 = await Client.open(out2)
        assert (await client2.request(b"/y", b"pricing")).status == 200
        await dp.drain(1.0)
        await dp2.drain(1.0)
        by_path = {line["path"]: line for line in read_log(log_file)}
        backend, static = by_path["/x"], by_path["/y"]
        assert (backend["status"], backend["flags"]) == (200, "fallback,connect-failure")
        assert backend["upstreamCluster"] == "lite.default"
        assert backend["upstreamEndpoint"] == lite.address
        assert (static["status"], static["flags"]) == (200, "fallback,connect-failure")
        assert static["bytesSent"] == len(b'{"items":[]}')

    run(main())


# --- the cache on its own -------------------------------------------------------------------------


def test_response_cache_lru_and_staleness() -> None:
    clock = FakeClock()
    cache = ResponseCache(max_entries=2, max_body_bytes=10, clock=clock)
    a = (b"GET", b"h", b"/a", b"")
    b = (b"GET", b"h", b"/b", b"")
    c = (b"GET", b"h", b"/c", b"")
    assert cache.put(a, 200, [], b"A", False)
    assert cache.put(b, 200, [], b"B", False)
    assert cache.get(a, 5.0) is not None  # a is now the most recently used
    assert cache.put(c, 200, [], b"C", False)
    assert set(cache.entries) == {a, c}
    assert not cache.put(b, 200, [], b"x" * 11, False)
    clock.now += 6.0
    assert cache.get(a, 5.0) is None
    assert a not in cache.entries
    hit = cache.get(c, 6.0)
    assert hit is not None
    assert hit.body == b"C"
    with pytest.raises(ValueError, match="maxEntries"):
        ResponseCache(0, 10, clock)


# --- compiling ------------------------------------------------------------------------------------


def _table_with(rule: snap.RouteRule) -> None:
    RouteTable.compile(
        snap.Snapshot(
            proxy=snap.ProxyIdentity(proxy_id="p", service="s"),
            virtual_hosts=[snap.VirtualHost(name="pricing.default", domains=["p"], rules=[rule])],
            clusters=[cluster("pricing", [])],
        )
    )


_BACKENDS = [snap.WeightedCluster(cluster="pricing.default")]
_ABORT = snap.FaultFilter(fault=snap.Fault(abort=snap.FaultAbort(http_status=503)))


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            snap.RouteRule(name="r", backends=_BACKENDS, fallback=snap.Fallback()),
            "fallback: a fallback needs maxStale, a backend or a response",
        ),
        (
            snap.RouteRule(
                name="r",
                backends=_BACKENDS,
                fallback=snap.Fallback(backend=snap.WeightedCluster(cluster="gone.default")),
            ),
            "fallback, backend ('gone.default'): cluster 'gone.default' is not in the snapshot",
        ),
        (
            snap.RouteRule(
                name="r",
                backends=_BACKENDS,
                fallback=snap.Fallback(response=snap.StaticResponse(status=99)),
            ),
            "fallback, response: status 99 is not in 200-599",
        ),
        (
            snap.RouteRule(name="r", backends=_BACKENDS, fallback=snap.Fallback(max_stale=-1)),
            "maxStale -1",
        ),
        (
            snap.RouteRule(name="r", backends=_BACKENDS, filters=[_ABORT, _ABORT]),
            "filter #1 (Fault): only one Fault per rule",
        ),
        (
            snap.RouteRule(
                name="r",
                backends=[snap.WeightedCluster(cluster="pricing.default", filters=[_ABORT])],
            ),
            "Fault is supported on a rule, not on a backend",
        ),
    ],
)
def test_bad_resilience_settings_are_refused_naming_the_rule(
    rule: snap.RouteRule, message: str
) -> None:
    with pytest.raises(RouteCompileError) as info:
        _table_with(rule)
    assert "virtual host 'pricing.default', rule 'r'" in info.value.reason
    assert message in info.value.reason


def test_rules_without_resilience_settings_compile_to_none() -> None:
    """The hot path's promise: nothing to run for a plain rule (one attribute test each)."""
    table = RouteTable.compile(
        snap.Snapshot(
            proxy=snap.ProxyIdentity(proxy_id="p", service="s"),
            virtual_hosts=[
                snap.VirtualHost(
                    name="pricing.default",
                    domains=["pricing"],
                    rules=[snap.RouteRule(name="r", backends=_BACKENDS)],
                )
            ],
            clusters=[cluster("pricing", [])],
        )
    )
    route = table.match(RequestHead(b"GET", b"/", host=b"pricing"))
    assert route is not None
    assert (route.fault, route.mirror, route.fallback) == (None, None, None)
    assert (table.caches, table.fallbacks, table.mirrors) == ({}, [], [])
