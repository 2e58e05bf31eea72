"""Sidecar-to-sidecar mTLS: app -> outbound of A -> mTLS -> inbound of B -> app B, in-process.

Real DataPlanes on uvloop with SVIDs from a test CA (test_mtls_support.py): identities reach the
app (XFCC) and authorization, a server with the wrong identity is refused, sessions resume, and
SVID renewal and root rotation under load fail no request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import msgspec
import pytest
from test_dataplane import Backend, Client, Seen, cluster, metric_value, ok, run, vhost
from test_mtls_support import Pki, handshakes, make_pki, sidecar, spiffe

from gossamer import snapshot as snap
from gossamer.proxy.dataplane import DataPlane
from gossamer.telemetry.metrics import Registry


def show_xfcc(seen: Seen) -> bytes:
    values = [v for k, v in seen.headers if k == b"x-forwarded-client-cert"]
    return ok(b" | ".join(values) or b"-")


def pricing_cluster(address: str, pool: snap.ConnectionPool | None = None) -> snap.Cluster:
    return cluster("pricing", [address], pool=pool)


async def caller(
    pki: Pki,
    sa: str,
    pricing_in: str,
    *,
    identities: list[str] | None = None,
    pool: snap.ConnectionPool | None = None,
    svid: bool = True,
    retry: snap.RetryPolicy | None = None,
) -> tuple[DataPlane, str, Registry]:
    """A sidecar for `sa` whose outbound routes "pricing" to `pricing_in` over mTLS."""
    dp, _, out, registry = await sidecar(
        pki,
        sa,
        "STRICT",
        vhosts=[vhost("pricing", retry=retry)],
        clusters=[pricing_cluster(pricing_in, pool)],
        identities={"pricing": identities or [spiffe("pricing")]},
        svid=svid,
    )
    return dp, out, registry


def test_xfcc_carries_the_callers_identity_end_to_end(tmp_path: Path) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path)
        app = await Backend(show_xfcc).start()
        _, pricing_in, _, b_reg = await sidecar(pki, "pricing", "STRICT", app_port=app.port)
        _, out, a_reg = await caller(pki, "frontend", pricing_in)
        client = await Client.open(out)
        for _ in range(3):
            r = await client.request(
                b"/p", b"pricing", headers=b"x-forwarded-client-cert: By=x;URI=spiffe://forged\r\n"
            )
            assert r.status == 200, r.body
            assert r.body == f"By={spiffe('pricing')};URI={spiffe('frontend')}".encode()
        assert handshakes(a_reg, "outbound", "ok") == 1  # one upstream connection, kept alive
        assert handshakes(b_reg, "inbound", "ok") == 1
        by_peer = "gossamer_proxy_inbound_requests_by_peer_total"
        assert metric_value(b_reg, f'{by_peer}{{peer="{spiffe("frontend")}"}}') == 3

    run(main())


def test_a_server_with_the_wrong_spiffe_id_is_a_connect_failure_naming_it(tmp_path: Path) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path)
        app = await Backend(show_xfcc).start()
        _, pricing_in, _, _ = await sidecar(pki, "pricing", "STRICT", app_port=app.port)
        _, out, a_reg = await caller(pki, "frontend", pricing_in, identities=[spiffe("billing")])
        client = await Client.open(out)
        r = await client.request(b"/", b"pricing")
        assert r.status == 503
        assert r.header(b"x-gossamer-flags") == b"connect-failure"
        message = json.loads(r.body)["message"]
        assert message == (
            f"TLS to {pricing_in}: peer {spiffe('pricing')} is not allowed here "
            f"(expected {spiffe('billing')})"
        )
        assert handshakes(a_reg, "outbound", "peer-not-allowed") == 1
        assert app.seen == []

    run(main())


def test_a_server_from_another_ca_is_refused_and_retried_elsewhere(tmp_path: Path) -> None:
    """Connect-failure semantics: the bad endpoint is marked and the retry goes to a good one."""

    async def main() -> None:
        pki = make_pki(tmp_path)
        other = make_pki(tmp_path / "other")
        app = await Backend(show_xfcc).start()
        _, good_in, _, _ = await sidecar(pki, "pricing", "STRICT", app_port=app.port)
        rogue_app = await Backend(show_xfcc).start()
        _, rogue_in, _, _ = await sidecar(other, "pricing", "STRICT", app_port=rogue_app.port)
        dp, _, out, a_reg = await sidecar(
            pki,
            "frontend",
            "STRICT",
            vhosts=[
                vhost("pricing", retry=snap.RetryPolicy(attempts=2, retry_on=["connect-failure"]))
            ],
            clusters=[cluster("pricing", [rogue_in, good_in])],
            identities={"pricing": [spiffe("pricing")]},
        )
        client = await Client.open(out)
        for _ in range(4):
            r = await client.request(b"/", b"pricing")
            assert r.status == 200, r.body
        assert rogue_app.seen == []
        assert handshakes(a_reg, "outbound", "unknown-ca") >= 1
        assert dp.tables.clusters["pricing.default"].failfast.marked

    run(main())


def test_no_svid_yet_fails_the_try_and_never_falls_back_to_plaintext(tmp_path: Path) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path)
        app = await Backend(show_xfcc).start()
        _, pricing_in, _, b_reg = await sidecar(pki, "pricing", "PERMISSIVE", app_port=app.port)
        dp, out, a_reg = await caller(pki, "frontend", pricing_in, svid=False)
        client = await Client.open(out)
        r = await client.request(b"/", b"pricing")
        assert r.status == 503
        assert "has no SVID yet" in json.loads(r.body)["message"]
        assert app.seen == []
        assert metric_value(b_reg, "gossamer_proxy_downstream_connections_total") == 0
        assert handshakes(a_reg, "outbound", "no-svid") == 1
        dp.set_svid(pki.svid("frontend"))
        r = await client.request(b"/", b"pricing")
        assert r.status == 200

    run(main())


def test_authorization_sees_real_identities(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ALLOW principals [frontend] on pricing: frontend passes, evil (same CA) gets 403."""

    async def main() -> None:
        pki = make_pki(tmp_path)
        app = await Backend(show_xfcc).start()
        dp, pricing_in, _, b_reg = await sidecar(pki, "pricing", "PERMISSIVE", app_port=app.port)
        base = dp.tables.snapshot
        assert base is not None
        policy = snap.AuthzPolicy(
            name="default/only-frontend",
            action="ALLOW",
            rules=[snap.AuthzRule(from_=[snap.AuthzSource(principals=[spiffe("frontend")])])],
        )
        deny_evil = snap.AuthzPolicy(
            name="default/no-evil",
            action="DENY",
            rules=[snap.AuthzRule(from_=[snap.AuthzSource(principals=["*/sa/evil"])])],
        )
        dp.apply(
            snap.seal(
                msgspec.structs.replace(base, authz=snap.AuthzConfig(policies=[policy, deny_evil]))
            )
        )
        _, good_out, _ = await caller(pki, "frontend", pricing_in)
        _, evil_out, _ = await caller(pki, "evil", pricing_in)
        with caplog.at_level(logging.INFO, "gossamer.proxy.authz"):
            good = await (await Client.open(good_out)).request(b"/", b"pricing")
            evil = await (await Client.open(evil_out)).request(b"/", b"pricing")
            plain = await (await Client.open(pricing_in)).request(b"/", b"pricing")
        assert good.status == 200
        assert good.body == f"By={spiffe('pricing')};URI={spiffe('frontend')}".encode()
        assert evil.status == 403
        assert json.loads(evil.body)["policy"] == "default/no-evil"
        assert plain.status == 403  # plaintext has no principal: default deny
        assert len(app.seen) == 1
        lines = [r.getMessage() for r in caplog.records if "denied" in r.getMessage()]
        assert any(f"from {spiffe('evil')}" in line for line in lines), lines
        decisions = 'gossamer_proxy_authz_decisions_total{policy="default/no-evil",decision="deny"}'
        assert metric_value(b_reg, decisions) == 1

    run(main())


def test_sessions_resume_between_sidecars_and_keep_the_peer_identity(tmp_path: Path) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path)
        app = await Backend(show_xfcc).start()
        _, pricing_in, _, b_reg = await sidecar(pki, "pricing", "STRICT", app_port=app.port)
        # One request per upstream connection: every request needs a new handshake.
        pool = snap.ConnectionPool(max_requests_per_connection=1)
        dp, out, a_reg = await caller(pki, "frontend", pricing_in, pool=pool)
        client = await Client.open(out)
        for _ in range(3):
            r = await client.request(b"/", b"pricing")
            assert r.status == 200
            assert r.body == f"By={spiffe('pricing')};URI={spiffe('frontend')}".encode()
        assert handshakes(a_reg, "outbound", "ok") == 1
        assert handshakes(a_reg, "outbound", "resumed") == 2
        assert handshakes(b_reg, "inbound", "resumed") == 2
        assert dp.tls_status()["outboundSessionsCached"] == 1

    run(main())


async def load(
    out: str, total: int, keep_alive_clients: int, swap: asyncio.Event, swaps_done: asyncio.Event
) -> list[str]:
    """`total` requests to "pricing" through `out`: half on a few keep-alive connections, half on
    a new connection each; returns the failures. `swap` is set after the first quarter."""
    failures: list[str] = []
    sent = 0

    async def one(client: Client) -> None:
        nonlocal sent
        sent += 1
        if sent == total // 4:
            swap.set()
        r = await client.request(b"/", b"pricing")
        if r.status != 200:
            failures.append(f"{r.status} {r.body!r}")

    async def keep_alive() -> None:
        client = await Client.open(out)
        for _ in range(total // 2 // keep_alive_clients):
            await one(client)
        client.close()

    async def fresh() -> None:
        for _ in range(total // 2):
            client = await Client.open(out)
            await one(client)
            client.close()
            if swap.is_set() and not swaps_done.is_set():
                await asyncio.sleep(0)  # let the swapper interleave with new connections

    await asyncio.gather(fresh(), *(keep_alive() for _ in range(keep_alive_clients)))
    return failures


def test_svid_renewal_under_load_fails_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path)
        app = await Backend(show_xfcc).start()
        b, pricing_in, _, _b_reg = await sidecar(pki, "pricing", "STRICT", app_port=app.port)
        pool = snap.ConnectionPool(max_requests_per_connection=5)
        a, out, a_reg = await caller(pki, "frontend", pricing_in, pool=pool)
        swap, done = asyncio.Event(), asyncio.Event()

        async def swapper() -> None:
            await swap.wait()
            for _i in range(4):
                # Renewal rewrites the same files; set_svid rebuilds both contexts.
                b.set_svid(pki.svid("pricing"))
                a.set_svid(pki.svid("frontend"))
                for _ in range(10):
                    await asyncio.sleep(0)
            done.set()

        swapping = asyncio.get_running_loop().create_task(swapper())
        failures = await load(out, 200, 4, swap, done)
        await swapping
        assert failures == []
        generation = a.tls_status()["contextGeneration"]
        assert isinstance(generation, int)
        assert generation >= 5
        assert handshakes(a_reg, "outbound", "ok") >= 2  # new contexts: full handshakes
        assert len(app.seen) == 200

    run(main())


def test_root_rotation_through_apply_under_load_fails_nothing(tmp_path: Path) -> None:
    """Add the new root to both bundles, re-issue both SVIDs from it, drop the old root."""

    async def main() -> None:
        pki = make_pki(tmp_path)
        new = make_pki(tmp_path / "new-root")
        app = await Backend(show_xfcc).start()
        b, pricing_in, _, _ = await sidecar(pki, "pricing", "STRICT", app_port=app.port)
        pool = snap.ConnectionPool(max_requests_per_connection=5)
        a, out, _ = await caller(pki, "frontend", pricing_in, pool=pool)
        swap, done = asyncio.Event(), asyncio.Event()

        def rebundle(dp: DataPlane, pem: str) -> None:
            current = dp.tables.snapshot
            assert current is not None
            assert current.tls is not None
            dp.apply(
                snap.seal(
                    msgspec.structs.replace(
                        current, tls=msgspec.structs.replace(current.tls, trust_bundle=pem)
                    )
                )
            )

        async def rotate() -> None:
            await swap.wait()
            both = pki.bundle_pem + new.bundle_pem
            for step in range(3):
                if step == 0:
                    rebundle(a, both)
                    rebundle(b, both)
                elif step == 1:
                    b.set_svid(new.svid("pricing", "pricing-new"))
                    a.set_svid(new.svid("frontend", "frontend-new"))
                else:
                    rebundle(a, new.bundle_pem)
                    rebundle(b, new.bundle_pem)
                for _ in range(20):
                    await asyncio.sleep(0)
            done.set()

        rotating = asyncio.get_running_loop().create_task(rotate())
        failures = await load(out, 200, 4, swap, done)
        await rotating
        assert failures == []
        assert a.tls_status()["bundleRoots"] == b.tls_status()["bundleRoots"]
        assert len(a.tls_status()["bundleRoots"]) == 1  # type: ignore[arg-type]
        # After the rotation, new connections work with the new root only.
        client = await Client.open(out)
        for _ in range(6):
            assert (await client.request(b"/", b"pricing")).status == 200

    run(main())
