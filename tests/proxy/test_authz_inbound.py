"""AuthorizationPolicy enforcement on the inbound listener, in-process on uvloop.

Real data planes and backends on 127.0.0.1 (helpers from test_dataplane.py): a sidecar in front
of an app, with policies in its Snapshot, called directly on its inbound listener.
"""

from __future__ import annotations

import logging

import msgspec
import pytest
from test_dataplane import Backend, Client, echo, metric_value, run, snapshot, start_dataplane

from gossamer import snapshot as snap
from gossamer.proxy.authorize import UNKNOWN_PORT, host_port
from gossamer.proxy.dataplane import SnapshotError


def with_authz(
    base: snap.Snapshot, *policies: snap.AuthzPolicy, default_port: int | None = None
) -> snap.Snapshot:
    config = snap.AuthzConfig(policies=list(policies), default_port=default_port)
    return snap.seal(msgspec.structs.replace(base, authz=config))


def op(
    paths: list[str] = (),  # type: ignore[assignment]
    methods: list[str] = (),  # type: ignore[assignment]
    ports: list[int] = (),  # type: ignore[assignment]
    kind: snap.AuthzPathType = "Prefix",
) -> snap.AuthzRule:
    return snap.AuthzRule(
        to=[
            snap.AuthzOperation(
                paths=[snap.AuthzPath(type=kind, value=p) for p in paths],
                methods=list(methods),
                ports=list(ports),
            )
        ]
    )


ALLOW_PUBLIC = snap.AuthzPolicy(
    name="default/public-get", action="ALLOW", rules=[op(["/public"], ["GET"])]
)
# An ALLOW for /admin too, so that only the DENY can refuse it.
ALLOW_ADMIN = snap.AuthzPolicy(name="default/admin-any", action="ALLOW", rules=[op(["/admin"])])
DENY_ADMIN = snap.AuthzPolicy(name="default/no-admin", action="DENY", rules=[op(["/admin"])])
AUDIT_ALL = snap.AuthzPolicy(name="default/audit-all", action="AUDIT", rules=[op([""])])


def decisions(registry: object, policy: str, decision: str) -> float:
    return metric_value(
        registry,  # type: ignore[arg-type]
        f'gossamer_proxy_authz_decisions_total{{policy="{policy}",decision="{decision}"}}',
    )


def test_allow_and_deny_policies_are_enforced_with_a_403_naming_the_policy() -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        base = snapshot([], [], app_port=app.port, service="pricing")
        _dp, inbound, _, registry = await start_dataplane(
            with_authz(base, ALLOW_PUBLIC, ALLOW_ADMIN, DENY_ADMIN)
        )
        client = await Client.open(inbound)
        r = await client.request(b"/public/x?q=1", b"pricing:8080")
        assert r.status == 200
        assert r.header(b"x-seen-url") == b"/public/x?q=1"

        r = await client.request(b"/public", b"pricing:8080", method=b"POST", body=b"x")
        assert (r.status, r.header(b"x-gossamer-flags")) == (403, b"denied")
        body = msgspec.json.decode(r.body)
        assert body["error"] == "denied"
        assert body["policy"] is None
        assert "default deny" in body["message"]
        assert "default/public-get" in body["message"]

        # Dot segments and escapes cannot slip past the DENY; the connection stays usable.
        for target in (b"/admin", b"/public/../admin/x", b"/%61dmin"):
            r = await client.request(target, b"pricing")
            assert (r.status, r.header(b"x-gossamer-flags")) == (403, b"denied"), target
            body = msgspec.json.decode(r.body)
            assert body["policy"] == "default/no-admin"
            assert "denied by DENY policy default/no-admin" in body["message"]
            assert body["requestId"] == r.header(b"x-request-id").decode()  # type: ignore[union-attr]
        r = await client.request(b"/public/y", b"pricing")
        assert r.status == 200
        assert [s.url for s in app.seen] == [b"/public/x?q=1", b"/public/y"]

        # A fragment could make the checked path differ from the served one: refused outright.
        fragment = await Client.open(inbound)
        r = await fragment.request(b"/admin#x", b"pricing")
        assert (r.status, r.header(b"x-gossamer-flags")) == (400, b"bad-request")
        fragment.close()
        assert [s.url for s in app.seen] == [b"/public/x?q=1", b"/public/y"]

        assert decisions(registry, "default/public-get", "allow") == 2
        assert decisions(registry, "default/no-admin", "deny") == 3
        assert decisions(registry, "default", "deny") == 1
        local = 'gossamer_proxy_local_responses_total{direction="inbound",flag="denied"}'
        assert metric_value(registry, local) == 4
        client.close()

    run(main())


def test_ports_come_from_the_host_header() -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        base = snapshot([], [], app_port=app.port, service="pricing")
        policy = snap.AuthzPolicy(name="default/p8080", action="ALLOW", rules=[op(ports=[8080])])
        _dp, inbound, _, _ = await start_dataplane(with_authz(base, policy))
        client = await Client.open(inbound)
        assert (await client.request(b"/", b"pricing:8080")).status == 200
        assert (await client.request(b"/", b"pricing:9090")).status == 403
        # No port in Host and none in the Snapshot: the port is unknown, so `ports` never matches.
        assert (await client.request(b"/", b"pricing")).status == 403
        client.close()

    run(main())


def test_the_port_is_the_services_never_the_one_the_client_writes_in_host() -> None:
    """The inbound listener serves the service's port: a DENY on it applies whatever the Host says
    (`pricing`, `pricing:1`, `pricing:9090`), so a forged Host port cannot walk past it."""

    async def main() -> None:
        app = await Backend(echo).start()
        base = snapshot([], [], app_port=app.port, service="pricing")
        deny = snap.AuthzPolicy(name="default/no-8080", action="DENY", rules=[op(ports=[8080])])
        _dp, inbound, _, _ = await start_dataplane(with_authz(base, deny, default_port=8080))
        client = await Client.open(inbound)
        for host in (b"pricing", b"pricing:1", b"pricing:9090", b"pricing:8080"):
            r = await client.request(b"/", host)
            assert (r.status, r.header(b"x-gossamer-flags")) == (403, b"denied"), host
        assert app.seen == []
        client.close()

    run(main())

    assert host_port(b"svc:8080") == 8080
    assert host_port(b"[::1]:81") == 81
    assert host_port(b"[::1]") == UNKNOWN_PORT
    assert host_port(b"svc") == UNKNOWN_PORT
    assert host_port(b"svc:x") == UNKNOWN_PORT


def test_audit_matches_are_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        base = snapshot([], [], app_port=app.port, service="pricing")
        _dp, inbound, _, registry = await start_dataplane(with_authz(base, AUDIT_ALL))
        client = await Client.open(inbound)
        for _ in range(3):
            assert (await client.request(b"/anything", b"pricing")).status == 200
        assert decisions(registry, "default/audit-all", "audit") == 3
        assert decisions(registry, "default", "allow") == 3
        client.close()

    with caplog.at_level(logging.INFO, logger="gossamer.proxy.authz"):
        run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "gossamer.proxy.authz"]
    # Rate-limited: three matches within a second make one line.
    assert len(lines) == 1
    assert "GET /anything" in lines[0]
    assert "default/audit-all" in lines[0]


def test_a_snapshot_without_authz_has_no_authorizer_and_is_unaffected() -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        base = snapshot([], [], app_port=app.port, service="pricing")
        dp, inbound, _, registry = await start_dataplane(base)
        assert dp.tables.authz is None
        client = await Client.open(inbound)
        assert (await client.request(b"/admin", b"pricing", method=b"POST", body=b"")).status == 200
        # An authz section with no policies is the same as none.
        dp.apply(with_authz(base))
        assert dp.tables.authz is None
        assert (await client.request(b"/admin", b"pricing")).status == 200
        # Policies come and go with Snapshots.
        dp.apply(with_authz(base, DENY_ADMIN))
        assert (await client.request(b"/admin", b"pricing")).status == 403
        dp.apply(base)
        assert (await client.request(b"/admin", b"pricing")).status == 200
        # Only the one request under the DENY policy was decided; the others were not looked at.
        assert decisions(registry, "default/no-admin", "deny") == 1
        assert decisions(registry, "default", "allow") == 0
        client.close()

    run(main())


def test_an_invalid_authz_section_is_a_snapshot_error_and_keeps_the_old_tables() -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        base = snapshot([], [], app_port=app.port, service="pricing")
        good = with_authz(base, DENY_ADMIN)
        dp, inbound, _, _ = await start_dataplane(good)
        bad = snap.AuthzPolicy(
            name="default/bad", action="ALLOW", rules=[op(["/a(b"], kind="RegularExpression")]
        )
        with pytest.raises(SnapshotError) as err:
            dp.apply(with_authz(base, bad))
        assert err.value.reason.startswith("authz: policy default/bad, rules[0].to[0].paths[0]")
        assert dp.tables.snapshot is good
        client = await Client.open(inbound)
        assert (await client.request(b"/admin", b"pricing")).status == 403
        assert (await client.request(b"/ok", b"pricing")).status == 200
        client.close()

    run(main())
