"""The inbound listener's mTLS modes, checked with real clients: openssl s_client, curl, Python ssl.

Each test runs one sidecar in-process on uvloop in front of a recording app, with SVIDs from a
test CA under tmp_path (see test_mtls_support.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import shutil
from pathlib import Path

import msgspec
import pytest
from test_dataplane import Backend, Client, Seen, metric_value, ok, run
from test_mtls_support import (
    TD,
    handshakes,
    make_pki,
    open_tls,
    run_tool,
    sidecar,
    spiffe,
    tls_client_context,
    with_tls,
)

from gossamer import snapshot as snap
from gossamer.proxy.dataplane import SnapshotError
from gossamer.security.ca import CertificateAuthority

pytestmark = pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("openssl")), reason="needs curl and openssl"
)


def show_xfcc(seen: Seen) -> bytes:
    """The app answers with the XFCC fields it received, joined by ' | ' ('-' for none)."""
    values = [v for k, v in seen.headers if k == b"x-forwarded-client-cert"]
    return ok(b" | ".join(values) or b"-")


def port_of(address: str) -> str:
    return address.rsplit(":", 1)[1]


def test_openssl_s_client_sees_tls13_a_verified_chain_and_the_spiffe_id(tmp_path: Path) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path)
        app = await Backend(show_xfcc).start()
        dp, inbound, _, registry = await sidecar(pki, "pricing", "STRICT", app_port=app.port)
        client = pki.svid("frontend")
        rc, out, err = await run_tool(
            "openssl",
            "s_client",
            "-connect",
            inbound,
            "-tls1_3",
            "-CAfile",
            str(pki.bundle_file),
            "-cert",
            str(client.cert_chain),
            "-key",
            str(client.key),
            "-showcerts",
            "-ign_eof",
            stdin=b"GET /x HTTP/1.1\r\nhost: pricing\r\nconnection: close\r\n\r\n",
        )
        assert "Verify return code: 0 (ok)" in out, out + err
        assert re.search(r"Protocol\s*:\s*TLSv1\.3", out), out
        # The app answered through the proxy, and saw the peer's identity in XFCC.
        assert "HTTP/1.1 200 OK" in out
        assert f"By={spiffe('pricing')};URI={spiffe('frontend')}" in out
        leaf = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S)
        assert leaf is not None
        rc, san, err = await run_tool(
            "openssl", "x509", "-noout", "-ext", "subjectAltName", stdin=leaf.group(0).encode()
        )
        assert rc == 0, err
        assert f"URI:{spiffe('pricing')}" in san
        assert handshakes(registry, "inbound", "ok") >= 1
        assert dp.tls_status()["spiffeId"] == spiffe("pricing")

    run(main())


def test_strict_refuses_plaintext_curl_with_an_explanation(tmp_path: Path) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path)
        app = await Backend(show_xfcc).start()
        _, inbound, _, registry = await sidecar(pki, "pricing", "STRICT", app_port=app.port)
        rc, out, err = await run_tool("curl", "-sS", "-i", f"http://{inbound}/secret")
        assert rc == 0, err
        assert out.startswith("HTTP/1.1 400")
        assert "x-gossamer-flags: mtls-required" in out
        assert "requires mutual TLS from mesh sidecars" in out
        assert app.seen == []
        assert (
            metric_value(
                registry, 'gossamer_proxy_inbound_connections_by_tls_total{tls="refused-plaintext"}'
            )
            == 1
        )

    run(main())


def test_permissive_takes_plaintext_and_mtls_curl_on_one_port(tmp_path: Path) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path)
        app = await Backend(show_xfcc).start()
        _, inbound, _, registry = await sidecar(pki, "pricing", "PERMISSIVE", app_port=app.port)
        client = pki.svid("frontend")
        rc, out, err = await run_tool(
            "curl", "-sS", "-H", "x-forwarded-client-cert: By=forged", f"http://{inbound}/p"
        )
        assert (rc, out) == (0, "-"), err  # plaintext works, and a forged XFCC is dropped
        # curl checks the server's host name, which an SVID (URI SAN only) cannot satisfy: -k
        # skips that check; the chain itself is verified by the s_client test.
        rc, out, err = await run_tool(
            "curl",
            "-sS",
            "-k",
            "--tlsv1.3",
            "--cacert",
            str(pki.bundle_file),
            "--cert",
            str(client.cert_chain),
            "--key",
            str(client.key),
            "-H",
            "x-forwarded-client-cert: By=forged",
            f"https://{inbound}/t",
        )
        assert rc == 0, err
        assert out == f"By={spiffe('pricing')};URI={spiffe('frontend')}"
        by_tls = "gossamer_proxy_inbound_connections_by_tls_total"
        assert metric_value(registry, f'{by_tls}{{tls="plaintext"}}') == 1
        assert metric_value(registry, f'{by_tls}{{tls="mtls"}}') == 1
        by_peer = "gossamer_proxy_inbound_requests_by_peer_total"
        assert metric_value(registry, f'{by_peer}{{peer="{spiffe("frontend")}"}}') == 1
        assert metric_value(registry, f'{by_peer}{{peer="none"}}') == 1

    run(main())


def test_disable_rejects_tls_and_the_mode_follows_each_snapshot(tmp_path: Path) -> None:
    """One listener, three modes in turn: the decision is made per connection."""

    async def main() -> None:
        pki = make_pki(tmp_path)
        app = await Backend(show_xfcc).start()
        dp, inbound, _, _ = await sidecar(pki, "pricing", "DISABLE", app_port=app.port)
        client = pki.svid("frontend")
        tls_curl = (
            "curl",
            "-sS",
            "-k",
            "--cert",
            str(client.cert_chain),
            "--key",
            str(client.key),
            f"https://{inbound}/",
        )
        rc, _, err = await run_tool(*tls_curl)
        assert rc != 0, "DISABLE must not speak TLS"
        rc, out, _ = await run_tool("curl", "-sS", f"http://{inbound}/")
        assert (rc, out) == (0, "-")
        base = dp.tables.snapshot
        assert base is not None
        modes: tuple[tuple[snap.MtlsMode, bool, bool], ...] = (
            ("STRICT", False, True),
            ("PERMISSIVE", True, True),
            ("DISABLE", True, False),
        )
        for mode, plain_ok, tls_ok in modes:
            dp.apply(with_tls(base, mode, pki.bundle_pem))
            rc, out, _ = await run_tool(
                "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://{inbound}/"
            )
            assert (out == "200") is plain_ok, (mode, out)
            rc, out, err = await run_tool(*tls_curl)
            assert (rc == 0 and out.startswith("By=")) is tls_ok, (mode, rc, out, err)

    run(main())


@pytest.mark.parametrize("kind", ["other-ca", "expired", "no-cert"])
def test_strict_refuses_bad_client_certificates(tmp_path: Path, kind: str) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
        app = await Backend(show_xfcc).start()
        _, inbound, _, registry = await sidecar(pki, "pricing", "STRICT", app_port=app.port)
        cert_args: list[str] = []
        if kind == "other-ca":
            other = CertificateAuthority.create_root(TD)
            files = pki.svid("frontend", "other", ca=other)
            cert_args = ["--cert", str(files.cert_chain), "--key", str(files.key)]
        elif kind == "expired":
            past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
            files = pki.svid("frontend", "expired", now=past, ttl=dt.timedelta(hours=1))
            cert_args = ["--cert", str(files.cert_chain), "--key", str(files.key)]
        rc, out, _err = await run_tool("curl", "-sS", "-k", *cert_args, f"https://{inbound}/")
        assert rc != 0, out
        assert app.seen == []
        expected = {"other-ca": "unknown-ca", "expired": "expired", "no-cert": "no-client-cert"}
        assert handshakes(registry, "inbound", expected[kind]) == 1
        assert handshakes(registry, "inbound", "ok") == 0

    run(main())


@pytest.mark.parametrize(
    ("uris", "dns", "why"),
    [
        ([], ["frontend.default"], "0 URI SANs"),
        ([spiffe("frontend"), spiffe("admin")], [], "2 URI SANs"),
    ],
)
def test_malformed_client_svid_from_the_mesh_ca_is_refused_with_a_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, uris: list[str], dns: list[str], why: str
) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path)
        app = await Backend(show_xfcc).start()
        dp, inbound, _, registry = await sidecar(pki, "pricing", "STRICT", app_port=app.port)
        before = dp.tls_status()
        bad = pki.malformed("bad", uris, dns)
        ctx = tls_client_context(bad, pki.bundle_pem)
        with caplog.at_level(logging.WARNING, "gossamer.proxy.mtls"):
            try:
                client = await open_tls(inbound, ctx)
                client.send(b"GET / HTTP/1.1\r\nhost: pricing\r\n\r\n")
                refused = await client.at_eof()
            except (ConnectionError, OSError):
                refused = True
        assert refused
        assert app.seen == []
        assert handshakes(registry, "inbound", "bad-identity") == 1
        lines = [r.getMessage() for r in caplog.records]
        assert any(why in line and "127.0.0.1:" in line for line in lines), lines
        assert all(r.exc_info is None for r in caplog.records)
        assert dp.tls_status() == before  # nothing changed
        # A good client still gets through afterwards.
        good = await open_tls(inbound, tls_client_context(pki.svid("frontend"), pki.bundle_pem))
        r = await good.request(b"/", b"pricing")
        assert r.status == 200

    run(main())


def test_handshake_failures_are_logged_at_most_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path)
        app = await Backend(show_xfcc).start()
        _, inbound, _, registry = await sidecar(pki, "pricing", "STRICT", app_port=app.port)
        with caplog.at_level(logging.WARNING, "gossamer.proxy.mtls"):
            for _ in range(5):
                rc, _, _ = await run_tool("curl", "-sS", "-k", f"https://{inbound}/")
                assert rc != 0
        assert handshakes(registry, "inbound", "no-client-cert") == 5
        lines = [r.getMessage() for r in caplog.records if r.name == "gossamer.proxy.mtls"]
        assert len(lines) == 1, lines
        assert "no-client-cert" in lines[0]
        assert "127.0.0.1:" in lines[0]

    run(main())


def test_garbage_after_a_tls_record_byte_is_a_counted_protocol_failure(tmp_path: Path) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path)
        app = await Backend(show_xfcc).start()
        _, inbound, _, registry = await sidecar(pki, "pricing", "STRICT", app_port=app.port)
        client = await Client.open(inbound)
        client.send(b"\x16\x03\x01\x00\x05garbage-garbage-garbage")
        assert await client.at_eof()
        assert handshakes(registry, "inbound", "protocol") == 1
        assert app.seen == []

    run(main())


def test_bad_bundle_is_refused_naming_why_and_the_old_one_stays(tmp_path: Path) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path)
        app = await Backend(show_xfcc).start()
        dp, inbound, _, _ = await sidecar(pki, "pricing", "STRICT", app_port=app.port)
        base = dp.tables.snapshot
        assert base is not None
        with pytest.raises(SnapshotError, match="trustBundle: trust bundle: not PEM"):
            dp.apply(with_tls(base, "STRICT", "-----BEGIN CERTIFICATE-----\nnope\n"))
        leaf = pki.svid("frontend").cert_chain.read_text()
        with pytest.raises(SnapshotError, match="trustBundle"):
            dp.apply(with_tls(base, "STRICT", leaf))  # a leaf is not a root
        with pytest.raises(SnapshotError, match="needs a trust bundle"):
            dp.apply(with_tls(base, "STRICT", ""))
        no_mesh = msgspec.structs.replace(base, tls=None)
        tls_cluster = snap.Cluster(
            name="x.default", service="x", tls=snap.UpstreamTls(identities=[spiffe("x")])
        )
        with pytest.raises(SnapshotError, match="has no mesh tls"):
            dp.apply(snap.seal(msgspec.structs.replace(no_mesh, clusters=[tls_cluster])))
        assert dp.tables.snapshot is base
        status = dp.tls_status()
        assert status["mode"] == "STRICT"
        assert len(status["bundleRoots"]) == 1  # type: ignore[arg-type]
        assert "PRIVATE" not in str(status)
        good = await open_tls(inbound, tls_client_context(pki.svid("frontend"), pki.bundle_pem))
        assert (await good.request(b"/", b"pricing")).status == 200

    run(main())


def test_no_svid_yet_refuses_tls_and_strict_still_refuses_plaintext(tmp_path: Path) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path)
        app = await Backend(show_xfcc).start()
        dp, inbound, _, registry = await sidecar(
            pki, "pricing", "STRICT", app_port=app.port, svid=False
        )
        assert dp.tls_status()["svidLoaded"] is False
        rc, _, _ = await run_tool("curl", "-sS", "-k", f"https://{inbound}/")
        assert rc != 0
        assert handshakes(registry, "inbound", "no-svid") == 1
        dp.set_svid(pki.svid("pricing"))
        good = await open_tls(inbound, tls_client_context(pki.svid("frontend"), pki.bundle_pem))
        assert (await good.request(b"/", b"pricing")).status == 200

    run(main())
