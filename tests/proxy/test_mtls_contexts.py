"""Unit tests of proxy/mtls.py's pieces: synthetic SNI, failure classification, contexts, status."""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path

import pytest
import uvloop
from test_mtls_support import make_pki, spiffe

from gossamer.proxy.mtls import (
    ResumingContext,
    TlsState,
    build_contexts,
    classify,
    read_svid_identity,
    server_name,
)
from gossamer.proxy.stats import DataPlaneMetrics
from gossamer.security.bundle import TrustBundle
from gossamer.security.tls import PeerIdentityError, SvidFiles, TlsConfigError, client_context
from gossamer.telemetry.metrics import Registry

_DNS = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]+$")


@pytest.mark.parametrize(
    ("cluster", "host", "port", "expected"),
    [
        ("pricing.default", "127.0.0.1", 41234, "41234.ip-127-0-0-1.pricing.default.mesh.internal"),
        ("Web_UI.shop.v2", "::1", 80, "80.ip-1.web-ui.shop.v2.mesh.internal"),
        ("a" * 300, "10.0.0.1", 1, f"1.ip-10-0-0-1.{'a' * 63}.mesh.internal"),
        (".".join(["b" * 60] * 5), "10.0.0.1", 1, "1.ip-10-0-0-1.mesh.internal"),
    ],
)
def test_server_name_is_a_valid_dns_name_per_endpoint(
    cluster: str, host: str, port: int, expected: str
) -> None:
    name = server_name(cluster, host, port)
    assert name == expected
    assert _DNS.match(name), name


def test_failures_are_classified_with_plain_reasons() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_code = 10
    verify.verify_message = "certificate has expired"
    assert classify(verify) == ("expired", "certificate verify failed: certificate has expired")
    verify.verify_code = 20
    verify.verify_message = "unable to get local issuer certificate"
    assert classify(verify)[0] == "unknown-ca"
    no_cert = ssl.SSLError(1, "peer did not return a certificate")
    no_cert.reason = "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert classify(no_cert) == ("no-client-cert", "the client presented no certificate")
    assert classify(TimeoutError())[0] == "timeout"
    assert classify(ConnectionResetError())[0] == "closed"
    assert classify(PeerIdentityError("peer x is not allowed"))[0] == "bad-identity"


def test_contexts_are_tls13_only_and_the_client_one_resumes(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    files = pki.svid("web")
    server, client = build_contexts(files, TrustBundle.from_pem(pki.bundle_pem))
    assert server is not None and client is not None  # noqa: PT018
    assert isinstance(client, ResumingContext)
    for ctx in (server, client):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert build_contexts(None, TrustBundle.from_pem(pki.bundle_pem)) == (None, None)
    plain = client_context(files, TrustBundle.from_pem(pki.bundle_pem))
    assert type(plain) is ssl.SSLContext  # the library's default stays a plain context


def test_svid_identity_and_bad_files(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    files = pki.svid("web")
    spiffe_id, not_after = read_svid_identity(files)
    assert spiffe_id == spiffe("web")
    assert not_after.endswith("+00:00")
    with pytest.raises(TlsConfigError, match="cannot read the SVID"):
        read_svid_identity(SvidFiles(tmp_path / "missing.pem", files.key))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    with pytest.raises(TlsConfigError, match="no PEM certificate"):
        read_svid_identity(SvidFiles(garbage, files.key))


def test_state_keeps_the_old_svid_when_the_new_one_is_bad(tmp_path: Path) -> None:
    async def main() -> None:
        pki = make_pki(tmp_path)
        state = TlsState(asyncio.get_running_loop(), DataPlaneMetrics(Registry()))
        state.install_bundle(state.prepare_bundle(pki.bundle_pem))
        good = pki.svid("web")
        state.set_svid(good)
        before = state.status()
        mismatched = SvidFiles(good.cert_chain, pki.svid("other").key)  # key of another SVID
        with pytest.raises(TlsConfigError, match="cannot load the SVID"):
            state.set_svid(mismatched)
        assert state.status() == before
        assert before["svidLoaded"] is True
        assert before["contextsReady"] is True
        assert "PRIVATE KEY" not in str(before)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
