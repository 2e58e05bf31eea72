"""The trust bundle (the roots a mesh trusts) and verification of a peer's SVID chain against it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509 import verification

from gossamer.security.spiffe import SpiffeId, SpiffeIdError

# Root, intermediates, leaf; one more than the CA makes, for an operator's own deeper chain.
MAX_CHAIN_DEPTH = 4


class BundleError(Exception):
    """A trust bundle cannot be built from the given certificates; the message says why."""


class VerifyError(Exception):
    """A peer's certificate chain is not a valid SVID for this bundle; the message says why."""


def fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint of `cert`, lower-case hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether `ca` signed `cert`: the names match, the key identifiers (when both are there)
    match, and the signature verifies with `ca`'s key."""
    if cert.issuer != ca.subject:
        return False
    try:
        aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except (x509.ExtensionNotFound, ValueError):
        pass  # no (readable) key identifiers to compare: the signature decides
    else:
        if aki.key_identifier is not None and aki.key_identifier != ski.digest:
            return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        # A bad signature, a key type or algorithm that cannot sign certificates: "not this one".
        return False
    return True


def public_der(key: CertificatePublicKeyTypes) -> bytes:
    """A public key as DER SubjectPublicKeyInfo, to compare two keys."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class TrustBundle:
    """The root certificates of one trust domain; several during a root rotation.

    Roots are kept in the order they were added and deduplicated by fingerprint.
    """

    def __init__(self, roots: Iterable[x509.Certificate] = (), trust_domain: str | None = None):
        self.trust_domain = trust_domain
        self._roots: dict[str, x509.Certificate] = {}
        for root in roots:
            self.add(root)

    @classmethod
    def from_pem(cls, pem: bytes | str, trust_domain: str | None = None) -> TrustBundle:
        """A bundle from concatenated PEM certificates.

        Raises:
            BundleError: not PEM certificates, or one of them is not a CA.
        """
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            certs = x509.load_pem_x509_certificates(data)
        except ValueError:
            raise BundleError("trust bundle: not PEM certificates") from None
        return cls(certs, trust_domain)

    def add(self, root: x509.Certificate) -> bool:
        """Add a root; False when it was already there.

        Raises:
            BundleError: `root` is not a CA certificate.
        """
        try:
            basic = root.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            basic = None
        if basic is None or not basic.ca:
            subject = root.subject.rfc4514_string() or "(empty subject)"
            raise BundleError(f"{subject} is not a CA certificate: it cannot be a trust root")
        fp = fingerprint(root)
        if fp in self._roots:
            return False
        self._roots[fp] = root
        return True

    def remove(self, fp: str) -> bool:
        """Remove the root with SHA-256 fingerprint `fp`; False when there was none."""
        return self._roots.pop(fp.lower(), None) is not None

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        return tuple(self._roots.values())

    def fingerprints(self) -> list[str]:
        return list(self._roots)

    def to_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self._roots.values())

    def __len__(self) -> int:
        return len(self._roots)

    def __repr__(self) -> str:
        return f"TrustBundle(trust_domain={self.trust_domain!r}, roots={len(self._roots)})"


def verify_chain(
    leaf_pem: bytes | str | x509.Certificate,
    chain_pems: Sequence[bytes | str | x509.Certificate],
    bundle: TrustBundle,
    now: dt.datetime | None = None,
) -> SpiffeId:
    """Verify a peer's SVID against `bundle` and return its SPIFFE ID.

    Path validation (signatures, validity periods, CA constraints and path lengths, key usages,
    the clientAuth extended key usage) is cryptography's RFC 5280 verifier; this function adds the
    SPIFFE rules and clear messages.

    Args:
        leaf_pem: the peer's certificate (PEM, or already parsed).
        chain_pems: the intermediates it presented (each may hold several PEM certificates, or
            be a parsed one).
        now: the verification time, the wall clock by default.
    Raises:
        VerifyError: naming the problem (not PEM, not a SPIFFE SVID, several URI SANs, expired,
            not yet valid, issued by a CA the bundle does not trust, wrong trust domain, ...).
    """
    now = now or dt.datetime.now(dt.UTC)
    if not bundle.roots:
        raise VerifyError("the trust bundle is empty: no peer can be verified")
    leaf = _one_cert(leaf_pem)
    intermediates = [c for pem in chain_pems for c in _certs(pem, "peer chain")]
    spiffe_id = svid_spiffe_id(leaf)
    if bundle.trust_domain and spiffe_id.trust_domain != bundle.trust_domain:
        raise VerifyError(f"peer {spiffe_id} is not in trust domain {bundle.trust_domain!r}")
    for cert in (leaf, *intermediates):
        _check_times(cert, now)
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store(list(bundle.roots)))
        .time(now)
        .max_chain_depth(MAX_CHAIN_DEPTH)
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, intermediates)
    except verification.VerificationError as exc:
        raise VerifyError(f"certificate of {spiffe_id} does not verify: {_explain(exc)}") from None
    return spiffe_id


def svid_spiffe_id(cert: x509.Certificate) -> SpiffeId:
    """The SPIFFE ID of an X.509 SVID: its one URI SAN, in a leaf (not CA) certificate.

    Raises:
        VerifyError: no SAN, not exactly one URI SAN, not a SPIFFE ID, or a CA certificate.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise VerifyError("not a SPIFFE SVID: the certificate has no subjectAltName") from None
    except ValueError as exc:
        raise VerifyError(f"malformed certificate extension: {exc}") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if not uris:
        raise VerifyError("not a SPIFFE SVID: the certificate has no URI SAN")
    if len(uris) > 1:
        raise VerifyError(f"not a SPIFFE SVID: the certificate has {len(uris)} URI SANs, not one")
    try:
        spiffe_id = SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise VerifyError(f"not a SPIFFE SVID: {exc}") from None
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is not None and basic.ca:
        raise VerifyError(f"{spiffe_id} is a CA certificate, not a workload SVID")
    if not spiffe_id.path:
        raise VerifyError(f"{spiffe_id} names a trust domain, not a workload")
    return spiffe_id


def expires_within(cert: x509.Certificate, days: float, now: dt.datetime) -> bool:
    """Whether `cert` expires (or has already expired) within `days` days of `now`."""
    return cert.not_valid_after_utc <= now + dt.timedelta(days=days)


def remaining(cert: x509.Certificate, now: dt.datetime) -> dt.timedelta:
    """How long `cert` stays valid after `now` (negative once expired)."""
    return cert.not_valid_after_utc - now


def past_half_life(not_after: dt.datetime, lifetime: dt.timedelta, now: dt.datetime) -> bool:
    """Whether a certificate issued for `lifetime` and expiring at `not_after` has less than half
    of it left at `now`: a proxy renews its SVID at half-life, so one past it is overdue."""
    return not_after - now < lifetime / 2


def describe_remaining(left: dt.timedelta) -> str:
    """`remaining(...)` for people: "12d 4h", "3h 20m", "45s", or "expired 2d 1h ago"."""
    seconds = int(left.total_seconds())
    if seconds < 0:
        return f"expired {describe_remaining(-left)} ago"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def _check_times(cert: x509.Certificate, now: dt.datetime) -> None:
    who = _describe(cert)
    if now < cert.not_valid_before_utc:
        raise VerifyError(
            f"{who} is not yet valid: valid from {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    if now > cert.not_valid_after_utc:
        raise VerifyError(f"{who} expired at {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")


def _describe(cert: x509.Certificate) -> str:
    try:
        return f"certificate of {svid_spiffe_id(cert)}"
    except VerifyError:
        return f"certificate {cert.subject.rfc4514_string() or '(empty subject)'}"


def _explain(exc: verification.VerificationError) -> str:
    # cryptography's messages look like "validation failed: candidates exhausted: <reason>
    # (encountered processing <Certificate ...>)"; keep only the reason.
    reason = str(exc).removeprefix("validation failed: ").split(" (encountered processing")[0]
    reason = reason.removeprefix("candidates exhausted: ")
    if "no interior errors" in reason or reason == "signature does not match":
        return "it is not issued by a CA in the trust bundle (unknown issuer)"
    return reason


def _one_cert(pem: bytes | str | x509.Certificate) -> x509.Certificate:
    certs = _certs(pem, "peer certificate")
    if len(certs) != 1:
        raise VerifyError(f"peer certificate: expected one PEM certificate, found {len(certs)}")
    return certs[0]


def _certs(pem: bytes | str | x509.Certificate, what: str) -> list[x509.Certificate]:
    if isinstance(pem, x509.Certificate):
        return [pem]
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise VerifyError(f"{what}: not a PEM certificate") from None
