"""Certificates for the mTLS mesh-path targets: one mesh root, an SVID per side, files on disk.

The same root and keys serve every target (Gossamer, Envoy, nginx), so they all do the same
cryptography: ECDSA P-256 leaves under an ECDSA P-256 root, TLS 1.3. The leaves carry the SPIFFE
ID as a URI SAN (what Gossamer and Envoy check) and a DNS name (what nginx can check).
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "bench.local"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/bench"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/default/sa/backend"
SERVER_DNS = "backend.bench.local"


@dataclass(frozen=True)
class Leaf:
    cert: Path  # the leaf, then nothing (the root signs it directly)
    key: Path
    spiffe_id: str


@dataclass(frozen=True)
class MeshCerts:
    bundle: Path
    client: Leaf  # the calling side (sidecar A)
    server: Leaf  # the called side (sidecar B)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def write_mesh_certs(workdir: Path) -> MeshCerts:
    """A root and two leaves under `workdir/certs` (keys 0600)."""
    out = workdir / "certs"
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench mesh root")])
    root = (
        x509.CertificateBuilder()
        .subject_name(root_name)
        .issuer_name(root_name)
        .public_key(root_key.public_key())
        .serial_number(secrets.randbits(64) or 1)
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(ca=True), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(f"spiffe://{TRUST_DOMAIN}")]
            ),
            critical=False,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False
        )
        .sign(root_key, hashes.SHA256())
    )
    bundle = _write(out / "bundle.pem", root.public_bytes(serialization.Encoding.PEM))

    def leaf(name: str, spiffe_id: str, dns: str | None) -> Leaf:
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
        if dns is not None:
            names.append(x509.DNSName(dns))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(root_name)
            .public_key(key.public_key())
            .serial_number(secrets.randbits(64) or 1)
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(ca=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()),
                critical=False,
            )
            .sign(root_key, hashes.SHA256())
        )
        return Leaf(
            _write(out / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM)),
            _write(out / f"{name}-key.pem", _pem_key(key), 0o600),
            spiffe_id,
        )

    return MeshCerts(bundle, leaf("client", CLIENT_ID, None), leaf("server", SERVER_ID, SERVER_DNS))


def _usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
