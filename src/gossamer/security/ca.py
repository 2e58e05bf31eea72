"""The mesh certificate authority: a root (and optional intermediate) that signs workload SVIDs."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import secrets
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gossamer.security.bundle import issued_by, public_der
from gossamer.security.spiffe import SpiffeId, SpiffeIdError

log = logging.getLogger(__name__)

CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

DEFAULT_ROOT_VALIDITY = dt.timedelta(days=3650)
DEFAULT_INTERMEDIATE_VALIDITY = dt.timedelta(days=365)
DEFAULT_SVID_TTL = dt.timedelta(hours=24)
EXPIRY_WARNING = dt.timedelta(days=30)
# Leaves start a little in the past so that a peer whose clock is slightly behind accepts them.
CLOCK_SKEW = dt.timedelta(minutes=1)
MIN_RSA_BITS = 2048
_EC_CURVES = (ec.SECP256R1, ec.SECP384R1)


class CaError(Exception):
    """A CA certificate or key cannot be created or used; the message says which and why."""


class CsrError(Exception):
    """A certificate signing request is refused; the message says why."""


@dataclass(frozen=True, slots=True)
class Svid:
    """An issued X.509 SVID.

    Attributes:
        cert_pem: the leaf certificate.
        chain_pem: the intermediates between the leaf and a root (empty when a root signed it);
            a workload presents `cert_pem + chain_pem`.
    """

    spiffe_id: SpiffeId
    cert_pem: bytes
    chain_pem: bytes
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    # The SHA-256 fingerprint (hex) of the CA certificate that signed it: read from the signing
    # call itself, so it cannot name a CA that took over issuing in between.
    signer: str = ""


def utcnow() -> dt.datetime:
    """The wall clock as an aware UTC datetime (the default wherever a `now` can be injected)."""
    return dt.datetime.now(dt.UTC)


class CertificateAuthority:
    """A signing CA: its certificate and key, and the chain above it up to a root.

    Build one with `create_root`, `create_intermediate` or `load`. `warnings` lists what an operator
    should know (a certificate expiring within 30 days).
    """

    def __init__(
        self,
        cert: x509.Certificate,
        key: CaKey,
        trust_domain: str,
        parents: tuple[x509.Certificate, ...] = (),
        warnings: tuple[str, ...] = (),
    ) -> None:
        self.cert = cert
        self._key = key
        self.trust_domain = trust_domain
        # Issuers above `cert`, nearest first, ending with the root (empty when `cert` is the root).
        self.parents = parents
        self.warnings = warnings

    def __repr__(self) -> str:
        subject = _subject(self.cert)
        return f"CertificateAuthority(trust_domain={self.trust_domain!r}, subject={subject!r})"

    @classmethod
    def create_root(
        cls,
        trust_domain: str,
        *,
        validity: dt.timedelta = DEFAULT_ROOT_VALIDITY,
        path_length: int = 1,
        now: dt.datetime | None = None,
    ) -> CertificateAuthority:
        """A new self-signed ECDSA P-256 root for `trust_domain`.

        Args:
            path_length: how many intermediates may sit below it (1 allows `create_intermediate`).
        Raises:
            SpiffeIdError: `trust_domain` is not a valid trust domain name.
        """
        td = SpiffeId(trust_domain)
        now = now or utcnow()
        key = ec.generate_private_key(ec.SECP256R1())
        name = _ca_name(trust_domain, "Root CA")
        cert = _ca_builder(name, name, key, td, now, now + validity, path_length).sign(
            key, hashes.SHA256()
        )
        return cls(cert, key, trust_domain)

    def create_intermediate(
        self,
        *,
        validity: dt.timedelta = DEFAULT_INTERMEDIATE_VALIDITY,
        now: dt.datetime | None = None,
    ) -> CertificateAuthority:
        """A new ECDSA P-256 intermediate CA signed by this one (never outliving it).

        Raises:
            CaError: this CA's path length does not allow another CA below it.
        """
        basic = self.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if basic.path_length == 0:
            raise CaError(f"{_subject(self.cert)} has pathlen 0: it may not sign another CA")
        now = now or utcnow()
        key = ec.generate_private_key(ec.SECP256R1())
        td = SpiffeId(self.trust_domain)
        path_length = 0 if basic.path_length is None else basic.path_length - 1
        not_after = min(now + validity, self.cert.not_valid_after_utc)
        builder = _ca_builder(
            _ca_name(self.trust_domain, "Intermediate CA"),
            self.cert.subject,
            key,
            td,
            now,
            not_after,
            path_length,
        ).add_extension(_aki(self.cert), critical=False)
        cert = builder.sign(self._key, _signing_hash(self._key))
        return CertificateAuthority(cert, key, self.trust_domain, (self.cert, *self.parents))

    @classmethod
    def load(
        cls,
        cert_pem: bytes | str,
        key_pem: bytes | str,
        *,
        chain_pem: bytes | str = b"",
        trust_domain: str | None = None,
        now: dt.datetime | None = None,
        check_times: bool = True,
    ) -> CertificateAuthority:
        """Load a CA from PEM: a generated one, or an operator's own root or intermediate.

        Args:
            cert_pem: the CA certificate that will sign SVIDs.
            key_pem: its private key (unencrypted PKCS#8 or traditional PEM).
            chain_pem: for an intermediate, its issuers nearest first, ending with the root.
            trust_domain: taken from the certificate's `spiffe://<td>` URI SAN when left out.
            check_times: False loads a CA that is expired or not yet valid (with a warning
                instead of an error), so that a control plane whose CA expired still starts and
                can report it; `sign_csr` refuses to sign with it all the same.
        Raises:
            CaError: the certificate is not a CA, the key does not match, the chain does not link
                up to a self-signed root, something is expired or not yet valid, or the key is weak.
        """
        now = now or utcnow()
        cert = _load_cert(cert_pem, "CA certificate")
        key = _load_ca_key(key_pem)
        if _public_der(key.public_key()) != _public_der(cert.public_key()):
            raise CaError(f"the private key does not match the CA certificate {_subject(cert)}")
        # First, so that a leaf given by mistake is named as such, not as a broken chain.
        _check_is_ca(cert)
        parents = tuple(_load_certs(chain_pem, "CA chain"))
        chain = (cert, *parents)
        for child, parent in itertools.pairwise(chain):
            _check_is_ca(parent)
            if not issued_by(child, parent):
                raise CaError(f"{_subject(child)} is not signed by {_subject(parent)} in the chain")
        top = chain[-1]
        if not issued_by(top, top):
            what = "the chain" if parents else "the certificate"
            raise CaError(
                f"{what} does not end with a self-signed root: give the issuers up to the root "
                "in chain_pem"
            )
        warnings: list[str] = []
        for below, c in enumerate(chain):
            _check_is_ca(c)
            # `below` CAs sit under chain[below]; its pathlen must allow them all.
            limit = c.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
            if limit is not None and limit < below:
                raise CaError(f"{_subject(c)} has pathlen {limit} but {below} CAs sit below it")
            try:
                _check_valid_at(c, now)
            except CaError as exc:
                if check_times:
                    raise
                warnings.append(str(exc))
                continue
            left = c.not_valid_after_utc - now
            if left <= EXPIRY_WARNING:
                warnings.append(
                    f"CA certificate {_subject(c)} expires in {left.days} days "
                    f"({c.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
                )
        td = trust_domain or _trust_domain_of(cert)
        try:
            SpiffeId(td)
        except SpiffeIdError as exc:
            raise CaError(str(exc)) from None
        for warning in warnings:
            log.warning("%s", warning)
        return cls(cert, key, td, parents, tuple(warnings))

    @property
    def root(self) -> x509.Certificate:
        """The root at the top of this CA's chain (goes into the trust bundle)."""
        return self.parents[-1] if self.parents else self.cert

    def cert_pem(self) -> bytes:
        """This CA's certificate as PEM."""
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def chain_pem(self) -> bytes:
        """The issuers above this CA, nearest first, ending with the root (empty for a root)."""
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.parents)

    def private_key_pem(self) -> bytes:
        """The CA's private key as unencrypted PKCS#8 PEM, for the control plane's store only."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def issue_server_cert(
        self,
        public_key: LeafKey,
        spiffe_id: SpiffeId,
        names: list[x509.GeneralName],
        *,
        validity: dt.timedelta,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """A serving certificate for the mesh's own services (the control plane's API).

        Unlike a workload SVID (`sign_csr`, which refuses DNS and IP names), it carries
        `spiffe_id` and also the DNS/IP `names`, so ordinary HTTPS clients can verify it by host
        name; its EKU is serverAuth only. It never outlives any CA above it.

        Raises:
            CaError: this CA is expired or not yet valid at `now`.
        """
        now = now or utcnow()
        chain = (self.cert, *self.parents)
        for c in chain:
            _check_valid_at(c, now)
        not_after = min([now + validity, *(c.not_valid_after_utc for c in chain)])
        return (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gossamer control plane")])
            )
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(secrets.randbits(128) or 1)
            .not_valid_before(max(now - CLOCK_SKEW, self.cert.not_valid_before_utc))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(str(spiffe_id)), *names]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(_aki(self.cert), critical=False)
            .sign(self._key, _signing_hash(self._key))
        )

    def sign_csr(
        self,
        csr_pem: bytes | str,
        expected: SpiffeId,
        *,
        ttl: dt.timedelta = DEFAULT_SVID_TTL,
        now: dt.datetime | None = None,
    ) -> Svid:
        """Check a workload's CSR and sign it into an SVID for `expected`.

        The CSR must carry a valid self-signature, an EC P-256/P-384, Ed25519 or RSA >= 2048 key,
        and a subjectAltName with exactly one URI equal to `expected` and nothing else; it must not
        ask to be a CA. Its subject and any other requested extensions are ignored: the leaf gets
        only what this method sets.

        Args:
            expected: the identity the caller proved (bootstrap token or current SVID).
            ttl: the SVID's lifetime, cut short so it never outlives any CA above it.
        Raises:
            CsrError: the CSR is not acceptable, with the reason.
            CaError: this CA is expired or not yet valid at `now`.
        """
        now = now or utcnow()
        if expected.trust_domain != self.trust_domain:
            raise CsrError(f"{expected} is not in this CA's trust domain {self.trust_domain!r}")
        csr = _load_csr(csr_pem)
        requested = _requested_id(csr)
        if requested != expected:
            raise CsrError(f"CSR asks for {requested} but this caller is bound to {expected}")
        public_key = _check_leaf_key(csr.public_key())
        chain = (self.cert, *self.parents)
        for c in chain:
            _check_valid_at(c, now)
        if ttl <= dt.timedelta(0):
            raise CsrError(f"SVID lifetime must be positive, got {ttl}")
        not_before = max(now - CLOCK_SKEW, self.cert.not_valid_before_utc)
        not_after = min([now + ttl, *(c.not_valid_after_utc for c in chain)])
        serial = secrets.randbits(128) or 1
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            # RFC 5280 4.2.1.6: with an empty subject the SAN must be critical.
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(expected))]),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(_aki(self.cert), critical=False)
            .sign(self._key, _signing_hash(self._key))
        )
        intermediates = (self.cert, *self.parents[:-1]) if self.parents else ()
        return Svid(
            spiffe_id=expected,
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            chain_pem=b"".join(c.public_bytes(serialization.Encoding.PEM) for c in intermediates),
            serial=serial,
            not_before=not_before,
            not_after=not_after,
            signer=self.cert.fingerprint(hashes.SHA256()).hex(),
        )


def _ca_name(trust_domain: str, role: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Gossamer {role}"),
        ]
    )


def _ca_builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    td: SpiffeId,
    not_before: dt.datetime,
    not_after: dt.datetime,
    path_length: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(secrets.randbits(128) or 1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(td))]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _key_usage(*, digital_signature: bool = False, key_cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        pass
    try:
        key = _check_leaf_key(issuer.public_key())
    except CsrError as exc:
        raise CaError(f"issuer {_subject(issuer)}: {exc}") from None
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(key)


def _signing_hash(key: CaKey) -> hashes.SHA256 | hashes.SHA384 | None:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1):
        return hashes.SHA384()
    return hashes.SHA256()


LeafKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


def _check_leaf_key(key: object) -> LeafKey:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, _EC_CURVES):
            raise CsrError(f"EC curve {key.curve.name} is not allowed: use P-256 or P-384")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise CsrError(f"RSA key of {key.key_size} bits is too weak: at least {MIN_RSA_BITS}")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise CsrError(f"{type(key).__name__} keys are not allowed: use EC P-256/P-384 or Ed25519")


def _load_csr(csr_pem: bytes | str) -> x509.CertificateSigningRequest:
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CsrError("not a PEM certificate signing request") from None
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm, InvalidSignature):
        valid = False
    if not valid:
        raise CsrError("the CSR's signature does not verify with its own public key")
    return csr


def _requested_id(csr: x509.CertificateSigningRequest) -> SpiffeId:
    try:
        extensions = csr.extensions
    except ValueError as exc:
        raise CsrError(f"the CSR has a malformed extension: {exc}") from None
    try:
        basic = extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        basic = None
    if basic is not None and basic.ca:
        raise CsrError("the CSR asks to be a CA (basicConstraints CA:TRUE): refused")
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CsrError("the CSR has no subjectAltName: it must ask for one SPIFFE ID") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    others = [n for n in san if not isinstance(n, x509.UniformResourceIdentifier)]
    if others:
        kinds = ", ".join(sorted({_general_name_kind(n) for n in others}))
        raise CsrError(f"the CSR asks for {kinds} names besides its SPIFFE ID: refused")
    if len(uris) != 1:
        raise CsrError(f"the CSR asks for {len(uris)} URI SANs: it must ask for exactly one")
    try:
        return SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise CsrError(str(exc)) from None


def _general_name_kind(name: x509.GeneralName) -> str:
    kinds: dict[type, str] = {
        x509.DNSName: "DNS",
        x509.IPAddress: "IP",
        x509.RFC822Name: "email",
        x509.DirectoryName: "directory",
        x509.RegisteredID: "registered-ID",
        x509.OtherName: "other",
    }
    return kinds.get(type(name), type(name).__name__)


def _load_cert(pem: bytes | str, what: str) -> x509.Certificate:
    certs = _load_certs(pem, what)
    if len(certs) != 1:
        raise CaError(f"{what}: expected one PEM certificate, found {len(certs)}")
    return certs[0]


def _load_certs(pem: bytes | str, what: str) -> list[x509.Certificate]:
    data = pem.encode() if isinstance(pem, str) else pem
    if not data.strip():
        return []
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CaError(f"{what}: not PEM certificates") from None


def _load_ca_key(pem: bytes | str) -> CaKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CaError("the CA private key is encrypted: give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise CaError("the CA private key is not a PEM private key") from None
    if isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        try:
            _check_leaf_key(key.public_key())
        except CsrError as exc:
            raise CaError(f"CA key: {exc}") from None
        return key
    raise CaError(f"{type(key).__name__} CA keys are not supported: use EC, Ed25519 or RSA")


def _check_is_ca(cert: x509.Certificate) -> None:
    try:
        basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CaError(f"{_subject(cert)} is not a CA: it has no basicConstraints") from None
    if not basic.ca:
        raise CaError(f"{_subject(cert)} is not a CA: basicConstraints CA:FALSE")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        # RFC 5280 4.2.1.3: a CA that signs certificates MUST carry keyUsage (verifiers insist).
        raise CaError(f"{_subject(cert)} is not a usable CA: it has no keyUsage") from None
    if not usage.key_cert_sign:
        raise CaError(f"{_subject(cert)} is not a CA: its keyUsage lacks keyCertSign")


def _check_valid_at(cert: x509.Certificate, now: dt.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise CaError(
            f"CA certificate {_subject(cert)} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
    if now > cert.not_valid_after_utc:
        raise CaError(
            f"CA certificate {_subject(cert)} expired at "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
        )


def trust_domain_of(cert: x509.Certificate, *, bare: bool = False) -> str | None:
    """The trust domain a CA certificate names in a `spiffe://<td>` URI SAN, None if none.

    With `bare`, only a SPIFFE ID without a path (the trust domain itself) counts."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        san = None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier) if san else []:
        try:
            spiffe_id = SpiffeId.parse(uri)
        except SpiffeIdError:
            continue
        if not (bare and spiffe_id.path):
            return spiffe_id.trust_domain
    return None


def subject_of(cert: x509.Certificate) -> str:
    """A certificate's subject as RFC 4514 text, for messages."""
    return _subject(cert)


def _trust_domain_of(cert: x509.Certificate) -> str:
    td = trust_domain_of(cert)
    if td is not None:
        return td
    raise CaError(
        f"{_subject(cert)} has no spiffe://<trust-domain> URI SAN: give the trust domain explicitly"
    )


def _public_der(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise CaError(f"unsupported public key type {type(key).__name__}")
    return public_der(key)


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"
