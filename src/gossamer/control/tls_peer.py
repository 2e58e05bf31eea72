"""uvicorn's HTTP protocol that puts each TLS connection's verified client SVID in the scope."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gossamer.security.bundle import TrustBundle, VerifyError, verify_chain

# Our own scope keys (ASGI allows extra keys): the peer's verified SPIFFE ID (a string), or why a
# certificate the peer presented is refused.
PEER_KEY = "gossamer.peer_spiffe_id"
PEER_ERROR_KEY = "gossamer.peer_error"
_CACHE_LIMIT = 4096
# The ASGI TLS extension names versions by their wire numbers.
_TLS_VERSIONS = {"TLSv1.3": 0x0304, "TLSv1.2": 0x0303}


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What one TLS connection's client certificate proved."""

    leaf_pem: str | None  # None: the client presented no certificate
    spiffe_id: str | None  # None: no certificate, or it does not verify against the current bundle
    error: str | None
    tls_version: str | None
    cipher: str | None


BundleSource = Callable[[], TrustBundle]
ChainSource = Callable[[], Sequence[bytes]]


class PeerChecker:
    """Verifies client leaf certificates against the CURRENT trust bundle.

    The handshake verified the chain against the roots loaded in the SSL context; roots can only be
    added to a context, never removed, so a leaf from a retired root would still pass there. This
    check, once per connection, is against `bundle()` as it is now. Results are cached by (leaf,
    bundle) and the cache is bounded; an entry also holds the leaf's expiry, checked on each hit.
    """

    def __init__(self, bundle: BundleSource, intermediates: ChainSource) -> None:
        self._bundle = bundle
        self._intermediates = intermediates
        self._cache: dict[tuple[bytes, tuple[str, ...]], tuple[str | None, str | None, float]] = {}

    def check(self, leaf_der: bytes, now: float) -> tuple[str | None, str | None]:
        """(spiffe_id, None) when the leaf verifies, else (None, reason). `now`: unix seconds."""
        bundle = self._bundle()
        key = (hashlib.sha256(leaf_der).digest(), tuple(bundle.fingerprints()))
        hit = self._cache.get(key)
        if hit is not None and now < hit[2]:
            return hit[0], hit[1]
        try:
            leaf = x509.load_der_x509_certificate(leaf_der)
        except ValueError as exc:
            return None, f"the client certificate cannot be read: {exc}"
        expires = leaf.not_valid_after_utc.timestamp()
        try:
            spiffe_id: str | None = str(
                verify_chain(
                    leaf.public_bytes(Encoding.PEM),
                    list(self._intermediates()),
                    bundle,
                )
            )
            error = None
        except VerifyError as exc:
            spiffe_id, error = None, str(exc)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = (spiffe_id, error, expires)
        return spiffe_id, error


def peer_info(transport: asyncio.BaseTransport, checker: PeerChecker, now: float) -> PeerInfo:
    """The client-certificate facts of one connection (no TLS: all None)."""
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return PeerInfo(None, None, None, None, None)
    version = ssl_object.version()
    cipher = ssl_object.cipher()
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return PeerInfo(None, None, None, version, cipher[0] if cipher else None)
    spiffe_id, error = checker.check(der, now)
    leaf_pem = ssl.DER_cert_to_PEM_cert(der)
    return PeerInfo(leaf_pem, spiffe_id, error, version, cipher[0] if cipher else None)


def protocol_class(checker: PeerChecker, clock: Callable[[], float]) -> type[HttpToolsProtocol]:
    """An `HttpToolsProtocol` whose every request scope carries the connection's `PeerInfo`.

    Pass it as `http=` to `uvicorn.Config`. The scope gets the ASGI TLS extension
    (`scope["extensions"]["tls"]` with `client_cert_chain`: the leaf PEM, as the handshake showed
    it) and `scope[PEER_KEY]` / `scope[PEER_ERROR_KEY]`.
    """

    class PeerIdentityProtocol(HttpToolsProtocol):
        _peer: PeerInfo

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._peer = peer_info(transport, checker, clock())

        def on_message_begin(self) -> None:
            super().on_message_begin()
            peer = self._peer
            scope: dict[str, Any] = self.scope  # type: ignore[assignment]
            if peer.tls_version is not None:
                scope["extensions"] = {
                    "tls": {
                        "server_cert": None,
                        "client_cert_chain": [peer.leaf_pem] if peer.leaf_pem else [],
                        "client_cert_name": None,
                        "client_cert_error": peer.error,
                        "tls_version": _TLS_VERSIONS.get(peer.tls_version),
                        # Python's ssl names the suite but does not give its number.
                        "cipher_suite": None,
                    }
                }
            scope[PEER_KEY] = peer.spiffe_id
            scope[PEER_ERROR_KEY] = peer.error

    return PeerIdentityProtocol
