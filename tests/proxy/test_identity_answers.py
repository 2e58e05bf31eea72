"""The proxy's identity against a real TLS server that answers `POST /v1/svid` as a test wants:
bad answers never touch the stored SVID, the signer is worked out from the verified chain, the
renewal loop survives any error, and a stored SVID that cannot be used falls back to the token."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gossamer.proxy.agent import ClientCertRefused, ClientTls, ControlPlaneError, http_request
from gossamer.proxy.identity import (
    Identity,
    IdentityMetrics,
    LockedOut,
    check_svid,
    load_stored,
)
from gossamer.security.bundle import TrustBundle, VerifyError, fingerprint
from gossamer.security.ca import CertificateAuthority
from gossamer.security.csr import generate_key, make_csr, private_key_pem
from gossamer.security.spiffe import SpiffeId
from gossamer.security.tls import SvidFiles, TlsConfigError, write_svid
from gossamer.snapshot import MeshTls, ProxyIdentity, Snapshot
from gossamer.telemetry.metrics import Registry

TD = "gossamer.local"
WEB = SpiffeId.workload(TD, "default", "web")
CONTROL_PLANE = SpiffeId.workload(TD, "gossamer-system", "control-plane")
DEADLINE = 10.0

Answer = Callable[[dict[str, str]], tuple[int, bytes]]


async def eventually(check: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE
    while not check():
        if loop.time() > end:
            raise AssertionError(f"{what} did not happen within {DEADLINE}s")
        await asyncio.sleep(0.01)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class FakeCa:
    """A mesh CA (root, optionally an intermediate that issues) and a TLS control plane served
    with a certificate from it; `answer` decides what `POST /v1/svid` gets."""

    root: CertificateAuthority
    issuer: CertificateAuthority
    bundle_file: Path
    answer: Answer | None = None
    requests: list[dict[str, str]] = field(default_factory=list)

    def sign(
        self,
        csr: str | bytes,
        spiffe_id: SpiffeId = WEB,
        issuer: CertificateAuthority | None = None,
        ttl: dt.timedelta = dt.timedelta(hours=1),
    ) -> bytes:
        svid = (issuer or self.issuer).sign_csr(csr, spiffe_id, ttl=ttl)
        return svid.cert_pem + svid.chain_pem

    def good(self, body: dict[str, str]) -> tuple[int, bytes]:
        chain = self.sign(body["csr"])
        return 200, json.dumps({"chain": chain.decode(), "signer": "f" * 64}).encode()

    def stored_svid(self, state: Path) -> SvidFiles:
        key = generate_key()
        state.mkdir(parents=True, exist_ok=True)
        return write_svid(state, self.sign(make_csr(key, WEB)), private_key_pem(key))


async def _read_request(reader: asyncio.StreamReader) -> dict[str, str]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body: dict[str, str] = json.loads(await reader.readexactly(length)) if length else {}
    return body


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[FakeCa, int]]:
    root = CertificateAuthority.create_root(TD)
    issuer = root.create_intermediate()
    bundle_file = tmp_path / "ca-bundle.pem"
    bundle_file.write_bytes(root.cert_pem())
    ca = FakeCa(root, issuer, bundle_file)
    ca.answer = ca.good
    key = ec.generate_private_key(ec.SECP256R1())
    cert = root.issue_server_cert(
        key.public_key(),
        CONTROL_PLANE,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        validity=dt.timedelta(days=1),
    )
    (tmp_path / "cp.pem").write_bytes(pem(cert))
    (tmp_path / "cp-key.pem").write_bytes(private_key_pem(key))
    ctx = ssl_server_context(tmp_path / "cp.pem", tmp_path / "cp-key.pem", root.cert_pem())

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            body = await _read_request(reader)
            ca.requests.append(body)
            assert ca.answer is not None
            status, answer = ca.answer(body)
            writer.write(
                f"HTTP/1.1 {status} X\r\ncontent-length: {len(answer)}\r\n\r\n".encode() + answer
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        yield ca, port
    finally:
        server.close()
        await server.wait_closed()


def ssl_server_context(cert: Path, key: Path, roots: bytes) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cadata=roots.decode())
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


class Recorder:
    """The data plane's `set_svid`: records, and raises the queued errors first."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.svids: list[SvidFiles] = []

    def __call__(self, files: SvidFiles) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.svids.append(files)


def make_identity(
    ca: FakeCa, port: int, state: Path, on_svid: Recorder, token: str | None = None
) -> Identity:
    return Identity(
        f"https://127.0.0.1:{port}",
        "127.0.0.1",
        port,
        TrustBundle.from_pem(ca.bundle_file.read_bytes()),
        state,
        "default",
        "web",
        token=token,
        on_svid=on_svid,
        metrics=IdentityMetrics(Registry()),
        ca_bundle_path=ca.bundle_file,
        backoff=lambda failures: 0.01,
    )


def stored_bytes(state: Path) -> tuple[bytes, bytes]:
    return (state / "svid.pem").read_bytes(), (state / "svid-key.pem").read_bytes()


# --- finding 2: validate first, then write ------------------------------------------------------


def _other_identity(ca: FakeCa, body: dict[str, str]) -> tuple[int, bytes]:
    other = SpiffeId.workload(TD, "default", "db")
    key = generate_key()
    chain = ca.sign(make_csr(key, other), other)
    return 200, json.dumps({"chain": chain.decode()}).encode()


def _another_key(ca: FakeCa, body: dict[str, str]) -> tuple[int, bytes]:
    chain = ca.sign(make_csr(generate_key(), WEB))
    return 200, json.dumps({"chain": chain.decode()}).encode()


def _unknown_root(ca: FakeCa, body: dict[str, str]) -> tuple[int, bytes]:
    stranger = CertificateAuthority.create_root(TD)
    return 200, json.dumps({"chain": ca.sign(body["csr"], issuer=stranger).decode()}).encode()


def _not_pem(ca: FakeCa, body: dict[str, str]) -> tuple[int, bytes]:
    return 200, json.dumps({"chain": "-----BEGIN CERTIFICATE-----\nAAAA\n"}).encode()


def _no_chain(ca: FakeCa, body: dict[str, str]) -> tuple[int, bytes]:
    return 200, b'{"spiffeId": "spiffe://gossamer.local/ns/default/sa/web"}'


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (_other_identity, "spiffe://gossamer.local/ns/default/sa/db, not"),
        (_another_key, "private key does not belong"),
        (_unknown_root, "not issued by a CA in the trust bundle"),
        (_not_pem, "not"),
        (_no_chain, "unreadable"),
    ],
)
async def test_a_bad_answer_leaves_the_stored_svid_untouched(
    fake: tuple[FakeCa, int],
    tmp_path: Path,
    answer: Callable[[FakeCa, dict[str, str]], tuple[int, bytes]],
    problem: str,
) -> None:
    ca, port = fake
    state = tmp_path / "proxy"
    ca.stored_svid(state)
    before = stored_bytes(state)
    identity = make_identity(ca, port, state, Recorder())
    first = await identity.acquire()
    ca.answer = lambda body: answer(ca, body)
    with pytest.raises(ControlPlaneError, match=problem):
        await identity._fetch(None)
    assert stored_bytes(state) == before
    assert identity.current is first
    assert len(ca.requests) == 1


async def test_a_good_answer_is_stored_and_the_signer_is_computed(
    fake: tuple[FakeCa, int], tmp_path: Path
) -> None:
    """The answer says signer "fff...": the proxy reports the fingerprint of the CA that really
    signed (the intermediate in the chain), and a Snapshot naming that one triggers nothing."""
    ca, port = fake
    state = tmp_path / "proxy"
    ca.stored_svid(state)
    recorder = Recorder()
    identity = make_identity(ca, port, state, recorder)
    await identity.acquire()
    info = await identity._fetch(None)
    assert info.signer == fingerprint(ca.issuer.cert)
    assert check_svid(*stored_bytes(state), WEB, identity.bundle, identity.wall())
    identity._install(info)
    report = identity.report()
    assert report is not None
    assert report["signer"] == fingerprint(ca.issuer.cert)
    assert report["serial"] == info.serial

    def snapshot(signer: str) -> Snapshot:
        return Snapshot(
            proxy=ProxyIdentity(proxy_id="web-0", service="web"),
            tls=MeshTls(mode="STRICT", trust_bundle=ca.root.cert_pem().decode(), signer=signer),
        )

    identity.on_snapshot(snapshot(fingerprint(ca.issuer.cert)))
    assert not identity._renew_now.is_set()
    identity.on_snapshot(snapshot("f" * 64))
    assert identity._renew_now.is_set()


async def test_signed_by_a_root_the_signer_is_that_root(
    fake: tuple[FakeCa, int], tmp_path: Path
) -> None:
    ca, port = fake
    ca.issuer = ca.root
    state = tmp_path / "proxy"
    ca.stored_svid(state)
    identity = make_identity(ca, port, state, Recorder())
    stored = await identity.acquire()
    assert stored.signer == fingerprint(ca.root.cert)


# --- finding 2: what is stored must be usable, else the token ------------------------------------


async def test_a_stored_key_that_does_not_match_the_certificate_is_not_used(
    fake: tuple[FakeCa, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash between the two renames: a new key next to the old certificate. The proxy treats
    the stored SVID as absent (one line) and takes the token path."""
    caplog.set_level(logging.INFO)
    ca, port = fake
    state = tmp_path / "proxy"
    ca.stored_svid(state)
    (state / "svid-key.pem").write_bytes(private_key_pem(generate_key()))
    identity = make_identity(ca, port, state, Recorder(), token="bootstrap-token")
    assert load_stored(state, WEB, identity.bundle, identity.wall()) is None
    caplog.clear()
    info = await identity.acquire()
    assert ca.requests[0]["token"] == "bootstrap-token"
    assert check_svid(*stored_bytes(state), WEB, identity.bundle, identity.wall())
    assert identity.current is info
    lines = [r.getMessage() for r in caplog.records if "not using the SVID" in r.getMessage()]
    assert len(lines) == 1
    assert "does not belong to the certificate" in lines[0]


async def test_a_stored_svid_the_data_plane_refuses_falls_back_to_the_token(
    fake: tuple[FakeCa, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca, port = fake
    state = tmp_path / "proxy"
    ca.stored_svid(state)
    recorder = Recorder(TlsConfigError("cannot load the SVID: KEY_VALUES_MISMATCH"))
    identity = make_identity(ca, port, state, recorder, token="bootstrap-token")
    info = await identity.acquire()
    assert [r["token"] for r in ca.requests] == ["bootstrap-token"]
    assert recorder.svids == [info.files]
    assert "the data plane cannot load it: TlsConfigError" in caplog.text


async def test_unusable_stored_svid_and_no_token_is_the_usual_error(
    fake: tuple[FakeCa, int], tmp_path: Path
) -> None:
    ca, port = fake
    state = tmp_path / "proxy"
    ca.stored_svid(state)
    (state / "svid.pem").write_bytes(b"garbage")
    identity = make_identity(ca, port, state, Recorder())
    with pytest.raises(Exception, match="no usable SVID"):
        await identity.acquire()


# --- finding 1: the renewal loop never dies -------------------------------------------------------


async def test_the_renewal_loop_survives_any_error(
    fake: tuple[FakeCa, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The data plane refuses the first renewed SVID (TlsConfigError), then raises a cryptography
    exception: each is one WARNING line with its text (the traceback only at DEBUG); the loop
    retries and installs the third."""
    caplog.set_level(logging.DEBUG, logger="gossamer.proxy.identity")
    ca, port = fake
    state = tmp_path / "proxy"
    ca.stored_svid(state)
    san = x509.ObjectIdentifier("2.5.29.17")
    recorder = Recorder()
    identity = make_identity(ca, port, state, recorder)
    await identity.acquire()
    recorder.errors = [
        TlsConfigError("cannot load the SVID: boom"),
        TlsConfigError("cannot load the SVID: boom"),
        x509.ExtensionNotFound("no subjectAltName", san),
    ]
    task = asyncio.create_task(identity.run())
    try:
        identity._renew_now.set()
        await eventually(lambda: len(recorder.svids) == 2, "a renewal installed")
        assert not task.done()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert [r.exc_info for r in warnings] == [None, None]
        assert "cannot load the SVID: boom" in warnings[0].getMessage()
        assert "ExtensionNotFound: no subjectAltName" in warnings[1].getMessage()
        debug = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
        assert len(debug) == 1
        assert len(ca.requests) == 4
        assert identity.last_error == ""
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_an_unreachable_control_plane_is_retried_not_fatal(
    fake: tuple[FakeCa, int], tmp_path: Path
) -> None:
    ca, port = fake
    state = tmp_path / "proxy"
    ca.stored_svid(state)
    recorder = Recorder()
    identity = make_identity(ca, port, state, recorder)
    await identity.acquire()
    answers = [(503, b'{"error": {"message": "busy"}}'), (500, b"oops")]
    ca.answer = lambda body: answers.pop(0) if answers else ca.good(body)
    task = asyncio.create_task(identity.run())
    try:
        identity._renew_now.set()
        await eventually(lambda: len(recorder.svids) == 2, "a renewal after two failures")
        assert len(ca.requests) == 3
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- finding 3: a refusal that nothing can fix ----------------------------------------------------


async def test_a_401_for_an_untrusted_svid_ends_the_renewal_loop(
    fake: tuple[FakeCa, int], tmp_path: Path
) -> None:
    ca, port = fake
    state = tmp_path / "proxy"
    ca.stored_svid(state)
    identity = make_identity(ca, port, state, Recorder())
    await identity.acquire()
    message = (
        "renewing an SVID needs a valid SVID, and this client's certificate is refused: "
        "certificate of spiffe://gossamer.local/ns/default/sa/web does not verify: it is not "
        "issued by a CA in the trust bundle (unknown issuer)"
    )
    ca.answer = lambda body: (401, json.dumps({"error": {"message": message}}).encode())
    identity._renew_now.set()
    with pytest.raises(LockedOut, match="restart the proxy with a new bootstrap token"):
        await asyncio.wait_for(identity.run(), DEADLINE)
    assert len(ca.requests) == 1


async def test_a_401_for_another_reason_is_retried(
    fake: tuple[FakeCa, int], tmp_path: Path
) -> None:
    ca, port = fake
    state = tmp_path / "proxy"
    ca.stored_svid(state)
    recorder = Recorder()
    identity = make_identity(ca, port, state, recorder)
    await identity.acquire()
    answers = [(401, b'{"error": {"message": "a hiccup"}}')]
    ca.answer = lambda body: answers.pop(0) if answers else ca.good(body)
    task = asyncio.create_task(identity.run())
    try:
        identity._renew_now.set()
        await eventually(lambda: len(recorder.svids) == 2, "the renewal after a 401")
        assert not identity.locked_out
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_retired_root_in_the_ca_bundle_file_means_locked_out(
    fake: tuple[FakeCa, int], tmp_path: Path
) -> None:
    """A vague refusal, but the SVID's root is gone from the --ca-bundle file: locked out."""
    ca, port = fake
    state = tmp_path / "proxy"
    ca.stored_svid(state)
    identity = make_identity(ca, port, state, Recorder())
    await identity.acquire()
    identity.refused("no")
    assert identity.locked_out == ""
    ca.bundle_file.write_bytes(CertificateAuthority.create_root(TD).cert_pem())
    identity.refused("no")
    assert "no longer in the mesh's trust bundle" in identity.locked_out
    with pytest.raises(LockedOut):
        await asyncio.wait_for(identity.run(), DEADLINE)


async def test_a_server_that_drops_an_untrusted_client_certificate(tmp_path: Path) -> None:
    """A TLS server that does not trust the client's certificate closes the connection without
    a byte (asyncio, uvicorn): the client names it ClientCertRefused for the identity to judge."""

    root = CertificateAuthority.create_root(TD)
    other = CertificateAuthority.create_root(TD)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = root.issue_server_cert(
        key.public_key(),
        CONTROL_PLANE,
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        validity=dt.timedelta(days=1),
    )
    (tmp_path / "cp.pem").write_bytes(pem(cert))
    (tmp_path / "cp-key.pem").write_bytes(private_key_pem(key))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "cp.pem", tmp_path / "cp-key.pem")
    server_ctx.load_verify_locations(cadata=root.cert_pem().decode())
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client_key = generate_key()
    svid = other.sign_csr(make_csr(client_key, WEB), WEB)
    (tmp_path / "c.pem").write_bytes(svid.cert_pem)
    (tmp_path / "c-key.pem").write_bytes(private_key_pem(client_key))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=root.cert_pem().decode())
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "c-key.pem")
    try:
        with pytest.raises(ClientCertRefused):
            await http_request(
                "127.0.0.1", port, "GET", "/", time_limit=5, tls=ClientTls(ctx, str(CONTROL_PLANE))
            )
    finally:
        server.close()
        await server.wait_closed()


def test_check_svid_names_each_problem(tmp_path: Path) -> None:
    root = CertificateAuthority.create_root(TD)
    bundle = TrustBundle([root.cert])
    key = generate_key()
    svid = root.sign_csr(make_csr(key, WEB), WEB)
    now = dt.datetime.now(dt.UTC).timestamp()
    assert check_svid(svid.cert_pem, private_key_pem(key), WEB, bundle, now)
    with pytest.raises(VerifyError, match="does not belong"):
        check_svid(svid.cert_pem, private_key_pem(generate_key()), WEB, bundle, now)
    with pytest.raises(VerifyError, match="not a PEM private key"):
        check_svid(svid.cert_pem, b"nope", WEB, bundle, now)
    with pytest.raises(VerifyError, match="expired"):
        check_svid(svid.cert_pem, private_key_pem(key), WEB, bundle, now + 10 * 86400)
    with pytest.raises(VerifyError, match="not PEM certificates"):
        check_svid(b"", private_key_pem(key), WEB, bundle, now)
