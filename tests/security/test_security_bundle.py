"""The trust bundle and verify_chain: what is accepted, and the message for each refusal."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from security_helpers import issue

from gossamer.security.bundle import (
    BundleError,
    TrustBundle,
    VerifyError,
    expires_within,
    fingerprint,
    issued_by,
    remaining,
    svid_spiffe_id,
    verify_chain,
)
from gossamer.security.ca import CertificateAuthority
from gossamer.security.csr import generate_key
from gossamer.security.spiffe import SpiffeId

PRICING = SpiffeId.workload("gossamer.local", "default", "pricing")


def test_pem_round_trip_and_dedup(root_ca: CertificateAuthority) -> None:
    other = CertificateAuthority.create_root("gossamer.local")
    bundle = TrustBundle.from_pem(root_ca.cert_pem() + other.cert_pem() + root_ca.cert_pem())
    assert len(bundle) == 2
    assert bundle.fingerprints() == [fingerprint(root_ca.cert), fingerprint(other.cert)]
    assert not bundle.add(other.cert)
    again = TrustBundle.from_pem(bundle.to_pem())
    assert again.fingerprints() == bundle.fingerprints()
    assert bundle.remove(fingerprint(other.cert).upper())
    assert not bundle.remove(fingerprint(other.cert))
    assert bundle.roots == (root_ca.cert,)


def test_bundle_refuses_non_ca_and_garbage(root_ca: CertificateAuthority) -> None:
    leaf = issue(root_ca, "pricing").svid.cert_pem
    with pytest.raises(BundleError, match="is not a CA certificate"):
        TrustBundle.from_pem(leaf)
    with pytest.raises(BundleError, match="not PEM certificates"):
        TrustBundle.from_pem(b"hello")


def test_verify_through_intermediate(inter_ca: CertificateAuthority) -> None:
    svid = issue(inter_ca, "pricing").svid
    bundle = TrustBundle([inter_ca.root], trust_domain="gossamer.local")
    assert verify_chain(svid.cert_pem, [svid.chain_pem], bundle) == PRICING
    with pytest.raises(VerifyError, match=r"unknown issuer"):
        verify_chain(svid.cert_pem, [], bundle)  # intermediate missing


def test_verify_chain_takes_parsed_certificates(inter_ca: CertificateAuthority) -> None:
    svid = issue(inter_ca, "pricing").svid
    leaf = x509.load_pem_x509_certificate(svid.cert_pem)
    bundle = TrustBundle([inter_ca.root], trust_domain="gossamer.local")
    assert verify_chain(leaf, [inter_ca.cert], bundle) == PRICING
    with pytest.raises(VerifyError, match=r"unknown issuer"):
        verify_chain(leaf, [], bundle)


def test_issued_by_names_only_the_signing_ca(
    root_ca: CertificateAuthority, inter_ca: CertificateAuthority
) -> None:
    leaf = x509.load_pem_x509_certificate(issue(inter_ca, "pricing").svid.cert_pem)
    assert issued_by(leaf, inter_ca.cert)
    assert issued_by(inter_ca.cert, root_ca.cert)
    assert issued_by(root_ca.cert, root_ca.cert)  # self-signed
    assert not issued_by(leaf, root_ca.cert)
    # Same name, another key: the key identifiers (or the signature) tell them apart.
    twin = CertificateAuthority.create_root("gossamer.local")
    assert twin.cert.subject == root_ca.cert.subject
    assert not issued_by(inter_ca.cert, twin.cert)


def test_expired_and_not_yet_valid(root_ca: CertificateAuthority) -> None:
    now = dt.datetime.now(dt.UTC)
    svid = issue(root_ca, "pricing", ttl=dt.timedelta(minutes=5), now=now).svid
    bundle = TrustBundle([root_ca.cert])
    assert verify_chain(svid.cert_pem, [], bundle, now + dt.timedelta(minutes=4)) == PRICING
    with pytest.raises(VerifyError) as info:
        verify_chain(svid.cert_pem, [], bundle, now + dt.timedelta(minutes=6))
    assert str(info.value).startswith(f"certificate of {PRICING} expired at ")
    with pytest.raises(VerifyError, match="is not yet valid: valid from"):
        verify_chain(svid.cert_pem, [], bundle, now - dt.timedelta(hours=1))


def test_unknown_issuer(root_ca: CertificateAuthority) -> None:
    stranger = CertificateAuthority.create_root("gossamer.local")  # same name, other key
    svid = issue(stranger, "pricing").svid
    with pytest.raises(VerifyError) as info:
        verify_chain(svid.cert_pem, [], TrustBundle([root_ca.cert]))
    assert str(info.value) == (
        f"certificate of {PRICING} does not verify: "
        "it is not issued by a CA in the trust bundle (unknown issuer)"
    )


def test_rotation_two_roots_both_accepted(root_ca: CertificateAuthority) -> None:
    new_root = CertificateAuthority.create_root("gossamer.local")
    bundle = TrustBundle([root_ca.cert, new_root.cert])
    old_svid = issue(root_ca, "pricing").svid
    new_svid = issue(new_root, "pricing").svid
    assert verify_chain(old_svid.cert_pem, [], bundle) == PRICING
    assert verify_chain(new_svid.cert_pem, [], bundle) == PRICING
    bundle.remove(fingerprint(root_ca.cert))  # the old root retires
    with pytest.raises(VerifyError, match="unknown issuer"):
        verify_chain(old_svid.cert_pem, [], bundle)


def _leaf(ca: CertificateAuthority, names: list[x509.GeneralName], *, is_ca: bool = False) -> bytes:
    """A certificate signed by `ca` that our CA would never issue (to test a hostile peer)."""
    from cryptography.hazmat.primitives import serialization

    key = generate_key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=True)
    ca_key = serialization.load_pem_private_key(ca.private_key_pem(), None)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("names", "is_ca", "message"),
    [
        ([], False, "not a SPIFFE SVID: the certificate has no subjectAltName"),
        ([x509.DNSName("pricing")], False, "not a SPIFFE SVID: the certificate has no URI SAN"),
        (
            [x509.UniformResourceIdentifier(str(PRICING))] * 2,
            False,
            "not a SPIFFE SVID: the certificate has 2 URI SANs, not one",
        ),
        (
            [x509.UniformResourceIdentifier("https://pricing")],
            False,
            "not a SPIFFE SVID: 'https://pricing' is not a SPIFFE ID",
        ),
        (
            [x509.UniformResourceIdentifier(str(PRICING))],
            True,
            "is a CA certificate, not a workload SVID",
        ),
        (
            [x509.UniformResourceIdentifier("spiffe://gossamer.local")],
            False,
            "names a trust domain, not a workload",
        ),
    ],
)
def test_not_an_svid(
    root_ca: CertificateAuthority, names: list[x509.GeneralName], is_ca: bool, message: str
) -> None:
    with pytest.raises(VerifyError) as info:
        verify_chain(_leaf(root_ca, names, is_ca=is_ca), [], TrustBundle([root_ca.cert]))
    assert message in str(info.value)


def test_leaf_without_eku_is_refused_by_path_validation(root_ca: CertificateAuthority) -> None:
    pem = _leaf(root_ca, [x509.UniformResourceIdentifier(str(PRICING))])
    with pytest.raises(VerifyError, match=f"certificate of {PRICING} does not verify: "):
        verify_chain(pem, [], TrustBundle([root_ca.cert]))


def test_other_refusals(root_ca: CertificateAuthority) -> None:
    svid = issue(root_ca, "pricing").svid
    with pytest.raises(VerifyError, match="trust bundle is empty"):
        verify_chain(svid.cert_pem, [], TrustBundle())
    with pytest.raises(VerifyError, match="peer certificate: not a PEM certificate"):
        verify_chain(b"garbage", [], TrustBundle([root_ca.cert]))
    with pytest.raises(VerifyError, match="expected one PEM certificate, found 2"):
        verify_chain(svid.cert_pem * 2, [], TrustBundle([root_ca.cert]))
    with pytest.raises(VerifyError, match=r"is not in trust domain 'prod\.example'"):
        verify_chain(svid.cert_pem, [], TrustBundle([root_ca.cert], trust_domain="prod.example"))
    assert svid_spiffe_id(x509.load_pem_x509_certificate(svid.cert_pem)) == PRICING


def test_expiry_helpers(root_ca: CertificateAuthority) -> None:
    cert = root_ca.cert
    soon = cert.not_valid_after_utc - dt.timedelta(days=20)
    assert expires_within(cert, 30, soon)
    assert not expires_within(cert, 10, soon)
    assert expires_within(cert, 0, cert.not_valid_after_utc + dt.timedelta(seconds=1))
    assert remaining(cert, soon) == dt.timedelta(days=20)
