"""Failover on uvloop: fail-fast endpoints, mesh-aware ejection, held responses, panic fallback.

In-process data planes with real backends on 127.0.0.1 (helpers from test_dataplane.py); the
backoff arithmetic is driven by an injected clock.
"""

from __future__ import annotations

import asyncio
import random

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
from gossamer.proxy.cluster import ClusterRuntime
from gossamer.proxy.dataplane import DataPlane
from gossamer.proxy.failfast import FailFast, backoff_for, ejections_counter
from gossamer.proxy.loadbalance.base import EJECT_OUTLIER, EJECT_UNREACHABLE, EndpointState
from gossamer.telemetry.metrics import CounterChild, Registry


def runtime(dp: DataPlane, name: str = "pricing.default") -> ClusterRuntime:
    return dp.tables.clusters[name]


def retries(registry: Registry, name: str = "pricing.default") -> float:
    return metric_value(registry, f'gossamer_proxy_retries_total{{cluster="{name}"}}')


async def burst(address: str, clients: int, per_client: int) -> list[tuple[int, bytes]]:
    """`clients` keep-alive connections sending `per_client` requests each, concurrently."""

    async def one() -> list[tuple[int, bytes]]:
        client = await Client.open(address)
        out = []
        for i in range(per_client):
            r = await client.request(b"/p/%d" % i, b"pricing")
            out.append((r.status, r.body))
        return out

    results = await asyncio.gather(*(one() for _ in range(clients)))
    return [r for rs in results for r in rs]


# --- fail-fast endpoints --------------------------------------------------------------------------


def test_an_endpoint_that_stopped_accepting_costs_no_failure_and_few_attempts() -> None:
    """One of three backends closes its port: a burst with retries on connect-failure all
    succeeds, and the dead endpoint is tried only a handful of times (it leaves the balancer)."""

    async def main() -> None:
        backends = [await Backend(echo).start() for _ in range(3)]
        dead = backends[2]
        assert dead.server is not None
        dead.server.close()
        await dead.server.wait_closed()
        retry = snap.RetryPolicy(attempts=2, retry_on=["connect-failure"])
        dp, _, out, registry = await start_dataplane(
            snapshot(
                [vhost("pricing", retry=retry)],
                [cluster("pricing", [b.address for b in backends], policy="LEAST_REQUEST")],
            )
        )
        results = await burst(out, clients=8, per_client=40)
        assert len(results) == 320
        assert all(status == 200 for status, _ in results), [s for s, _ in results if s != 200]
        # Every connect failure cost one retry; concurrent requests may all hit it at first.
        assert 1 <= retries(registry) <= 12, retries(registry)
        state = next(e for e in runtime(dp).endpoints if e.address == dead.address)
        assert state.ejected & EJECT_UNREACHABLE
        assert not state.available
        assert ejections_counter(dp.metrics).labels("pricing.default").value >= 1
        # The data plane registered the counter: /metrics (the registry's rendering) shows it.
        ejections = metric_value(
            registry,
            'gossamer_proxy_endpoint_unreachable_ejections_total{cluster="pricing.default"}',
        )
        assert ejections == ejections_counter(dp.metrics).labels("pricing.default").value

    run(main())


def test_a_peer_sidecar_flagging_connect_failure_is_avoided_after_the_first() -> None:
    """A backend answering 503 `x-gossamer-flags: connect-failure` (a peer sidecar whose app is
    gone) is taken out after its first answer; the 503 is still retried elsewhere."""

    gone = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n"
        b"x-gossamer-flags: connect-failure\r\n\r\n{}"
    )

    async def main() -> None:
        good = [await Backend(echo).start() for _ in range(2)]
        bad = await Backend(lambda _seen: gone).start()
        retry = snap.RetryPolicy(attempts=2, retry_on=["gateway-error"])
        dp, _, out, _ = await start_dataplane(
            snapshot(
                [vhost("pricing", retry=retry)],
                [cluster("pricing", [bad.address] + [b.address for b in good])],
            )
        )
        client = await Client.open(out)
        for i in range(30):
            r = await client.request(b"/p/%d" % i, b"pricing")
            assert r.status == 200, (i, r)
        # Round robin would send it every third request; the backoff (>= 125 ms) keeps it out.
        assert 1 <= len(bad.seen) <= 2, len(bad.seen)
        state = next(e for e in runtime(dp).endpoints if e.address == bad.address)
        assert state.connect_failures >= 1

    run(main())


def test_a_good_response_resets_the_backoff() -> None:
    """An endpoint that recovers is back at the base backoff after its first good answer."""

    async def main() -> None:
        app = await Backend(echo).start()
        dp, _, out, _ = await start_dataplane(
            snapshot([vhost("pricing")], [cluster("pricing", [app.address])])
        )
        rt = runtime(dp)
        state = rt.endpoints[0]
        for _ in range(3):
            rt.failfast.on_unreachable(state)
            state.unreachable_until = 0.0  # as if the backoff ran out
        assert state.connect_failures == 3
        client = await Client.open(out)
        assert (await client.request(b"/", b"pricing")).status == 200
        assert state.connect_failures == 0
        assert not state.ejected
        assert rt.failfast.marked == []

    run(main())


# --- held responses -------------------------------------------------------------------------------


def test_an_upstream_dying_between_head_and_body_is_retried_not_truncated() -> None:
    """A backend that sends the head (content-length 386) and 3 bytes, then closes: with retries
    on reset the client gets the whole body from another endpoint, never a cut response."""

    body = b"x" * 386

    def truncating(_seen: Seen) -> bytes:
        return b"HTTP/1.1 200 OK\r\ncontent-length: 386\r\nconnection: close\r\n\r\nabc"

    async def main() -> None:
        bad = await Backend(truncating).start()
        good = await Backend(lambda _seen: ok(body)).start()
        retry = snap.RetryPolicy(attempts=2, retry_on=["reset"])
        _dp, _, out, registry = await start_dataplane(
            snapshot(
                [vhost("pricing", retry=retry)],
                [cluster("pricing", [bad.address, good.address])],
            )
        )
        client = await Client.open(out)
        for i in range(6):
            r = await client.request(b"/p/%d" % i, b"pricing")
            assert (r.status, r.body) == (200, body), i
        assert len(bad.seen) >= 1
        assert retries(registry) == len(bad.seen)

    run(main())


def test_without_a_retry_left_a_response_streams_as_before() -> None:
    """No retry policy: nothing is held, and a body cut by the upstream cuts the client's
    connection (the head already went out)."""

    def truncating(_seen: Seen) -> bytes:
        return b"HTTP/1.1 200 OK\r\ncontent-length: 386\r\nconnection: close\r\n\r\nabc"

    async def main() -> None:
        bad = await Backend(truncating).start()
        _dp, _, out, _ = await start_dataplane(
            snapshot([vhost("pricing")], [cluster("pricing", [bad.address])])
        )
        client = await Client.open(out)
        client.send(b"GET / HTTP/1.1\r\nhost: pricing\r\n\r\n")
        data = b""
        async with asyncio.timeout(5):
            while chunk := await client.reader.read(65536):
                data += chunk
        assert data.startswith(b"HTTP/1.1 200")
        assert data.endswith(b"\r\n\r\nabc")

    run(main())


def test_a_large_response_is_forwarded_as_it_comes() -> None:
    """A body above the hold limit (here 200 KiB) is not held and arrives intact."""

    body = bytes(range(256)) * 800

    async def main() -> None:
        app = await Backend(lambda _seen: ok(body)).start()
        retry = snap.RetryPolicy(attempts=2, retry_on=["reset"])
        _dp, _, out, _ = await start_dataplane(
            snapshot([vhost("pricing", retry=retry)], [cluster("pricing", [app.address])])
        )
        client = await Client.open(out)
        for _ in range(2):
            r = await client.request(b"/", b"pricing")
            assert (r.status, r.body) == (200, body)

    run(main())


# --- panic fallback -------------------------------------------------------------------------------


def test_when_every_endpoint_is_marked_unreachable_requests_still_go_to_healthy_ones() -> None:
    async def main() -> None:
        backends = [await Backend(echo).start() for _ in range(2)]
        dp, _, out, _ = await start_dataplane(
            snapshot([vhost("pricing")], [cluster("pricing", [b.address for b in backends])])
        )
        rt = runtime(dp)
        for state in rt.endpoints:
            rt.failfast.on_unreachable(state)
            assert not state.available
        client = await Client.open(out)
        for _ in range(4):
            assert (await client.request(b"/", b"pricing")).status == 200
        assert sum(len(b.seen) for b in backends) == 4

    run(main())


def test_panic_fallback_skips_endpoints_the_control_plane_marks_unhealthy() -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        spec = cluster("pricing", [app.address])
        spec = snap.Cluster(
            name=spec.name,
            service=spec.service,
            endpoints=[snap.Endpoint(address=app.address, healthy=False)],
        )
        _dp, _, out, _ = await start_dataplane(snapshot([vhost("pricing")], [spec]))
        client = await Client.open(out)
        r = await client.request(b"/", b"pricing")
        assert r.status == 503
        assert r.header(b"x-gossamer-flags") == b"no-healthy-endpoint"
        assert app.seen == []

    run(main())


# --- the backoff, on an injected clock ------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_failfast(clock: FakeClock) -> tuple[FailFast, CounterChild]:
    counter = CounterChild()
    return FailFast(clock, random.Random(7), counter), counter


def test_backoff_doubles_from_250_ms_to_a_10_s_cap_with_jitter() -> None:
    rand = random.Random(3).random
    for n, ceiling in [(1, 0.25), (2, 0.5), (3, 1.0), (6, 8.0), (7, 10.0), (40, 10.0)]:
        for _ in range(50):
            assert ceiling / 2 <= backoff_for(n, rand, 0.25, 10.0) <= ceiling


def test_an_endpoint_is_out_until_its_backoff_ends_and_the_backoff_grows_per_outage() -> None:
    clock = FakeClock()
    ff, counter = make_failfast(clock)
    ep = EndpointState("127.0.0.1:1", clock=clock)
    ff.on_unreachable(ep)
    first = ep.unreachable_until - clock.now
    assert 0.125 <= first <= 0.25
    assert not ep.available
    assert ep.ejected == EJECT_UNREACHABLE
    # More failures of requests already in flight during the same outage change nothing.
    ff.on_unreachable(ep)
    assert ep.connect_failures == 1
    assert counter.value == 1
    clock.now += first - 0.001
    ff.expire()
    assert not ep.available
    clock.now += 0.002
    ff.expire()
    assert ep.available
    assert ff.marked == []
    # The probe fails again: out for longer.
    ff.on_unreachable(ep)
    assert 0.25 <= ep.unreachable_until - clock.now <= 0.5
    assert ep.connect_failures == 2
    assert counter.value == 2
    ff.on_success(ep)
    assert ep.available
    assert ep.connect_failures == 0
    assert ff.marked == []
    ff.on_unreachable(ep)
    assert 0.125 <= ep.unreachable_until - clock.now <= 0.25


def test_fail_fast_keeps_an_outlier_ejection_apart() -> None:
    clock = FakeClock()
    ff, _ = make_failfast(clock)
    ep = EndpointState("127.0.0.1:1", clock=clock)
    ep.ejected |= EJECT_OUTLIER
    ff.on_unreachable(ep)
    assert ep.ejected == EJECT_OUTLIER | EJECT_UNREACHABLE
    clock.now += 1.0
    ff.expire()
    assert ep.ejected == EJECT_OUTLIER
    assert not ep.available
    assert ff.next_expiry() == float("inf")
