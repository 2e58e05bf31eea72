"""The mesh CA: roots, intermediates, loading operators' CAs, and signing workload CSRs."""

from __future__ import annotations

import base64
import datetime as dt
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer.security.bundle import TrustBundle, verify_chain
from gossamer.security.ca import CaError, CertificateAuthority, CsrError
from gossamer.security.csr import generate_key, make_csr
from gossamer.security.spiffe import SpiffeId

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
PRICING = SpiffeId.workload("gossamer.local", "default", "pricing")
FRONTEND = SpiffeId.workload("gossamer.local", "default", "frontend")


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _csr(key: object, names: list[x509.GeneralName], *, ca: bool = False) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "w")])
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def test_root_has_the_ca_profile(root_ca: CertificateAuthority) -> None:
    cert = root_ca.cert
    assert cert.issuer == cert.subject
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 1
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert not usage.digital_signature
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://gossamer.local"]
    assert cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime == dt.timedelta(days=3650)
    assert root_ca.root is cert
    assert root_ca.chain_pem() == b""


def test_root_validity_is_configurable_and_trust_domain_checked() -> None:
    ca = CertificateAuthority.create_root("prod.example", validity=dt.timedelta(days=30))
    assert ca.cert.not_valid_after_utc - ca.cert.not_valid_before_utc == dt.timedelta(days=30)
    with pytest.raises(ValueError, match="has 'P'"):
        CertificateAuthority.create_root("Prod")


def test_intermediate_is_signed_by_root(
    root_ca: CertificateAuthority, inter_ca: CertificateAuthority
) -> None:
    inter = inter_ca.cert
    inter.verify_directly_issued_by(root_ca.cert)
    assert inter.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    aki = inter.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = root_ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert inter_ca.root is root_ca.cert
    assert inter_ca.chain_pem() == root_ca.cert_pem()
    with pytest.raises(CaError, match="pathlen 0: it may not sign another CA"):
        inter_ca.create_intermediate()


def test_sign_csr_makes_an_svid(inter_ca: CertificateAuthority) -> None:
    now = dt.datetime.now(dt.UTC)
    key = generate_key()
    svid = inter_ca.sign_csr(make_csr(key, PRICING), PRICING, now=now)
    leaf = x509.load_pem_x509_certificate(svid.cert_pem)
    assert leaf.public_key() == key.public_key()
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert list(san.value) == [x509.UniformResourceIdentifier(str(PRICING))]
    assert leaf.subject == x509.Name([])
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert not usage.key_encipherment
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc == (now + dt.timedelta(hours=24)).replace(microsecond=0)
    assert leaf.not_valid_before_utc <= now
    assert 0 < leaf.serial_number < 2**128
    assert svid.serial == leaf.serial_number
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = inter_ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert svid.chain_pem == inter_ca.cert_pem()
    bundle = TrustBundle([inter_ca.root])
    assert verify_chain(svid.cert_pem, [svid.chain_pem], bundle, now) == PRICING


def test_svid_lifetime_is_configurable_and_capped_by_the_issuer(
    root_ca: CertificateAuthority,
) -> None:
    now = dt.datetime.now(dt.UTC)
    short_inter = root_ca.create_intermediate(validity=dt.timedelta(hours=2), now=now)
    key = generate_key()
    one_hour = short_inter.sign_csr(make_csr(key, PRICING), PRICING, ttl=dt.timedelta(hours=1))
    assert one_hour.not_after - one_hour.not_before <= dt.timedelta(hours=1, minutes=1)
    capped = short_inter.sign_csr(make_csr(key, PRICING), PRICING, ttl=dt.timedelta(days=3))
    assert capped.not_after == short_inter.cert.not_valid_after_utc
    serials = {short_inter.sign_csr(make_csr(key, PRICING), PRICING).serial for _ in range(5)}
    assert len(serials) == 5


@pytest.mark.parametrize(
    "key",
    [ec.generate_private_key(ec.SECP384R1()), ed25519.Ed25519PrivateKey.generate()],
    ids=["p384", "ed25519"],
)
def test_other_allowed_key_types(root_ca: CertificateAuthority, key: object) -> None:
    svid = root_ca.sign_csr(_csr(key, [x509.UniformResourceIdentifier(str(PRICING))]), PRICING)
    assert verify_chain(svid.cert_pem, [], TrustBundle([root_ca.cert])) == PRICING


_P256 = ec.generate_private_key(ec.SECP256R1())
_URI = x509.UniformResourceIdentifier(str(PRICING))


def _bad_signature_csr() -> bytes:
    der = bytearray(
        x509.load_pem_x509_csr(make_csr(_P256, PRICING)).public_bytes(serialization.Encoding.DER)
    )
    der[-5] ^= 0x01  # inside the signature value
    csr = x509.load_der_x509_csr(bytes(der))
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        (b"garbage", "not a PEM certificate signing request"),
        ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
         "not a PEM certificate signing request"),
        (make_csr(_P256, FRONTEND),
         "CSR asks for spiffe://gossamer.local/ns/default/sa/frontend but this caller is bound to "
         "spiffe://gossamer.local/ns/default/sa/pricing"),
        (_csr(_P256, [x509.UniformResourceIdentifier(str(PRICING)), x509.DNSName("pricing")]),
         "asks for DNS names besides its SPIFFE ID"),
        (_csr(_P256, [x509.UniformResourceIdentifier(str(PRICING))], ca=True),
         "asks to be a CA"),
        (_csr(_P256, []), "has no subjectAltName"),
        (_csr(_P256, [x509.UniformResourceIdentifier(str(PRICING))] * 2),
         "asks for 2 URI SANs"),
        (_csr(_P256, [x509.UniformResourceIdentifier("https://pricing")]),
         "must start with 'spiffe://'"),
        (_csr(rsa.generate_private_key(65537, 1024), [_URI]), "RSA key of 1024 bits is too weak"),
        (_csr(ec.generate_private_key(ec.SECP256K1()), [_URI]),
         "EC curve secp256k1 is not allowed"),
        (_bad_signature_csr(), "signature does not verify"),
    ],
    ids=["garbage", "bad-base64", "wrong-identity", "dns-san", "ca-bit", "no-san", "two-uris",
         "not-spiffe", "rsa-1024", "secp256k1", "bad-signature"],
)  # fmt: skip
def test_bad_csrs_are_refused_clearly(
    inter_ca: CertificateAuthority, csr: bytes | str, message: str
) -> None:
    with pytest.raises(CsrError) as info:
        inter_ca.sign_csr(csr, PRICING)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_rsa_2048_is_accepted(root_ca: CertificateAuthority) -> None:
    key = rsa.generate_private_key(65537, 2048)
    svid = root_ca.sign_csr(_csr(key, [x509.UniformResourceIdentifier(str(PRICING))]), PRICING)
    assert verify_chain(svid.cert_pem, [], TrustBundle([root_ca.cert])) == PRICING


def test_other_trust_domain_is_refused(root_ca: CertificateAuthority) -> None:
    other = SpiffeId.workload("other.local", "default", "pricing")
    with pytest.raises(CsrError, match=r"not in this CA's trust domain 'gossamer\.local'"):
        root_ca.sign_csr(make_csr(_P256, other), other)


def test_expired_ca_does_not_sign(root_ca: CertificateAuthority) -> None:
    later = root_ca.cert.not_valid_after_utc + dt.timedelta(seconds=1)
    with pytest.raises(CaError, match="expired at"):
        root_ca.sign_csr(make_csr(_P256, PRICING), PRICING, now=later)


def test_load_root_and_intermediate_round_trip(
    root_ca: CertificateAuthority, inter_ca: CertificateAuthority
) -> None:
    root = CertificateAuthority.load(root_ca.cert_pem(), root_ca.private_key_pem())
    assert root.trust_domain == "gossamer.local"
    assert root.warnings == ()
    inter = CertificateAuthority.load(
        inter_ca.cert_pem(), inter_ca.private_key_pem(), chain_pem=inter_ca.chain_pem()
    )
    assert inter.root == root_ca.cert
    svid = inter.sign_csr(make_csr(_P256, PRICING), PRICING)
    assert verify_chain(svid.cert_pem, [svid.chain_pem], TrustBundle([root.cert])) == PRICING


def _own_root(
    *, key: object, days: int, ca: bool = True, san: bool = False, key_usage: bool = True
) -> tuple[bytes, bytes]:
    """An operator's own root, made the way openssl would (no SPIFFE SAN unless asked)."""
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Corp Root")])
    public = key.public_key()  # type: ignore[attr-defined]
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, ca, ca, False, False), critical=True
        )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://corp.example")]),
            critical=False,
        )
    cert = builder.sign(key, hashes.SHA256())  # type: ignore[arg-type]
    key_pem = key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return _pem(cert), key_pem


def test_bring_your_own_rsa_root() -> None:
    key = rsa.generate_private_key(65537, 2048)
    cert_pem, key_pem = _own_root(key=key, days=400)
    with pytest.raises(CaError, match="no spiffe://<trust-domain> URI SAN"):
        CertificateAuthority.load(cert_pem, key_pem)
    ca = CertificateAuthority.load(cert_pem, key_pem, trust_domain="corp.example")
    workload = SpiffeId.workload("corp.example", "default", "pricing")
    svid = ca.sign_csr(make_csr(_P256, workload), workload)
    assert verify_chain(svid.cert_pem, [], TrustBundle([ca.cert])) == workload


def test_loading_warns_within_30_days_of_expiry(caplog: pytest.LogCaptureFixture) -> None:
    cert_pem, key_pem = _own_root(key=generate_key(), days=10, san=True)
    with caplog.at_level(logging.WARNING, logger="gossamer.security.ca"):
        ca = CertificateAuthority.load(cert_pem, key_pem)
    assert [r.getMessage() for r in caplog.records] == list(ca.warnings)
    assert ca.trust_domain == "corp.example"
    assert len(ca.warnings) == 1
    assert "expires in 9 days" in ca.warnings[0]


def test_load_refusals(root_ca: CertificateAuthority, inter_ca: CertificateAuthority) -> None:
    other_key = generate_key()
    other_key_pem = other_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(CaError, match="private key does not match the CA certificate"):
        CertificateAuthority.load(root_ca.cert_pem(), other_key_pem)
    with pytest.raises(CaError, match="does not end with a self-signed root"):
        CertificateAuthority.load(inter_ca.cert_pem(), inter_ca.private_key_pem())
    with pytest.raises(CaError, match="not PEM certificates"):
        CertificateAuthority.load(b"nope", root_ca.private_key_pem())
    with pytest.raises(CaError, match="not a PEM private key"):
        CertificateAuthority.load(root_ca.cert_pem(), b"nope")
    encrypted = other_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(CaError, match="encrypted"):
        CertificateAuthority.load(root_ca.cert_pem(), encrypted)
    leaf_key = generate_key()
    leaf_pem, leaf_key_pem = _own_root(key=leaf_key, days=10, ca=False, san=True)
    with pytest.raises(CaError, match="is not a CA: basicConstraints CA:FALSE"):
        CertificateAuthority.load(leaf_pem, leaf_key_pem)
    no_usage_pem, no_usage_key = _own_root(key=generate_key(), days=10, san=True, key_usage=False)
    with pytest.raises(CaError, match="has no keyUsage"):
        CertificateAuthority.load(no_usage_pem, no_usage_key)
    expired = root_ca.cert.not_valid_after_utc + dt.timedelta(days=1)
    with pytest.raises(CaError, match="expired at"):
        CertificateAuthority.load(root_ca.cert_pem(), root_ca.private_key_pem(), now=expired)
    early = root_ca.cert.not_valid_before_utc - dt.timedelta(days=1)
    with pytest.raises(CaError, match="is not valid before"):
        CertificateAuthority.load(root_ca.cert_pem(), root_ca.private_key_pem(), now=early)


def test_private_key_not_in_repr(root_ca: CertificateAuthority) -> None:
    assert "PRIVATE" not in repr(root_ca)
    assert "gossamer.local" in repr(root_ca)


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *args], capture_output=True, text=True, timeout=20, check=False)


@needs_openssl
def test_openssl_verifies_and_reads_the_svid(
    tmp_path: Path, root_ca: CertificateAuthority, inter_ca: CertificateAuthority
) -> None:
    svid = inter_ca.sign_csr(make_csr(_P256, PRICING), PRICING)
    (tmp_path / "root.pem").write_bytes(root_ca.cert_pem())
    (tmp_path / "inter.pem").write_bytes(inter_ca.cert_pem())
    (tmp_path / "leaf.pem").write_bytes(svid.cert_pem)
    ok = _openssl(
        "verify", "-x509_strict", "-purpose", "sslclient", "-CAfile", str(tmp_path / "root.pem"),
        "-untrusted", str(tmp_path / "inter.pem"), str(tmp_path / "leaf.pem"),
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().endswith(": OK")
    text = _openssl("x509", "-noout", "-text", "-in", str(tmp_path / "leaf.pem"))
    assert f"URI:{PRICING}" in text.stdout
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text.stdout
    missing = _openssl("verify", "-CAfile", str(tmp_path / "root.pem"), str(tmp_path / "leaf.pem"))
    assert missing.returncode != 0
    assert "unable to get local issuer certificate" in missing.stdout + missing.stderr


@settings(max_examples=60, deadline=None)
@given(body=st.binary(max_size=300))
def test_arbitrary_csr_bytes_only_ever_give_csr_error(body: bytes) -> None:
    """Garbage inside PEM armour (or none) is a CsrError, never another exception."""
    ca = _FUZZ_CA
    armoured = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(body)
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    for data in (body, armoured):
        with pytest.raises(CsrError):
            ca.sign_csr(data, PRICING)


_FUZZ_CA = CertificateAuthority.create_root("gossamer.local")
