"""uvicorn's HTTP protocol that puts each TLS connection's verified client SVID in the scope."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ssl
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gossamer.security.bundle import TrustBundle, VerifyError, fingerprint, issued_by, verify_chain
from gossamer.security.ca import CertificateAuthority

# Our own scope keys (ASGI allows extra keys): the peer's verified SPIFFE ID (a string), why a
# certificate the peer presented is refused, and the verified leaf's facts (a `LeafFacts`).
PEER_KEY = "gossamer.peer_spiffe_id"
PEER_ERROR_KEY = "gossamer.peer_error"
PEER_SVID_KEY = "gossamer.peer_svid"
_CACHE_LIMIT = 4096
# A refused leaf is checked again after this long: what refused it (a CA not loaded yet, a
# clock step) may change, and a proxy must not stay locked out for its SVID's whole life.
FAILURE_TTL = 5.0
# The ASGI TLS extension names versions by their wire numbers.
_TLS_VERSIONS = {"TLSv1.3": 0x0304, "TLSv1.2": 0x0303}


@dataclass(frozen=True, slots=True)
class LeafFacts:
    """What a verified client SVID says, read once per connection from the certificate itself
    (never from what the client claims in a request body)."""

    spiffe_id: str
    serial: str  # hex
    not_after: float  # unix seconds
    signer: str  # SHA-256 fingerprint (hex) of the CA certificate that signed it


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What one TLS connection's client certificate proved."""

    leaf_pem: str | None  # None: the client presented no certificate
    spiffe_id: str | None  # None: no certificate, or it does not verify against the current bundle
    error: str | None
    tls_version: str | None
    cipher: str | None
    facts: LeafFacts | None = None


class TrustSource(Protocol):
    """Where the checker reads the mesh's trust as it is now (`MeshCa` is one)."""

    def bundle(self) -> TrustBundle: ...

    def authorities(self) -> list[CertificateAuthority]: ...

    def trusted_issuers(self) -> Collection[str]:
        """The fingerprints of every CA certificate in use (each CA and its chain); cheap."""
        ...


class PeerChecker:
    """Verifies client leaf certificates against the CURRENT trust of the mesh.

    The handshake verified the chain against the roots loaded in the SSL context; roots can only be
    added to a context, never removed, so a leaf from a retired root would still pass there. This
    check, once per connection, is against the bundle as it is now, with the intermediates of
    EVERY trusted CA (Python gives the server only the client's leaf, and during a rotation away
    from an imported intermediate, the proxies' leaves still come from the old one). Successes are
    cached by (leaf, trusted CAs) until the leaf expires; failures only for `failure_ttl` seconds.
    """

    def __init__(self, trust: TrustSource, *, failure_ttl: float = FAILURE_TTL) -> None:
        self._trust = trust
        self._failure_ttl = failure_ttl
        self._cache: dict[tuple[bytes, frozenset[str]], tuple[LeafFacts | None, str | None, float]]
        self._cache = {}

    def check(self, leaf_der: bytes, now: float) -> tuple[LeafFacts | None, str | None]:
        """(facts, None) when the leaf verifies, else (None, reason). `now`: unix seconds."""
        issuers = frozenset(self._trust.trusted_issuers())
        key = (hashlib.sha256(leaf_der).digest(), issuers)
        hit = self._cache.get(key)
        if hit is not None and now < hit[2]:
            return hit[0], hit[1]
        try:
            leaf = x509.load_der_x509_certificate(leaf_der)
        except ValueError as exc:
            return None, f"the client certificate cannot be read: {exc}"
        facts: LeafFacts | None = None
        try:
            facts = self._verify(leaf, now)
            error = None
            until = facts.not_after
        except VerifyError as exc:
            error = str(exc)
            until = now + self._failure_ttl
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = (facts, error, until)
        return facts, error

    def recheck(self, facts: LeafFacts, now: float) -> str | None:
        """Why a leaf verified at connect is no longer good at `now` (None: it still is).

        Cheap, for every request on a kept-alive connection: its expiry, and whether the CA
        that signed it is still trusted (a retired root's leaves stop working at once).
        """
        if now >= facts.not_after:
            when = dt.datetime.fromtimestamp(facts.not_after, dt.UTC)
            return f"the certificate of {facts.spiffe_id} expired at {when:%Y-%m-%d %H:%M:%S} UTC"
        if facts.signer not in self._trust.trusted_issuers():
            return (
                f"the certificate of {facts.spiffe_id} is issued by CA {facts.signer[:16]}, "
                "which the mesh no longer trusts"
            )
        return None

    def _verify(self, leaf: x509.Certificate, now: float) -> LeafFacts:
        authorities = self._trust.authorities()
        intermediates: list[x509.Certificate] = []
        for ca in authorities:
            if ca.parents:
                intermediates += [ca.cert, *ca.parents]
        spiffe_id = verify_chain(
            leaf,
            intermediates,
            self._trust.bundle(),
            now=dt.datetime.fromtimestamp(now, dt.UTC),
        )
        return LeafFacts(
            spiffe_id=str(spiffe_id),
            serial=f"{leaf.serial_number:x}",
            not_after=leaf.not_valid_after_utc.timestamp(),
            signer=_signer_of(leaf, authorities),
        )


def _signer_of(leaf: x509.Certificate, authorities: Sequence[CertificateAuthority]) -> str:
    """The fingerprint of the CA certificate whose key signed `leaf` (it verified, so one did)."""
    for ca in authorities:
        for cert in (ca.cert, *ca.parents):
            if issued_by(leaf, cert):
                return fingerprint(cert)
    raise VerifyError("the certificate is not signed by any CA of the mesh")


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
    facts, error = checker.check(der, now)
    leaf_pem = ssl.DER_cert_to_PEM_cert(der)
    spiffe_id = facts.spiffe_id if facts is not None else None
    return PeerInfo(leaf_pem, spiffe_id, error, version, cipher[0] if cipher else None, facts)


def protocol_class(checker: PeerChecker, clock: Callable[[], float]) -> type[HttpToolsProtocol]:
    """An `HttpToolsProtocol` whose every request scope carries the connection's `PeerInfo`.

    Pass it as `http=` to `uvicorn.Config`. The scope gets the ASGI TLS extension
    (`scope["extensions"]["tls"]` with `client_cert_chain`: the leaf PEM, as the handshake showed
    it) and `scope[PEER_KEY]` / `scope[PEER_ERROR_KEY]` / `scope[PEER_SVID_KEY]`. The leaf is
    verified once per connection; each request re-checks only its expiry and its issuer's trust.
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
            spiffe_id, error, facts = peer.spiffe_id, peer.error, peer.facts
            if facts is not None:
                late = checker.recheck(facts, clock())
                if late is not None:
                    spiffe_id, error, facts = None, late, None
            if peer.tls_version is not None:
                scope["extensions"] = {
                    "tls": {
                        "server_cert": None,
                        "client_cert_chain": [peer.leaf_pem] if peer.leaf_pem else [],
                        "client_cert_name": None,
                        "client_cert_error": error,
                        "tls_version": _TLS_VERSIONS.get(peer.tls_version),
                        # Python's ssl names the suite but does not give its number.
                        "cipher_suite": None,
                    }
                }
            scope[PEER_KEY] = spiffe_id
            scope[PEER_ERROR_KEY] = error
            scope[PEER_SVID_KEY] = facts

    return PeerIdentityProtocol
