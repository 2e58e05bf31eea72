"""mTLS between contexts built by tls.py, checked by our own clients and by openssl s_client."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from security_helpers import Workload, issue

from gossamer.security.bundle import TrustBundle
from gossamer.security.ca import CertificateAuthority
from gossamer.security.csr import KeyFileError, private_key_pem, write_private_key
from gossamer.security.spiffe import SpiffeId
from gossamer.security.tls import (
    PeerIdentityError,
    SvidFiles,
    TlsConfigError,
    check_peer,
    client_context,
    peer_spiffe_id,
    server_context,
    write_svid,
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
FRONTEND = SpiffeId.workload("gossamer.local", "default", "frontend")
PRICING = SpiffeId.workload("gossamer.local", "default", "pricing")
DEADLINE = 10.0


def _files(tmp_path: Path, name: str, workload: Workload) -> SvidFiles:
    state = tmp_path / name
    state.mkdir()
    svid = workload.svid
    return write_svid(state, svid.cert_pem + svid.chain_pem, private_key_pem(workload.key))


@dataclass
class Server:
    """An inbound listener: TLS by server_context, then greets an allowed peer with its identity."""

    port: int
    peers: list[SpiffeId] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


StartServer = Callable[[ssl.SSLContext, Iterable[str]], Awaitable[Server]]


@pytest.fixture
async def serve() -> AsyncIterator[StartServer]:
    servers: list[asyncio.Server] = []

    async def start(ctx: ssl.SSLContext, allowed: Iterable[str]) -> Server:
        patterns = list(allowed)
        state = Server(0)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                peer = check_peer(writer.get_extra_info("ssl_object"), patterns)
            except PeerIdentityError as exc:
                state.refused.append(str(exc))
            else:
                state.peers.append(peer)
                writer.write(f"hello {peer}\n".encode())
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
        servers.append(server)
        state.port = server.sockets[0].getsockname()[1]
        return state

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def _client(port: int, ctx: ssl.SSLContext) -> tuple[ssl.SSLObject, bytes]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx), DEADLINE
    )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        line = await asyncio.wait_for(reader.readline(), DEADLINE)
        return ssl_object, line
    finally:
        writer.close()
        # Waiting retrieves the close's outcome: a refused handshake's error would otherwise be
        # logged later as "Future exception was never retrieved".
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), DEADLINE)


@pytest.fixture
def bundle(root_ca: CertificateAuthority) -> TrustBundle:
    return TrustBundle([root_ca.cert])


async def test_mtls_handshake_checks_identities_on_both_sides(
    tmp_path: Path, inter_ca: CertificateAuthority, bundle: TrustBundle, serve: StartServer
) -> None:
    """Both sides verify the chain against the bundle and see the other's SPIFFE ID."""
    server_files = _files(tmp_path, "pricing", issue(inter_ca, "pricing"))
    client_files = _files(tmp_path, "frontend", issue(inter_ca, "frontend"))
    server = await serve(server_context(server_files, bundle), ["*/sa/frontend"])
    ssl_object, line = await _client(server.port, client_context(client_files, bundle))
    assert ssl_object.version() == "TLSv1.3"
    assert check_peer(ssl_object, [str(PRICING)]) == PRICING
    with pytest.raises(PeerIdentityError) as info:
        check_peer(ssl_object, ["*/sa/billing"])
    assert str(info.value) == f"peer {PRICING} is not allowed here (expected */sa/billing)"
    assert line == f"hello {FRONTEND}\n".encode()
    assert server.peers == [FRONTEND]


async def test_server_refuses_an_unallowed_identity(
    tmp_path: Path, root_ca: CertificateAuthority, bundle: TrustBundle, serve: StartServer
) -> None:
    server_files = _files(tmp_path, "pricing", issue(root_ca, "pricing"))
    client_files = _files(tmp_path, "billing", issue(root_ca, "billing"))
    server = await serve(server_context(server_files, bundle), [str(FRONTEND)])
    _, line = await _client(server.port, client_context(client_files, bundle))
    assert line == b""
    assert server.refused == [
        f"peer spiffe://gossamer.local/ns/default/sa/billing is not allowed here "
        f"(expected {FRONTEND})"
    ]


async def test_client_cert_from_another_ca_is_refused(
    tmp_path: Path, root_ca: CertificateAuthority, bundle: TrustBundle, serve: StartServer
) -> None:
    stranger = CertificateAuthority.create_root("gossamer.local")
    server_files = _files(tmp_path, "pricing", issue(root_ca, "pricing"))
    client_files = _files(tmp_path, "frontend", issue(stranger, "frontend"))
    server = await serve(server_context(server_files, bundle), ["*"])
    # In TLS 1.3 the client's handshake ends before the server has checked its certificate: the
    # refusal shows on the first read (asyncio's server drops the connection without an alert).
    try:
        _, line = await _client(server.port, client_context(client_files, bundle))
    except (ssl.SSLError, ConnectionResetError):
        line = b""
    assert line == b""
    assert server.peers == []
    assert server.refused == []  # refused by the handshake, before any application code ran


async def test_server_cert_from_another_ca_is_refused(
    tmp_path: Path, root_ca: CertificateAuthority, bundle: TrustBundle, serve: StartServer
) -> None:
    stranger = CertificateAuthority.create_root("gossamer.local")
    server_files = _files(tmp_path, "pricing", issue(stranger, "pricing"))
    client_files = _files(tmp_path, "frontend", issue(root_ca, "frontend"))
    stranger_bundle = TrustBundle([stranger.cert, root_ca.cert])
    server = await serve(server_context(server_files, stranger_bundle), ["*"])
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await _client(server.port, client_context(client_files, bundle))


async def test_session_resumption(
    tmp_path: Path, inter_ca: CertificateAuthority, bundle: TrustBundle, serve: StartServer
) -> None:
    """A client that offers the session of its last connection resumes it (no full handshake)."""
    server_files = _files(tmp_path, "pricing", issue(inter_ca, "pricing"))
    client_files = _files(tmp_path, "frontend", issue(inter_ca, "frontend"))
    server = await serve(server_context(server_files, bundle), ["*/sa/frontend"])
    ctx = client_context(client_files, bundle)

    def connect(session: ssl.SSLSession | None) -> tuple[bool, ssl.SSLSession | None, bytes]:
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE) as raw,
            ctx.wrap_socket(raw, session=session) as tls,
        ):
            # TLS 1.3 tickets arrive after the handshake; reading the greeting takes them in.
            line = tls.makefile("rb").readline()
            assert peer_spiffe_id(tls) == PRICING
            return bool(tls.session_reused), tls.session, line

    reused, session, first = await asyncio.to_thread(connect, None)
    assert not reused
    assert session is not None
    reused_again, _, second = await asyncio.to_thread(connect, session)
    assert reused_again
    assert first == second == f"hello {FRONTEND}\n".encode()
    assert server.peers == [FRONTEND, FRONTEND]  # the resumed session still carries the identity


def test_peer_spiffe_id_without_a_certificate() -> None:
    class NoCert:
        def getpeercert(self) -> None:
            return None

    with pytest.raises(PeerIdentityError, match="presented no verified certificate"):
        peer_spiffe_id(NoCert())  # type: ignore[arg-type]


def test_context_errors(tmp_path: Path, root_ca: CertificateAuthority, bundle: TrustBundle) -> None:
    files = _files(tmp_path, "pricing", issue(root_ca, "pricing"))
    with pytest.raises(TlsConfigError, match="trust bundle is empty"):
        server_context(files, TrustBundle())
    write_private_key(files.key, ec.generate_private_key(ec.SECP256R1()))  # not the SVID's key
    with pytest.raises(TlsConfigError, match=r"cannot load the SVID from .*svid\.pem"):
        client_context(files, bundle)
    with pytest.raises(TlsConfigError, match="cannot load the SVID"):
        client_context(SvidFiles(tmp_path / "none.pem", tmp_path / "none-key.pem"), bundle)
    files.key.chmod(0o640)
    with pytest.raises(KeyFileError, match="has mode 0640"):
        write_svid(files.key.parent, b"cert", b"key")


def test_contexts_are_tls13_only(tmp_path: Path, root_ca: CertificateAuthority) -> None:
    files = _files(tmp_path, "pricing", issue(root_ca, "pricing"))
    bundle = TrustBundle([root_ca.cert])
    for ctx in (server_context(files, bundle), client_context(files, bundle)):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert not ctx.check_hostname
        assert len(ctx.get_ca_certs()) == 1  # the bundle only, not the system store


async def _s_client(port: int, *args: str) -> str:
    assert OPENSSL is not None
    proc = await asyncio.create_subprocess_exec(
        OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_3", "-showcerts",
        "-ign_eof", *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return out.decode(errors="replace")


@needs_openssl
async def test_openssl_s_client_against_the_server_context(
    tmp_path: Path,
    root_ca: CertificateAuthority,
    inter_ca: CertificateAuthority,
    bundle: TrustBundle,
    serve: StartServer,
) -> None:
    """A real client: the chain verifies against the root, the SAN is the SPIFFE ID, TLS 1.3."""
    server_files = _files(tmp_path, "pricing", issue(inter_ca, "pricing"))
    server = await serve(server_context(server_files, bundle), ["*/sa/frontend"])
    client = issue(inter_ca, "frontend")
    (tmp_path / "root.pem").write_bytes(root_ca.cert_pem())
    (tmp_path / "client.pem").write_bytes(client.svid.cert_pem)
    (tmp_path / "chain.pem").write_bytes(client.svid.chain_pem)
    write_private_key(tmp_path / "client-key.pem", client.key)

    out = await _s_client(
        server.port, "-CAfile", str(tmp_path / "root.pem"), "-verify_return_error",
        "-cert", str(tmp_path / "client.pem"), "-cert_chain", str(tmp_path / "chain.pem"),
        "-key", str(tmp_path / "client-key.pem"),
    )  # fmt: skip
    assert re.search(r"^\s*Verify return code: 0 \(ok\)", out, re.M), out
    assert re.search(r"^\s*Protocol\s*: TLSv1\.3$", out, re.M), out
    assert f"hello {FRONTEND}" in out
    presented = x509.load_pem_x509_certificates(
        "".join(
            re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n", out, re.S)
        ).encode()
    )
    san = presented[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(PRICING)]
    assert presented[1] == inter_ca.cert
    assert server.peers == [FRONTEND]

    refused = await _s_client(server.port, "-CAfile", str(tmp_path / "root.pem"))
    assert "Verify return code: 0 (ok)" in refused  # s_client trusts the server...
    assert f"hello {FRONTEND}" not in refused  # ...but the server never lets it in
    assert re.search(r"unexpected eof|alert certificate required", refused), refused
    assert server.peers == [FRONTEND]


def _accept_once(ctx: ssl.SSLContext, listener: socket.socket) -> str:
    """Accept one connection, handshake as the server, and return how it ended."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(DEADLINE)
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                return f"ok {peer_spiffe_id(tls)}"
        except ssl.SSLError as exc:
            return exc.reason or str(exc)


@pytest.mark.parametrize(
    ("client", "reason"),
    [("stranger", "CERTIFICATE_VERIFY_FAILED"), ("none", "PEER_DID_NOT_RETURN_A_CERTIFICATE")],
)
async def test_server_side_reasons_for_refusing_a_client(
    tmp_path: Path, root_ca: CertificateAuthority, bundle: TrustBundle, client: str, reason: str
) -> None:
    """What the server sees when a client's certificate is from another CA, or missing."""
    server_ctx = server_context(_files(tmp_path, "pricing", issue(root_ca, "pricing")), bundle)
    if client == "stranger":
        stranger = CertificateAuthority.create_root("gossamer.local")
        client_ctx = client_context(_files(tmp_path, "x", issue(stranger, "frontend")), bundle)
    else:
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.check_hostname = False
        client_ctx.load_verify_locations(cadata=bundle.to_pem().decode())
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(DEADLINE)
        port = listener.getsockname()[1]
        accepted = asyncio.create_task(asyncio.to_thread(_accept_once, server_ctx, listener))
        try:
            _, line = await _client(port, client_ctx)
        except (ssl.SSLError, ConnectionResetError):
            line = b""
        assert line == b""
        assert await asyncio.wait_for(accepted, DEADLINE) == reason
