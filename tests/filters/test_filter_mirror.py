"""Request mirroring: the compiled filter, and copies through a data plane to a real mirror.

The data-plane tests use real backends on 127.0.0.1 (helpers from tests/proxy/test_dataplane.py):
the mirror gets copies with the `-shadow` authority, and a dead or silent mirror never changes
what the original request gets.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "proxy"))

from test_dataplane import (
    Backend,
    Client,
    cluster,
    dead_address,
    echo,
    metric_value,
    ok,
    run,
    snapshot,
    start_dataplane,
    vhost,
    wait_until,
)

from gossamer import snapshot as snap
from gossamer.filters import mirror
from gossamer.http.message import RequestHead
from gossamer.proxy.dataplane import SnapshotError
from gossamer.telemetry.metrics import Counter, Registry

RULE = "default/pricing#0"


def compiled(percentage: float = 100.0) -> mirror.Mirror:
    counter = Counter("mirrors", "test", ("cluster", "result"))
    return mirror.compile(
        snap.RequestMirror(cluster="shadow.default", percentage=percentage), counter
    )


# --- the filter -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authority", "shadow"),
    [
        (b"catalog", b"catalog-shadow"),
        (b"catalog:8080", b"catalog-shadow:8080"),
        (b"catalog.default.svc", b"catalog.default.svc-shadow"),
    ],
)
def test_the_copy_gets_the_shadow_authority(authority: bytes, shadow: bytes) -> None:
    original = RequestHead(
        b"PUT", b"/a", b"q=1", [(b"host", authority), (b"x-a", b"1")], host=authority
    )
    copy = compiled().shadow_head(original)
    assert copy.host == shadow
    assert copy.headers == [(b"host", shadow), (b"x-a", b"1")]
    assert (copy.method, copy.path, copy.query) == (b"PUT", b"/a", b"q=1")
    assert original.headers[0] == (b"host", authority)  # the original is untouched


def test_sampling_follows_the_percentage() -> None:
    def never() -> float:
        raise AssertionError("no draw expected")

    assert compiled(100).sample(never)
    assert not compiled(0).sample(never)
    rng = random.Random(5)
    half = compiled(50)
    chosen = sum(half.sample(rng.random) for _ in range(2000))
    assert 900 <= chosen <= 1100


def test_copies_in_flight_are_bounded() -> None:
    m = compiled()
    m.max_in_flight = 2
    assert m.admit()
    assert m.admit()
    assert not m.admit()
    assert m.skipped.value == 1


def test_a_bad_percentage_is_refused() -> None:
    bad = snap.RequestMirror(cluster="x", percentage=150)
    with pytest.raises(ValueError, match="rule r: percentage 150"):
        mirror.compile(bad, Counter("m", "t", ("cluster", "result")), "rule r")


# --- through a data plane -------------------------------------------------------------------------


def mirror_snapshot(
    primary: str, shadow: str, percentage: float = 100.0, shadow_cluster: str = "shadow.default"
) -> snap.Snapshot:
    mirror = snap.RequestMirror(cluster=shadow_cluster, percentage=percentage)
    return snapshot(
        [vhost("pricing", filters=[snap.RequestMirrorFilter(request_mirror=mirror)], rule=RULE)],
        [cluster("pricing", [primary]), cluster("shadow", [shadow])],
    )


def mirrored(registry: Registry, result: str) -> float:
    return metric_value(
        registry,
        f'gossamer_proxy_mirrored_requests_total{{cluster="shadow.default",result="{result}"}}',
    )


def test_the_mirror_gets_copies_with_bodies_and_its_answers_are_dropped() -> None:
    async def main() -> None:
        primary = await Backend(echo).start()
        shadow = await Backend(lambda _seen: ok(b"from the mirror")).start()
        _dp, _, out, registry = await start_dataplane(
            mirror_snapshot(primary.address, shadow.address)
        )
        client = await Client.open(out)
        r = await client.request(b"/get?x=1", b"pricing")
        assert (r.status, r.header(b"x-seen-url")) == (200, b"/get?x=1")
        r = await client.request(b"/post", b"pricing", method=b"POST", body=b"payload")
        assert r.body == b"payload"
        # Chunked: the copy is sent once the body is complete, with a Content-Length.
        client.send(
            b"POST /chunked HTTP/1.1\r\nhost: pricing\r\ntransfer-encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        assert (await client.response()).body == b"abcde"
        await wait_until(lambda: mirrored(registry, "sent") == 3)
        seen = {s.url: s for s in shadow.seen}
        assert set(seen) == {b"/get?x=1", b"/post", b"/chunked"}
        assert dict(seen[b"/get?x=1"].headers)[b"host"] == b"pricing-shadow"
        assert seen[b"/post"].method == b"POST"
        assert seen[b"/post"].body == b"payload"
        assert seen[b"/chunked"].body == b"abcde"
        assert (
            dict(seen[b"/post"].headers)[b"x-request-id"]
            == dict(primary.seen[1].headers)[b"x-request-id"]
        )
        assert [s.url for s in primary.seen] == [b"/get?x=1", b"/post", b"/chunked"]

    run(main())


def test_a_dead_mirror_never_affects_the_original() -> None:
    async def main() -> None:
        primary = await Backend(echo).start()
        _dp, _, out, registry = await start_dataplane(
            mirror_snapshot(primary.address, dead_address())
        )
        client = await Client.open(out)
        for i in range(5):
            r = await client.request(b"/%d" % i, b"pricing")
            assert (r.status, r.header(b"x-gossamer-flags")) == (200, None)
        await wait_until(lambda: mirrored(registry, "failed") == 5)
        assert mirrored(registry, "sent") == 0

    run(main())


def test_a_silent_mirror_does_not_slow_the_original() -> None:
    """The mirror never answers: every original is answered at once; copies pile up only to
    the in-flight bound, the rest are skipped."""

    async def main() -> None:
        primary = await Backend(echo).start()
        shadow = await Backend(lambda _seen: None).start()
        dp, _, out, registry = await start_dataplane(
            mirror_snapshot(primary.address, shadow.address)
        )
        binding = dp.tables.routes.mirrors[0]
        binding.mirror.max_in_flight = 4
        loop = asyncio.get_running_loop()
        client = await Client.open(out)
        started = loop.time()
        for i in range(10):
            r = await client.request(b"/%d" % i, b"pricing")
            assert r.status == 200
        assert loop.time() - started < 2.0
        assert binding.mirror.in_flight == 4
        assert mirrored(registry, "skipped") == 6
        await wait_until(lambda: len(shadow.seen) == 4)

    run(main())


def test_bodies_over_the_retry_buffer_are_not_mirrored() -> None:
    async def main() -> None:
        primary = await Backend(echo).start()
        shadow = await Backend(echo).start()
        _dp, _, out, registry = await start_dataplane(
            mirror_snapshot(primary.address, shadow.address), retry_buffer_bytes=16
        )
        client = await Client.open(out)
        r = await client.request(b"/big", b"pricing", method=b"POST", body=b"x" * 100)
        assert r.body == b"x" * 100
        r = await client.request(b"/small", b"pricing", method=b"POST", body=b"y")
        assert r.body == b"y"
        await wait_until(lambda: mirrored(registry, "sent") == 1)
        assert mirrored(registry, "skipped") == 1
        assert [s.url for s in shadow.seen] == [b"/small"]

    run(main())


def test_a_seeded_share_of_requests_is_mirrored() -> None:
    async def main() -> None:
        primary = await Backend(echo).start()
        shadow = await Backend(echo).start()
        dp, _, out, registry = await start_dataplane(
            mirror_snapshot(primary.address, shadow.address, percentage=25)
        )
        dp.tables.clusters["pricing.default"].rand.seed(11)
        client = await Client.open(out)
        for i in range(40):
            assert (await client.request(b"/%d" % i, b"pricing")).status == 200
        binding = dp.tables.routes.mirrors[0]
        await wait_until(lambda: binding.mirror.in_flight == 0)
        assert mirrored(registry, "sent") == len(shadow.seen)
        assert 2 <= len(shadow.seen) <= 20
        assert len(primary.seen) == 40

    run(main())


def _refusing_snapshot(
    primary: str, shadow: str, fault: snap.Fault | None, pool: snap.ConnectionPool
) -> snap.Snapshot:
    """The mirror rule, with a Fault before it and a request limit on the primary cluster."""
    filters: list[snap.RouteFilter] = [] if fault is None else [snap.FaultFilter(fault=fault)]
    filters.append(
        snap.RequestMirrorFilter(request_mirror=snap.RequestMirror(cluster="shadow.default"))
    )
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
                            filters=filters,
                            backends=[snap.WeightedCluster(cluster="pricing.default")],
                        )
                    ],
                )
            ],
            clusters=[cluster("pricing", [primary], pool=pool), cluster("shadow", [shadow])],
        )
    )


def test_a_request_aborted_after_its_delay_is_not_mirrored() -> None:
    """Delay then abort, the body complete during the delay: the copy waits for the request to
    go ahead, and it never does."""

    async def main() -> None:
        primary = await Backend(echo).start()
        shadow = await Backend(echo).start()
        fault = snap.Fault(
            delay=snap.FaultDelay(fixed_delay=0.05), abort=snap.FaultAbort(http_status=503)
        )
        dp, _, out, registry = await start_dataplane(
            _refusing_snapshot(primary.address, shadow.address, fault, snap.ConnectionPool())
        )
        client = await Client.open(out)
        r = await client.request(b"/order", b"pricing", method=b"POST", body=b"payload")
        assert (r.status, r.header(b"x-gossamer-flags")) == (503, b"fault-abort")
        binding = dp.tables.routes.mirrors[0]
        # A copy, had one gone, would be in flight or counted by now (it starts synchronously).
        assert binding.mirror.in_flight == 0
        assert mirrored(registry, "sent") + mirrored(registry, "failed") == 0
        assert (primary.seen, shadow.seen) == ([], [])

    run(main())


def test_a_request_refused_by_the_request_limit_is_not_mirrored() -> None:
    """max_requests 1 on the primary: the held request is copied, the one refused with 503
    overflow is not (counted as skipped)."""

    async def main() -> None:
        primary = await Backend(lambda _seen: None).start()
        shadow = await Backend(echo).start()
        pool = snap.ConnectionPool(max_requests=1)
        _dp, _, out, registry = await start_dataplane(
            _refusing_snapshot(primary.address, shadow.address, None, pool)
        )
        held = await Client.open(out)
        held.send(b"GET /held HTTP/1.1\r\nhost: pricing\r\n\r\n")
        await wait_until(lambda: len(primary.seen) == 1)
        client = await Client.open(out)
        r = await client.request(b"/refused", b"pricing")
        assert (r.status, r.header(b"x-gossamer-flags")) == (503, b"overflow")
        await wait_until(lambda: mirrored(registry, "sent") == 1)
        assert mirrored(registry, "skipped") == 1
        assert [s.url for s in shadow.seen] == [b"/held"]

    run(main())


def test_a_mirror_naming_an_unknown_cluster_is_refused() -> None:
    async def main() -> None:
        dp, _, _, _ = await start_dataplane(
            mirror_snapshot(dead_address(), dead_address(), shadow_cluster="shadow.default")
        )
        with pytest.raises(SnapshotError, match=r"filter #0 .*'nowhere' is not in the snapshot"):
            dp.apply(mirror_snapshot(dead_address(), dead_address(), shadow_cluster="nowhere"))

    run(main())
