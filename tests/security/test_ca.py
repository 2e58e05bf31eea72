"""The CA additions for the control plane's lifecycle: lenient loading, serving certs, names."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from gossamer.security.ca import CaError, CertificateAuthority, subject_of, trust_domain_of
from gossamer.security.csr import generate_key, make_csr, private_key_pem
from gossamer.security.spiffe import SpiffeId

NOW = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.UTC)
CP = SpiffeId.workload("gossamer.local", "gossamer-system", "control-plane")


def test_an_expired_ca_loads_only_when_asked_and_says_so() -> None:
    old = CertificateAuthority.create_root(
        "gossamer.local", validity=dt.timedelta(days=10), now=NOW - dt.timedelta(days=20)
    )
    with pytest.raises(CaError, match="expired at"):
        CertificateAuthority.load(old.cert_pem(), old.private_key_pem(), now=NOW)
    loaded = CertificateAuthority.load(
        old.cert_pem(), old.private_key_pem(), now=NOW, check_times=False
    )
    assert any("expired at" in w for w in loaded.warnings)
    # It still refuses to sign: an expired CA issues nothing.
    pricing = SpiffeId.workload("gossamer.local", "default", "pricing")
    with pytest.raises(CaError, match="expired at"):
        loaded.sign_csr(make_csr(generate_key(), pricing), pricing, now=NOW)


def test_a_leaf_given_as_a_ca_is_named_as_such() -> None:
    root = CertificateAuthority.create_root("gossamer.local", now=NOW)
    key = generate_key()
    pricing = SpiffeId.workload("gossamer.local", "default", "pricing")
    svid = root.sign_csr(make_csr(key, pricing), pricing, now=NOW)
    with pytest.raises(CaError, match="is not a CA: basicConstraints CA:FALSE"):
        CertificateAuthority.load(svid.cert_pem, private_key_pem(key), now=NOW)


def test_serving_cert_names_and_lifetime() -> None:
    root = CertificateAuthority.create_root(
        "gossamer.local", validity=dt.timedelta(days=5), now=NOW
    )
    inter = root.create_intermediate(now=NOW)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    cert = inter.issue_server_cert(
        key.public_key(), CP, names, validity=dt.timedelta(days=365), now=NOW
    )
    # Never outlives the CAs above it.
    assert cert.not_valid_after_utc == root.cert.not_valid_after_utc
    assert cert.issuer == inter.cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [str(CP)]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    with pytest.raises(CaError, match="expired at"):
        inter.issue_server_cert(
            key.public_key(),
            CP,
            names,
            validity=dt.timedelta(days=1),
            now=NOW + dt.timedelta(days=9),
        )


def test_trust_domain_and_subject_of_a_ca() -> None:
    root = CertificateAuthority.create_root("example.org", now=NOW)
    assert trust_domain_of(root.cert) == "example.org"
    assert subject_of(root.cert) == "CN=Gossamer Root CA,O=example.org"
    svid_less = root.sign_csr(
        make_csr(generate_key(), SpiffeId.workload("example.org", "a", "b")),
        SpiffeId.workload("example.org", "a", "b"),
        now=NOW,
    )
    leaf = x509.load_pem_x509_certificate(svid_less.cert_pem)
    assert trust_domain_of(leaf) == "example.org"
