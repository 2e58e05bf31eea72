"""The exchange's side of the circuit breakers: every accepted request gives its slot back once.

Real data planes and backends on 127.0.0.1 (helpers from test_dataplane.py). The cluster runtime
the data plane built is wrapped by a `Spy` that counts the request slots taken and given back
(`active_requests`, which the exchange updates inline) and the calls of the rest of the breaker
interface (start_request refusals / start_retry / end_retry / on_try_result), and checks that no
slot is ever given back twice.
"""

from __future__ import annotations

import asyncio
import socket
import struct

from test_dataplane import (
    Backend,
    Client,
    Seen,
    cluster,
    dead_address,
    echo,
    ok,
    run,
    snapshot,
    start_dataplane,
    vhost,
    wait_until,
)

from gossamer import snapshot as snap
from gossamer.proxy.cluster import ClusterRuntime
from gossamer.proxy.dataplane import DataPlane
from gossamer.proxy.loadbalance import EndpointState


class Spy:
    """Counts a runtime's breaker calls (wrapping the real methods) and checks their pairing.

    The exchange takes and gives back request slots by updating `active_requests` inline (the
    same test and count as start_request / end_request), so starts and ends are counted on that
    attribute: the runtime's class is swapped for a subclass whose property sees every change.
    """

    def __init__(self, runtime: ClusterRuntime) -> None:
        self.runtime = runtime
        self.starts = self.refused = self.ends = 0
        self.retry_starts = self.retry_refused = self.retry_ends = 0
        self.results: list[tuple[str, int]] = []
        start = runtime.start_request
        start_retry, end_retry = runtime.start_retry, runtime.end_retry
        on_result = runtime.on_try_result
        spy = self

        def get_active(rt: ClusterRuntime) -> int:
            value: int = rt.__dict__["_spied_active"]
            return value

        def set_active(rt: ClusterRuntime, value: int) -> None:
            old = rt.__dict__["_spied_active"]
            assert value >= 0, "active_requests below zero"
            if value == old + 1:
                spy.starts += 1
            elif value == old - 1:
                spy.ends += 1
                assert spy.ends <= spy.starts, "a slot given back without a matching start"
            else:
                raise AssertionError(f"active_requests jumped from {old} to {value}")
            rt.__dict__["_spied_active"] = value

        runtime.__dict__["_spied_active"] = runtime.__dict__.pop("active_requests")
        runtime.__class__ = type(
            "SpiedClusterRuntime",
            (type(runtime),),
            {"active_requests": property(get_active, set_active)},
        )

        def start_request() -> bool:
            accepted = start()
            if not accepted:
                self.refused += 1
            return accepted

        def start_retry_() -> bool:
            accepted = start_retry()
            if accepted:
                self.retry_starts += 1
            else:
                self.retry_refused += 1
            return accepted

        def end_retry_() -> None:
            self.retry_ends += 1
            assert self.retry_ends <= self.retry_starts, "end_retry without a start_retry"
            end_retry()

        def on_try_result(endpoint: EndpointState, status: int) -> None:
            self.results.append((endpoint.address, status))
            on_result(endpoint, status)

        # Instance attributes shadow the methods: the exchange calls these.
        runtime.start_request = start_request  # type: ignore[method-assign]
        runtime.start_retry = start_retry_  # type: ignore[method-assign]
        runtime.end_retry = end_retry_  # type: ignore[method-assign]
        runtime.on_try_result = on_try_result  # type: ignore[method-assign]

    def balanced(self) -> bool:
        return self.starts == self.ends and self.retry_starts == self.retry_ends

    def statuses(self) -> list[int]:
        return [s for _, s in self.results]


def spy(dp: DataPlane, name: str = "pricing.default") -> Spy:
    return Spy(dp.tables.clusters[name])


def vanish(client: Client) -> None:
    """The client goes away with a reset (a close would be a half-close, which the proxy
    answers all the same)."""
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()


async def one_request(out: str, target: bytes = b"/p") -> tuple[int, bytes | None]:
    client = await Client.open(out)
    r = await client.request(target, b"pricing")
    client.close()
    return r.status, r.header(b"x-gossamer-flags")


def test_a_served_request_ends_once_and_reports_its_status() -> None:
    """Ordinary requests: one start, one end, one try result each (the response status)."""

    async def main() -> None:
        app = await Backend(echo).start()
        dp, _, out, _ = await start_dataplane(
            snapshot([vhost("pricing")], [cluster("pricing", [app.address])])
        )
        s = spy(dp)
        client = await Client.open(out)
        for i in range(5):
            r = await client.request(b"/p/%d" % i, b"pricing")
            assert r.status == 200
        assert (s.starts, s.ends, s.refused) == (5, 5, 0)
        assert s.results == [(app.address, 200)] * 5
        assert s.runtime.active_requests == 0

    run(main())


def test_connect_failures_are_retried_within_the_retry_limit_and_reported_as_503() -> None:
    """Two dead endpoints and one live one, retries on connect-failure: each failed try reports
    503, each retry takes and gives back a retry slot, the request ends once."""

    async def main() -> None:
        app = await Backend(echo).start()
        dead = [dead_address(), dead_address()]
        retry = snap.RetryPolicy(attempts=3, retry_on=["connect-failure"])
        dp, _, out, _ = await start_dataplane(
            snapshot(
                [vhost("pricing", retry=retry)],
                [cluster("pricing", [*dead, app.address])],
            )
        )
        s = spy(dp)
        for _ in range(3):
            status, _flag = await one_request(out)
            assert status == 200
        assert s.balanced()
        assert s.starts == 3
        assert s.retry_starts >= 1
        assert (app.address, 200) in s.results
        assert all(status == 503 for address, status in s.results if address in dead)
        assert s.runtime.active_retries == 0

    run(main())


def test_a_local_failure_ends_the_request_once() -> None:
    """No endpoint reachable and no retry: 503 connect-failure, one start, one end."""

    async def main() -> None:
        address = dead_address()
        dp, _, out, _ = await start_dataplane(
            snapshot([vhost("pricing")], [cluster("pricing", [address])])
        )
        s = spy(dp)
        status, flag = await one_request(out)
        assert (status, flag) == (503, b"connect-failure")
        assert s.balanced()
        assert s.starts == 1
        assert s.results == [(address, 503)]

    run(main())


def test_a_client_that_leaves_mid_request_gives_the_slot_back() -> None:
    """A backend that never answers, a client that gives up: the exchange ends once, and the
    abandoned try is not blamed on the endpoint."""

    async def main() -> None:
        app = await Backend(lambda _seen: None).start()
        dp, _, out, _ = await start_dataplane(
            snapshot([vhost("pricing")], [cluster("pricing", [app.address])])
        )
        s = spy(dp)
        client = await Client.open(out)
        client.send(b"GET /slow HTTP/1.1\r\nhost: pricing\r\n\r\n")
        await wait_until(lambda: len(app.seen) == 1)
        assert s.runtime.active_requests == 1
        vanish(client)
        await wait_until(lambda: s.ends == 1)
        assert s.balanced()
        assert s.results == []
        assert s.runtime.active_requests == 0

    run(main())


def test_an_upstream_cut_mid_body_aborts_and_ends_once() -> None:
    """The head went out, then the upstream closes: the client's connection is cut, the try
    reported its 200 once, the request ended once."""

    def half(_seen: Seen) -> bytes:
        return b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\nconnection: close\r\n\r\npartial"

    async def main() -> None:
        app = await Backend(half).start()
        dp, _, out, _ = await start_dataplane(
            snapshot([vhost("pricing")], [cluster("pricing", [app.address])])
        )
        s = spy(dp)
        client = await Client.open(out)
        client.send(b"GET /x HTTP/1.1\r\nhost: pricing\r\n\r\n")
        assert await client.at_eof() or True  # the cut may come as a reset
        await wait_until(lambda: s.ends == 1)
        assert s.balanced()
        assert s.results == [(app.address, 200)]

    run(main())


def test_over_max_requests_is_refused_with_overflow_and_takes_no_slot() -> None:
    """max_requests 1: while one request waits on a silent backend a second is answered 503
    `overflow` without a try (and without an end_request of its own)."""

    async def main() -> None:
        app = await Backend(lambda _seen: None).start()
        pool = snap.ConnectionPool(max_requests=1)
        dp, _, out, _ = await start_dataplane(
            snapshot([vhost("pricing")], [cluster("pricing", [app.address], pool=pool)])
        )
        s = spy(dp)
        first = await Client.open(out)
        first.send(b"GET /hold HTTP/1.1\r\nhost: pricing\r\n\r\n")
        await wait_until(lambda: len(app.seen) == 1)
        status, flag = await one_request(out)
        assert (status, flag) == (503, b"overflow")
        assert (s.starts, s.refused, s.ends) == (1, 1, 0)
        vanish(first)
        await wait_until(lambda: s.ends == 1)
        assert s.balanced()
        assert len(app.seen) == 1

    run(main())


def test_a_refused_retry_lets_the_failure_stand() -> None:
    """max_retries 0: a 503 that the rule would retry is relayed as it is, no retry slot taken."""

    def unavailable(_seen: Seen) -> bytes:
        return b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy"

    async def main() -> None:
        app = await Backend(unavailable).start()
        pool = snap.ConnectionPool(max_retries=0)
        retry = snap.RetryPolicy(attempts=2, retry_on=["5xx"])
        dp, _, out, _ = await start_dataplane(
            snapshot(
                [vhost("pricing", retry=retry)],
                [cluster("pricing", [app.address], pool=pool)],
            )
        )
        s = spy(dp)
        client = await Client.open(out)
        r = await client.request(b"/p", b"pricing")
        assert (r.status, r.body) == (503, b"busy")
        assert len(app.seen) == 1
        assert (s.retry_starts, s.retry_refused) == (0, 1)
        assert s.balanced()
        assert s.results == [(app.address, 503)]

    run(main())


def test_retried_statuses_report_each_try_and_release_each_retry_slot() -> None:
    """Two 503s then a 200 with retries on 5xx: three try results, two retry slots taken and
    given back, one request."""

    answers = iter([503, 503, 200])

    def flaky(_seen: Seen) -> bytes:
        status = next(answers)
        if status == 200:
            return ok(b"fine")
        return b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"

    async def main() -> None:
        app = await Backend(flaky).start()
        retry = snap.RetryPolicy(
            attempts=3, retry_on=["5xx"], backoff=snap.Backoff(base_interval=0.001)
        )
        dp, _, out, _ = await start_dataplane(
            snapshot([vhost("pricing", retry=retry)], [cluster("pricing", [app.address])])
        )
        s = spy(dp)
        client = await Client.open(out)
        r = await client.request(b"/p", b"pricing")
        assert (r.status, r.body) == (200, b"fine")
        assert s.statuses() == [503, 503, 200]
        assert (s.retry_starts, s.retry_ends) == (2, 2)
        assert s.balanced()

    run(main())


def test_a_per_try_timeout_reports_504() -> None:
    """A silent backend and a per-try timeout: the try reports 504, the client gets 504."""

    async def main() -> None:
        app = await Backend(lambda _seen: None).start()
        retry = snap.RetryPolicy(attempts=0, per_try_timeout=0.05)
        dp, _, out, _ = await start_dataplane(
            snapshot([vhost("pricing", retry=retry)], [cluster("pricing", [app.address])])
        )
        s = spy(dp)
        status, flag = await one_request(out)
        assert (status, flag) == (504, b"timeout")
        assert s.results == [(app.address, 504)]
        assert s.balanced()

    run(main())


def test_pipelined_and_concurrent_requests_leave_nothing_in_flight() -> None:
    """A burst over several connections with a slow and a failing endpoint: every slot comes
    back (the runtime's counters are 0 at the end)."""

    async def main() -> None:
        async def slow(seen: Seen) -> bytes:
            await asyncio.sleep(0.001)
            return echo(seen)

        app = await Backend(slow).start()
        retry = snap.RetryPolicy(attempts=2, retry_on=["connect-failure"])
        dp, _, out, _ = await start_dataplane(
            snapshot(
                [vhost("pricing", retry=retry)],
                [cluster("pricing", [app.address, dead_address()])],
            )
        )
        s = spy(dp)

        async def one() -> None:
            client = await Client.open(out)
            for i in range(10):
                r = await client.request(b"/p/%d" % i, b"pricing")
                assert r.status == 200

        await asyncio.gather(*(one() for _ in range(5)))
        assert s.starts == 50
        assert s.balanced()
        assert s.runtime.active_requests == 0
        assert s.runtime.active_retries == 0

    run(main())
