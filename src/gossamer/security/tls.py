"""TLS 1.3 contexts for sidecar mTLS with SPIFFE identities, and the peer identity checks."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gossamer.security.spiffe import SpiffeId, SpiffeIdError, matches

if TYPE_CHECKING:
    # Types only: `cryptography` (behind both) costs a sidecar ~10 MiB of RSS, so the modules
    # that need it are imported where they are used.
    from gossamer.security.bundle import TrustBundle

CERT_FILE = "svid.pem"
KEY_FILE = "svid-key.pem"


class TlsConfigError(Exception):
    """A TLS context cannot be built (empty bundle, unreadable or mismatched SVID files)."""


class PeerIdentityError(Exception):
    """A TLS peer has no usable SPIFFE identity, or one that is not allowed here."""


@dataclass(frozen=True, slots=True)
class SvidFiles:
    """Where a workload's SVID lives: the certificate chain (leaf first) and its 0600 key."""

    cert_chain: Path
    key: Path


def write_svid(state_dir: Path, cert_chain_pem: bytes, key_pem: bytes) -> SvidFiles:
    """Store an SVID for `ssl` to load: the key 0600, both files replaced atomically.

    `ssl.SSLContext.load_cert_chain` reads only files, so the key must be on disk; it goes in the
    proxy's own state dir, never in a shared temp dir.

    Raises:
        KeyFileError: the state dir is not writable, or the existing key file is group/world
            readable.
    """
    from gossamer.security.csr import write_file_atomic, write_private_file

    files = SvidFiles(state_dir / CERT_FILE, state_dir / KEY_FILE)
    write_private_file(files.key, key_pem)
    write_file_atomic(files.cert_chain, cert_chain_pem)
    return files


def server_context(
    svid: SvidFiles, bundle: TrustBundle, *, context_type: type[ssl.SSLContext] = ssl.SSLContext
) -> ssl.SSLContext:
    """An inbound (server) context: TLS 1.3 only, presents `svid`, requires a client SVID.

    The client's chain is verified against `bundle`; its SPIFFE ID is checked after the handshake
    (`peer_spiffe_id` / `check_peer`), since SPIFFE IDs are not host names. `context_type` is an
    `ssl.SSLContext` subclass to build instead (the proxy's resuming client context).

    Raises:
        TlsConfigError: the bundle is empty, or the SVID files cannot be loaded.
    """
    ctx = context_type(ssl.PROTOCOL_TLS_SERVER)
    _common(ctx, svid, bundle)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(
    svid: SvidFiles, bundle: TrustBundle, *, context_type: type[ssl.SSLContext] = ssl.SSLContext
) -> ssl.SSLContext:
    """An outbound (client) context: TLS 1.3 only, presents `svid`, verifies the server's chain.

    Host names are not checked (`check_hostname` is off): call `check_peer` with the identities the
    destination may run as once the handshake is done.

    Raises:
        TlsConfigError: the bundle is empty, or the SVID files cannot be loaded.
    """
    ctx = context_type(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    _common(ctx, svid, bundle)
    return ctx


def peer_spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> SpiffeId:
    """The SPIFFE ID in the verified peer certificate's one URI SAN.

    Raises:
        PeerIdentityError: no verified peer certificate, no URI SAN, several, or not a SPIFFE ID.
    """
    cert = ssl_object.getpeercert()
    if not cert:
        raise PeerIdentityError("the peer presented no verified certificate")
    uris = [
        str(entry[1])
        for entry in cert.get("subjectAltName", ())
        if isinstance(entry, tuple) and len(entry) == 2 and entry[0] == "URI"
    ]
    if len(uris) != 1:
        raise PeerIdentityError(
            f"the peer certificate has {len(uris)} URI SANs: an SVID has exactly one"
        )
    try:
        return SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise PeerIdentityError(f"the peer certificate is not an SVID: {exc}") from None


def check_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket, allowed: Iterable[str]) -> SpiffeId:
    """The peer's SPIFFE ID if it matches one of the `allowed` principal patterns (see `matches`).

    Raises:
        PeerIdentityError: the peer has no SPIFFE ID, or one that no pattern allows.
    """
    spiffe_id = peer_spiffe_id(ssl_object)
    patterns = list(allowed)
    if not any(matches(p, spiffe_id) for p in patterns):
        raise PeerIdentityError(
            f"peer {spiffe_id} is not allowed here (expected {', '.join(patterns) or 'nobody'})"
        )
    return spiffe_id


def _common(ctx: ssl.SSLContext, svid: SvidFiles, bundle: TrustBundle) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    # Only the mesh's roots: never the system store, which would trust any public CA.
    if not len(bundle):
        raise TlsConfigError("the trust bundle is empty: no peer could be verified")
    ctx.load_verify_locations(cadata=bundle.to_pem().decode("ascii"))
    try:
        ctx.load_cert_chain(svid.cert_chain, svid.key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"cannot load the SVID from {svid.cert_chain} and {svid.key}: "
            f"{getattr(exc, 'reason', None) or exc.strerror or exc}"
        ) from None
