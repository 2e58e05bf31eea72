"""Active health checks over the cluster's mTLS: through the peer sidecar to its app.

Real sidecars with a test PKI (test_mtls_support); the health check of the caller's cluster
goes over mTLS to the pricing sidecar's STRICT inbound listener, which forwards it to the app.
"""

from __future__ import annotations

from pathlib import Path

import msgspec
from test_dataplane import Backend, Seen, cluster, ok, run, wait_until
from test_mtls_support import handshakes, make_pki, sidecar, spiffe

from gossamer import snapshot as snap
from gossamer.proxy.loadbalance.base import EJECT_HEALTH_CHECK

CHECK = snap.HealthCheck(
    path="/healthz", interval=0.05, timeout=1.0, healthy_threshold=1, unhealthy_threshold=2
)


def test_health_checks_go_over_mtls_and_follow_the_app(tmp_path: Path) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path)
        state = {"status": 200}

        def app_handler(seen: Seen) -> bytes:
            if seen.url == b"/healthz" and state["status"] != 200:
                return b"HTTP/1.1 500 X\r\ncontent-length: 0\r\n\r\n"
            return ok()

        app = await Backend(app_handler).start()
        _, pricing_in, _, _ = await sidecar(pki, "pricing", "STRICT", app_port=app.port)
        checked = msgspec.structs.replace(cluster("pricing", [pricing_in]), health_check=CHECK)
        dp, _, _, registry = await sidecar(
            pki,
            "frontend",
            "STRICT",
            clusters=[checked],
            identities={"pricing": [spiffe("pricing")]},
        )
        rt = dp.tables.clusters["pricing.default"]
        endpoint = rt.endpoints[0]
        await wait_until(lambda: any(s.url == b"/healthz" for s in app.seen), 10.0)
        assert (
            handshakes(registry, "outbound", "ok") + handshakes(registry, "outbound", "resumed")
            >= 1
        )
        state["status"] = 500
        await wait_until(lambda: bool(endpoint.ejected & EJECT_HEALTH_CHECK), 10.0)
        state["status"] = 200
        await wait_until(lambda: not endpoint.ejected & EJECT_HEALTH_CHECK, 10.0)

    run(main())


def test_a_peer_with_the_wrong_identity_fails_its_health_checks(tmp_path: Path) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path)
        app = await Backend(lambda seen: ok()).start()
        _, pricing_in, _, _ = await sidecar(pki, "pricing", "STRICT", app_port=app.port)
        checked = msgspec.structs.replace(cluster("pricing", [pricing_in]), health_check=CHECK)
        dp, _, _, registry = await sidecar(
            pki,
            "frontend",
            "STRICT",
            clusters=[checked],
            identities={"pricing": [spiffe("billing")]},
        )
        endpoint = dp.tables.clusters["pricing.default"].endpoints[0]
        await wait_until(lambda: bool(endpoint.ejected & EJECT_HEALTH_CHECK), 10.0)
        assert handshakes(registry, "outbound", "peer-not-allowed") >= 2
        assert app.seen == []

    run(main())
