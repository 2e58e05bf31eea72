"""A Snapshot with bad health-check or outlier settings is NACKed whole, and leaks nothing.

On a real DataPlane against a real backend: the probes reaching the backend show which health
checkers run. A refused Snapshot keeps the old tables and starts no checker; should the build
phase fail after all (a check that missed something), the runtimes it built are closed and the
ones it updated get their old spec back.
"""

from __future__ import annotations

import math

import msgspec
import pytest
from test_dataplane import (
    Backend,
    Seen,
    cluster,
    ok,
    run,
    snapshot,
    start_dataplane,
    vhost,
    wait_until,
)

from gossamer import snapshot as snap
from gossamer.proxy.cluster import ClusterRuntime
from gossamer.proxy.dataplane import SnapshotError


def probed(name: str, path: str, interval: float = 0.02) -> snap.Cluster:
    check = snap.HealthCheck(path=path, interval=interval, timeout=0.5)
    return msgspec.structs.replace(cluster(name, []), health_check=check)


def probes(app: Backend, path: bytes) -> int:
    return sum(1 for s in app.seen if s.url == path)


def answer(seen: Seen) -> bytes:
    return ok()


def with_endpoint(spec: snap.Cluster, address: str) -> snap.Cluster:
    return msgspec.structs.replace(spec, endpoints=[snap.Endpoint(address=address)])


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (snap.HealthCheck(path="/h HTTP/1.1\r\nx-evil: 1\r\n\r\nGET /admin"), "health_check.path"),
        (snap.HealthCheck(path="/healthz", interval=math.inf), "health_check.interval"),
        (
            snap.HealthCheck(path="/healthz", unhealthy_threshold=0),
            "health_check.unhealthy_threshold",
        ),
        (snap.OutlierDetection(interval=math.inf), "outlier_detection.interval"),
        (
            snap.OutlierDetection(max_ejection_percent=math.nan),
            "outlier_detection.max_ejection_percent",
        ),
    ],
)
def test_bad_settings_are_nacked_naming_cluster_and_field_and_start_nothing(
    bad: snap.HealthCheck | snap.OutlierDetection, field: str
) -> None:
    async def main() -> None:
        app = await Backend(answer).start()
        pricing = with_endpoint(cluster("pricing", []), app.address)
        good = snapshot([vhost("pricing")], [pricing])
        dp, _, _, _ = await start_dataplane(good)
        before = dp.tables
        # A good new cluster first, then the bad one: nothing of either may start.
        early = with_endpoint(probed("early", "/early"), app.address)
        kind = "health_check" if isinstance(bad, snap.HealthCheck) else "outlier_detection"
        broken = with_endpoint(
            msgspec.structs.replace(cluster("broken", []), **{kind: bad}), app.address
        )
        with pytest.raises(SnapshotError) as caught:
            dp.apply(snapshot([vhost("pricing")], [pricing, early, broken]))
        assert "cluster 'broken.default'" in caught.value.reason
        assert field in caught.value.reason
        assert "\n" not in caught.value.reason
        assert dp.tables is before
        # Probes of a checker started afterwards arrive; none of the refused one ever did.
        later = with_endpoint(probed("later", "/later"), app.address)
        dp.apply(snapshot([vhost("pricing")], [pricing, later]))
        await wait_until(lambda: probes(app, b"/later") >= 5)
        assert probes(app, b"/early") == 0

    run(main())


def test_a_build_that_fails_after_the_checks_closes_what_it_built_and_restores_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the checks bypassed, a bad health-check path breaks the build midway: a SnapshotError
    (not the raw ValueError), the old tables, TLS mode and the updated cluster's spec stay, and
    the health checker built before the failure no longer probes."""

    async def main() -> None:
        app = await Backend(answer).start()
        pricing = with_endpoint(cluster("pricing", []), app.address)
        dp, _, _, _ = await start_dataplane(snapshot([vhost("pricing")], [pricing]))
        before = dp.tables
        runtime = before.clusters["pricing.default"]
        monkeypatch.setattr(ClusterRuntime, "check", staticmethod(lambda spec, loop: None))
        changed = msgspec.structs.replace(
            pricing, connection_pool=snap.ConnectionPool(max_requests=7)
        )
        early = with_endpoint(probed("early", "/early"), app.address)
        broken = with_endpoint(probed("broken", "/x\r\nx-evil: 1"), app.address)
        bad = snapshot([vhost("pricing")], [changed, early, broken])
        bad = msgspec.structs.replace(bad, tls=snap.MeshTls(mode="DISABLE", trust_bundle=""))
        with pytest.raises(SnapshotError) as caught:
            dp.apply(bad)
        assert caught.value.reason.startswith("cluster 'broken.default': cannot be applied:")
        assert "health_check.path" in caught.value.reason
        assert dp.tables is before
        assert dp.tls.mode is None
        assert before.clusters["pricing.default"] is runtime
        assert runtime.spec == pricing
        assert runtime.max_requests == pricing.connection_pool.max_requests
        monkeypatch.undo()
        later = with_endpoint(probed("later", "/later"), app.address)
        dp.apply(snapshot([vhost("pricing")], [pricing, later]))
        await wait_until(lambda: probes(app, b"/later") >= 5)
        assert probes(app, b"/early") == 0

    run(main())
