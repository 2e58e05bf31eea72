"""Outlier detection and circuit breaking end to end: a real data plane and real backends."""

from __future__ import annotations

import msgspec
from test_dataplane import (
    Backend,
    Client,
    cluster,
    dead_address,
    metric_value,
    ok,
    run,
    snapshot,
    start_dataplane,
    vhost,
)

from gossamer import snapshot as snap
from gossamer.proxy.loadbalance.base import EJECT_OUTLIER

FAILING = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n"


def test_a_backend_answering_502_is_ejected_and_traffic_moves_to_the_others() -> None:
    async def main() -> None:
        bad = await Backend(lambda seen: FAILING).start()
        good = await Backend(lambda seen: ok()).start()
        spec = msgspec.structs.replace(
            cluster("pricing", [bad.address, good.address]),
            outlier_detection=snap.OutlierDetection(
                consecutive_gateway_errors=3, base_ejection_time=30.0, max_ejection_percent=50.0
            ),
        )
        dp, _, out, registry = await start_dataplane(snapshot([vhost("pricing")], [spec]))
        client = await Client.open(out)
        statuses = [(await client.request(b"/", b"pricing")).status for _ in range(20)]
        # Round robin: the bad one answers 3 times (every other request), then is out.
        assert statuses.count(502) == 3
        assert statuses[-10:] == [200] * 10
        endpoint = dp.tables.clusters["pricing.default"].endpoints[0]
        assert endpoint.address == bad.address
        assert endpoint.ejected & EJECT_OUTLIER
        assert (
            metric_value(
                registry,
                'gossamer_proxy_outlier_ejections_total{cluster="pricing.default",'
                'reason="consecutive_gateway"}',
            )
            == 1
        )
        assert (
            metric_value(registry, 'gossamer_proxy_endpoints_ejected{cluster="pricing.default"}')
            == 1
        )
        client.close()

    run(main())


def test_connect_failures_count_as_gateway_errors_next_to_fail_fast() -> None:
    """An endpoint that refuses connections gets both bits: fail-fast's (short backoff) and,
    after enough failures in a row, outlier detection's (longer)."""

    async def main() -> None:
        good = await Backend(lambda seen: ok()).start()
        dead = dead_address()
        spec = msgspec.structs.replace(
            cluster("pricing", [dead, good.address]),
            outlier_detection=snap.OutlierDetection(
                consecutive_gateway_errors=1, max_ejection_percent=50.0
            ),
        )
        retry = snap.RetryPolicy(attempts=2, retry_on=["connect-failure"])
        dp, _, out, _ = await start_dataplane(snapshot([vhost("pricing", retry=retry)], [spec]))
        client = await Client.open(out)
        for _ in range(6):
            r = await client.request(b"/", b"pricing")
            assert r.status == 200
        endpoint = dp.tables.clusters["pricing.default"].endpoints[0]
        assert endpoint.address == dead
        assert endpoint.ejected & EJECT_OUTLIER
        client.close()

    run(main())
