"""Fault injection: the compiled filter's decisions, and delays and aborts through a data plane.

Decisions are checked with scripted random draws; the data-plane tests use real backends on
127.0.0.1 (helpers from tests/proxy/test_dataplane.py) and the loop's clock.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "proxy"))

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
    wait_until,
)

from gossamer import snapshot as snap
from gossamer.filters import fault
from gossamer.http.message import RequestHead
from gossamer.telemetry.metrics import Counter, Registry

RULE = "default/pricing#0"


def counter() -> Counter:
    return Counter("faults", "test", ("route", "kind"))


def scripted(values: list[float]) -> Callable[[], float]:
    it: Iterator[float] = iter(values)
    return lambda: next(it)


def head(*headers: tuple[bytes, bytes]) -> RequestHead:
    return RequestHead(b"GET", b"/", headers=list(headers), host=b"pricing")


# --- decisions ------------------------------------------------------------------------------------


def test_delay_then_abort_each_by_its_own_percentage() -> None:
    c = counter()
    f = fault.compile(
        snap.Fault(
            delay=snap.FaultDelay(fixed_delay=0.2, percentage=10),
            abort=snap.FaultAbort(http_status=503, percentage=5),
        ),
        RULE,
        c,
    )
    # Draws are percentages / 100: 0.05 -> 5% (< 10: delayed), 0.04 -> 4% (< 5: aborted).
    assert f.decide(head(), scripted([0.05, 0.04])) == (0.2, 503)
    assert f.decide(head(), scripted([0.5, 0.04])) == (0.0, 503)
    assert f.decide(head(), scripted([0.05, 0.06])) == (0.2, 0)
    assert f.decide(head(), scripted([0.5, 0.5])) is None
    assert c.labels(RULE, "delay").value == 2
    assert c.labels(RULE, "abort").value == 2


def test_full_and_zero_percentages_draw_nothing() -> None:
    def never() -> float:
        raise AssertionError("no draw expected")

    always = fault.compile(snap.Fault(abort=snap.FaultAbort(http_status=429)), RULE, counter())
    assert always.decide(head(), never) == (0.0, 429)
    off = fault.compile(
        snap.Fault(delay=snap.FaultDelay(fixed_delay=1.0, percentage=0)), RULE, counter()
    )
    assert off.decide(head(), never) is None


def test_seeded_percentages_match_the_configured_share() -> None:
    f = fault.compile(
        snap.Fault(abort=snap.FaultAbort(http_status=503, percentage=25)), RULE, counter()
    )
    rng = random.Random(42)
    aborted = sum(1 for _ in range(4000) if f.decide(head(), rng.random) is not None)
    replay = random.Random(42)
    assert aborted == sum(1 for _ in range(4000) if replay.random() * 100 < 25)
    assert 900 <= aborted <= 1100


def test_header_conditions_limit_the_fault() -> None:
    f = fault.compile(
        snap.Fault(
            abort=snap.FaultAbort(http_status=503),
            headers=[
                snap.HeaderMatch(name="X-Chaos", value="on"),
                snap.HeaderMatch(name="x-user", value="test-[0-9]+", type="RegularExpression"),
            ],
        ),
        RULE,
        counter(),
    )
    rand = random.Random(0).random
    assert f.decide(head((b"x-chaos", b"on"), (b"x-user", b"test-7")), rand) == (0.0, 503)
    assert f.decide(head((b"x-chaos", b"on"), (b"x-user", b"prod-7")), rand) is None
    assert f.decide(head((b"x-chaos", b"off"), (b"x-user", b"test-7")), rand) is None
    assert (
        f.decide(
            head(
                (b"x-user", b"test-7"),
            ),
            rand,
        )
        is None
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (snap.Fault(), "needs a delay, an abort or both"),
        (snap.Fault(delay=snap.FaultDelay(fixed_delay=-1)), "fixedDelay"),
        (snap.Fault(delay=snap.FaultDelay(fixed_delay=1, percentage=101)), "percentage"),
        (snap.Fault(abort=snap.FaultAbort(http_status=600)), "httpStatus 600 is not in 400-599"),
        # A 2xx/3xx abort would send the flag's JSON body with a 204 or 304: not an abort.
        (snap.Fault(abort=snap.FaultAbort(http_status=204)), "httpStatus 204 is not in 400-599"),
        (snap.Fault(abort=snap.FaultAbort(http_status=200)), "httpStatus 200 is not in 400-599"),
        (snap.Fault(abort=snap.FaultAbort(http_status=399)), "httpStatus 399 is not in 400-599"),
        (
            snap.Fault(
                abort=snap.FaultAbort(http_status=503),
                headers=[snap.HeaderMatch(name="x", value="(", type="RegularExpression")],
            ),
            "header 'x'",
        ),
    ],
)
def test_bad_faults_are_refused_with_where(spec: snap.Fault, message: str) -> None:
    with pytest.raises(ValueError, match="rule r, Fault") as info:
        fault.compile(spec, RULE, counter(), "rule r, Fault")
    assert message in str(info.value)


# --- through a data plane -------------------------------------------------------------------------


def fault_snapshot(spec: snap.Fault, address: str) -> snap.Snapshot:
    return snapshot(
        [vhost("pricing", filters=[snap.FaultFilter(fault=spec)], rule=RULE)],
        [cluster("pricing", [address])],
    )


def injected(registry: Registry, kind: str) -> float:
    return metric_value(
        registry,
        f'gossamer_proxy_faults_injected_total{{route="{RULE}",kind="{kind}"}}',
    )


def test_an_abort_is_answered_locally_with_its_status_and_flag() -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        _dp, _, out, registry = await start_dataplane(
            fault_snapshot(snap.Fault(abort=snap.FaultAbort(http_status=418)), app.address)
        )
        client = await Client.open(out)
        r = await client.request(b"/x", b"pricing")
        assert (r.status, r.header(b"x-gossamer-flags")) == (418, b"fault-abort")
        assert b'"error":"fault-abort"' in r.body
        assert app.seen == []
        assert injected(registry, "abort") == 1

    run(main())


def test_a_delay_holds_only_its_request_and_keeps_reading_the_body() -> None:
    """A header-only 0.2 s delay: the delayed POST arrives whole after the delay, while a request
    without the header on another connection is answered meanwhile."""

    async def main() -> None:
        app = await Backend(echo).start()
        spec = snap.Fault(
            delay=snap.FaultDelay(fixed_delay=0.2),
            headers=[snap.HeaderMatch(name="x-chaos", value="on")],
        )
        _dp, _, out, registry = await start_dataplane(fault_snapshot(spec, app.address))
        loop = asyncio.get_running_loop()
        slow = await Client.open(out)
        started = loop.time()
        slow.send(
            b"POST /slow HTTP/1.1\r\nhost: pricing\r\nx-chaos: on\r\n"
            b"content-length: 10\r\n\r\n01234"
        )
        await asyncio.sleep(0)
        slow.send(b"56789")
        fast = await Client.open(out)
        r = await fast.request(b"/fast", b"pricing")
        assert r.status == 200
        assert loop.time() - started < 0.2
        assert [s.url for s in app.seen] == [b"/fast"]
        r = await slow.response()
        assert (r.status, r.body) == (200, b"0123456789")
        assert loop.time() - started >= 0.19  # uvloop's clock has millisecond steps
        assert injected(registry, "delay") == 1

    run(main())


def test_a_delay_then_an_abort_answers_after_the_delay() -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        spec = snap.Fault(
            delay=snap.FaultDelay(fixed_delay=0.1), abort=snap.FaultAbort(http_status=503)
        )
        dp, _, out, _ = await start_dataplane(fault_snapshot(spec, app.address))
        loop = asyncio.get_running_loop()
        client = await Client.open(out)
        started = loop.time()
        r = await client.request(b"/x", b"pricing")
        assert (r.status, r.header(b"x-gossamer-flags")) == (503, b"fault-abort")
        assert loop.time() - started >= 0.09  # uvloop's clock has millisecond steps
        assert app.seen == []
        assert dp.tables.clusters["pricing.default"].active_requests == 0

    run(main())


def test_a_client_that_leaves_during_the_delay_is_forgotten() -> None:
    """Nothing reaches the backend, no request slot stays taken, no timer fires later."""

    async def main() -> None:
        app = await Backend(echo).start()
        spec = snap.Fault(delay=snap.FaultDelay(fixed_delay=0.1))
        dp, _, out, _ = await start_dataplane(fault_snapshot(spec, app.address))
        client = await Client.open(out)
        client.send(b"GET /gone HTTP/1.1\r\nhost: pricing\r\n\r\n")
        await wait_until(lambda: len(dp.outbound.connections) == 1)
        sock = client.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.writer.transport.abort()
        await wait_until(lambda: not dp.outbound.connections)
        await asyncio.sleep(0.15)  # past the delay: the cancelled timer must not start it
        assert app.seen == []
        assert dp.tables.clusters["pricing.default"].active_requests == 0

    run(main())


def test_a_seeded_share_of_requests_is_aborted() -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        spec = snap.Fault(abort=snap.FaultAbort(http_status=503, percentage=50))
        dp, _, out, registry = await start_dataplane(fault_snapshot(spec, app.address))
        dp.tables.clusters["pricing.default"].rand.seed(3)
        client = await Client.open(out)
        statuses = [(await client.request(b"/%d" % i, b"pricing")).status for i in range(40)]
        aborted = statuses.count(503)
        assert 8 <= aborted <= 32
        assert statuses.count(200) == len(app.seen) == 40 - aborted
        assert injected(registry, "abort") == aborted

    run(main())
