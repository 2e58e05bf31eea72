"""`promtool check metrics` (Debian's prometheus package) on a sidecar's admin /metrics, after
real traffic filled its families: the golden metrics both ways over mTLS, retries, fail-fast and
outlier ejections, overflows, rate-limit and authz decisions, faults, fallbacks, and the
process's identity and agent metrics."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import msgspec
import pytest
from test_dataplane import (
    Backend,
    Client,
    Seen,
    cluster,
    dead_address,
    echo,
    run,
    wait_until,
)
from test_golden_metrics import samples
from test_mtls_support import make_pki, sidecar, spiffe

from gossamer import snapshot as snap
from gossamer.proxy.admin import AdminServer
from gossamer.proxy.agent import AgentMetrics, http_request
from gossamer.proxy.identity import IdentityMetrics

PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (scripts/install-system-deps)"
)


def promtool_check(exposition: bytes) -> None:
    """Fail with promtool's own words unless the exposition passes `promtool check metrics`."""
    assert PROMTOOL is not None
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, timeout=30
    )
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


class _View:
    def readiness(self) -> tuple[bool, str]:
        return True, ""

    def config_document(self) -> dict[str, object]:
        return {}

    def request_quit(self) -> None:
        pass


def _rule(name: str, cluster_: str, **extra: object) -> snap.RouteRule:
    return snap.RouteRule(
        name=name, backends=[snap.WeightedCluster(cluster=f"{cluster_}.default")], **extra
    )


def _vhost(name: str, rule: snap.RouteRule) -> snap.VirtualHost:
    return snap.VirtualHost(name=f"{name}.default", domains=[name], rules=[rule])


def test_admin_metrics_of_a_busy_sidecar_pass_promtool(tmp_path: Path) -> None:
    def failing(seen: Seen) -> bytes:
        return b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nfail"

    async def main() -> None:
        pki = make_pki(tmp_path / "pki")
        app = await Backend(echo).start()
        bad = await Backend(failing).start()
        hang = await Backend(lambda seen: None).start()
        pricing, pricing_in, _, pricing_reg = await sidecar(
            pki,
            "pricing",
            "STRICT",
            app_port=app.port,
            clusters=[cluster("frontend", [dead_address()])],
            identities={"frontend": [spiffe("frontend")]},
        )
        # pricing's next Snapshot adds an inbound rate limit and an authz policy.
        base = pricing.tables.snapshot
        assert base is not None

        pricing.apply(
            snap.seal(
                msgspec.structs.replace(
                    base,
                    rate_limits=snap.RateLimits(
                        inbound=[snap.RateLimitRule(name="default/rl#0", requests=3, period=60)]
                    ),
                    authz=snap.AuthzConfig(
                        policies=[
                            snap.AuthzPolicy(
                                name="default/allow-frontend",
                                rules=[
                                    snap.AuthzRule(
                                        from_=[snap.AuthzSource(principals=[spiffe("frontend")])]
                                    )
                                ],
                            )
                        ]
                    ),
                )
            )
        )
        retry = snap.RetryPolicy(attempts=2, retry_on=["connect-failure"])
        abort = snap.FaultFilter(fault=snap.Fault(abort=snap.FaultAbort(http_status=503)))
        ejecting = snap.Cluster(
            name="bad.default",
            service="bad",
            endpoints=[snap.Endpoint(address=bad.address)],
            outlier_detection=snap.OutlierDetection(consecutive_5xx=1, max_ejection_percent=100),
        )
        full = snap.Cluster(
            name="full.default",
            service="full",
            endpoints=[snap.Endpoint(address=hang.address)],
            connection_pool=snap.ConnectionPool(max_requests=1),
        )
        front, _, out, registry = await sidecar(
            pki,
            "frontend",
            "STRICT",
            vhosts=[
                _vhost("pricing", _rule("default/pricing#0", "pricing", retry=retry)),
                _vhost("bad", _rule("default/bad#0", "bad")),
                _vhost("full", _rule("default/full#0", "full")),
                _vhost("faulty", _rule("default/faulty#0", "pricing", filters=[abort])),
                _vhost(
                    "gone",
                    _rule(
                        "default/gone#0",
                        "gone",
                        fallback=snap.Fallback(response=snap.StaticResponse(body="later")),
                    ),
                ),
            ],
            clusters=[
                # The dead endpoint first in round robin: the first try fails, a retry serves.
                cluster("pricing", [dead_address(), pricing_in]),
                cluster("gone", [dead_address()]),
                ejecting,
                full,
            ],
            identities={"pricing": [spiffe("pricing")]},
        )
        # What `gossamer proxy` registers beside the data plane, with values.
        agent = AgentMetrics(registry)
        agent.snapshot_info.labels("abc123", "control-plane").set(1)
        agent.applies_ack.inc()
        agent.connected.set(1)
        agent.ready.set(1)
        identity = IdentityMetrics(registry)
        identity.expiry.set(1893456000)
        identity.renewed_ok.inc()
        admin = AdminServer(_View(), registry)
        _, port = await admin.start("127.0.0.1", 0)
        try:
            # One request to `full` that is never answered holds its only request slot.
            holder = await Client.open(out)
            holder.send(b"GET / HTTP/1.1\r\nhost: full\r\n\r\n")
            await wait_until(lambda: len(hang.seen) == 1)
            client = await Client.open(out)
            statuses = []
            for host in (b"pricing",) * 5 + (b"bad", b"bad", b"full", b"faulty", b"gone"):
                statuses.append((await client.request(b"/p?q=1", host, b"POST", b"x")).status)
            statuses.append((await client.request(b"/", b"nowhere")).status)
            # The second request to bad finds its only endpoint ejected: 503 no-healthy-endpoint.
            assert statuses == [200, 200, 200, 429, 429, 500, 503, 503, 503, 200, 404]
            status, body = await http_request("127.0.0.1", port, "GET", "/metrics", time_limit=5)
            assert status == 200
            promtool_check(body)
            promtool_check(pricing_reg.render())
            found = {name for name, _ in samples(registry)}
            for family in (
                "gossamer_requests_total",
                "gossamer_request_duration_seconds_bucket",
                "gossamer_request_bytes_bucket",
                "gossamer_response_bytes_bucket",
                "gossamer_tcp_connections_opened_total",
                "gossamer_tcp_received_bytes_total",
                "gossamer_tcp_sent_bytes_total",
                "gossamer_proxy_retries_total",
                "gossamer_proxy_outlier_ejections_total",
                "gossamer_proxy_endpoint_unreachable_ejections_total",
                "gossamer_proxy_overflows_total",
                "gossamer_proxy_faults_injected_total",
                "gossamer_proxy_fallbacks_total",
                "gossamer_proxy_tls_handshakes_total",
                "gossamer_proxy_svid_expiry_timestamp_seconds",
            ):
                assert family in found, family
            inbound = {name for name, _ in samples(pricing_reg)}
            for family in (
                "gossamer_proxy_rate_limit_decisions_total",
                "gossamer_proxy_authz_decisions_total",
                "gossamer_proxy_inbound_requests_by_peer_total",
            ):
                assert family in inbound, family
            flags = {
                dict(labels)["response_flag"]
                for (name, labels), _ in samples(registry).items()
                if name == "gossamer_requests_total"
            }
            assert flags == {
                "",
                "rate-limited",
                "no-healthy-endpoint",
                "overflow",
                "fault-abort",
                "fallback",
                "no-route",
            }
        finally:
            await admin.close()
        await front.drain(1.0)
        await pricing.drain(1.0)

    run(main())


def test_promtool_refuses_a_broken_exposition() -> None:
    """The check is real: a counter without `_total`, abbreviated units, a series without HELP
    and a syntax error each fail it."""
    done = subprocess.run(
        [PROMTOOL or "promtool", "check", "metrics"],
        input=b"# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests 1\n",
        capture_output=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert b"_total" in done.stdout + done.stderr
    for broken in (
        b"# HELP a_ms A.\n# TYPE a_ms gauge\na_ms 1\n",
        b"a 1\n",
        b"# HELP a A.\n# TYPE a gauge\na{b=1} 1\n",
    ):
        with pytest.raises(AssertionError):
            promtool_check(broken)
