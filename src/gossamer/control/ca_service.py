"""The mesh CA inside the control plane: its root kept across restarts, SVIDs and the API's cert."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gossamer.control.client import CA_BUNDLE_FILE
from gossamer.control.distribute import Distributor, Trust
from gossamer.control.registry import Registry
from gossamer.control.store.base import Store
from gossamer.security.bundle import TrustBundle, fingerprint
from gossamer.security.ca import (
    CLOCK_SKEW,
    DEFAULT_SVID_TTL,
    CaError,
    CertificateAuthority,
    Svid,
    utcnow,
)
from gossamer.security.csr import (
    KeyFileError,
    private_key_pem,
    read_private_key,
    write_file_atomic,
    write_private_file,
)
from gossamer.security.spiffe import SpiffeId

log = logging.getLogger("gossamer.control.ca")

DEFAULT_TRUST_DOMAIN = "gossamer.local"
ROOT_KEY = "/ca/root.pem"
KEY_FILE = "ca-key.pem"
BUNDLE_FILE = CA_BUNDLE_FILE
SERVING_CERT_FILE = "api-cert.pem"
SERVING_KEY_FILE = "api-key.pem"
CONTROL_PLANE_NAMESPACE = "gossamer-system"
CONTROL_PLANE_ACCOUNT = "control-plane"
# Re-issued at every start, so a year only matters for a control plane that never restarts.
SERVING_CERT_VALIDITY = dt.timedelta(days=365)


@dataclass(frozen=True, slots=True)
class ServingCert:
    """The control plane's own TLS certificate (leaf first) and its 0600 key, as files."""

    cert_file: Path
    key_file: Path
    spiffe_id: SpiffeId


class MeshCa:
    """The root CA of the mesh: the certificate in the store, the private key in a 0600 file.

    The key is never put in the store (whose content may be dumped or backed up as JSON), never
    logged and never served. Build one with `open`.
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        key: ec.EllipticCurvePrivateKey,
        state_dir: Path,
        svid_ttl: dt.timedelta = DEFAULT_SVID_TTL,
    ):
        self.ca = ca
        self._key = key
        self.state_dir = state_dir
        self.svid_ttl = svid_ttl
        # The TLS contexts that serve the API; they get the new roots and certificate on rotation.
        self._server_contexts: list[ssl.SSLContext] = []

    def __repr__(self) -> str:
        return f"MeshCa(trust_domain={self.trust_domain!r})"

    @classmethod
    async def open(
        cls,
        store: Store,
        state_dir: Path,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        svid_ttl: dt.timedelta = DEFAULT_SVID_TTL,
    ) -> MeshCa:
        """Load the root from `store` and its key from `state_dir`, or create both on first start.

        `trust_domain` only names a new root: an existing root keeps its own (changing it needs
        a root rotation, `gossamer ca rotate`, a later step).

        Raises:
            CaError: the stored root and the key file do not belong together, or only one exists.
        """
        key_path = state_dir / KEY_FILE
        kv = await store.get(ROOT_KEY)
        if kv is None:
            if key_path.exists():
                raise CaError(
                    f"{key_path} exists but the store has no CA root ({ROOT_KEY}): refusing to "
                    "make a new root next to an old key; remove the key file to start afresh"
                )
            ca = CertificateAuthority.create_root(trust_domain)
            key = _ec_key(ca.private_key_pem())
            # The key first: a root in the store without its key could never sign anything.
            write_private_file(key_path, private_key_pem(key))
            await store.put(ROOT_KEY, ca.cert_pem())
            log.info("created the mesh root CA for trust domain %s", trust_domain)
        else:
            try:
                key = read_private_key(key_path)
            except KeyFileError as exc:
                raise CaError(f"the mesh CA's private key: {exc}") from None
            ca = CertificateAuthority.load(kv.value, private_key_pem(key))
        mesh_ca = cls(ca, key, state_dir, svid_ttl)
        write_file_atomic(state_dir / BUNDLE_FILE, mesh_ca.bundle_pem())
        return mesh_ca

    @property
    def trust_domain(self) -> str:
        return self.ca.trust_domain

    @property
    def bundle_path(self) -> Path:
        """The trust bundle as a file, for clients such as `curl --cacert`."""
        return self.state_dir / BUNDLE_FILE

    def bundle(self) -> TrustBundle:
        return TrustBundle([self.ca.root], self.trust_domain)

    def bundle_pem(self) -> bytes:
        return self.bundle().to_pem()

    def signer_fingerprint(self) -> str:
        """The SHA-256 fingerprint of the CA certificate that signs SVIDs now."""
        return fingerprint(self.ca.cert)

    def trust(self) -> Trust:
        """The bundle and signer every proxy gets in its Snapshot."""
        return Trust(bundle_pem=self.bundle_pem().decode("ascii"), signer=self.signer_fingerprint())

    def sign_svid(self, csr_pem: bytes | str, spiffe_id: SpiffeId) -> Svid:
        """A workload SVID for `spiffe_id` (which the caller proved); see `sign_csr`."""
        return self.ca.sign_csr(csr_pem, spiffe_id, ttl=self.svid_ttl)

    def attach_server_context(self, ctx: ssl.SSLContext) -> None:
        """Have `ctx` (the API's HTTPS listener) verify client SVIDs against the mesh's roots,
        now and after every change of roots."""
        ctx.load_verify_locations(cadata=self.bundle_pem().decode("ascii"))
        self._server_contexts.append(ctx)

    async def run(self, registry: Registry, distributor: Distributor) -> None:
        """The CA's background work for the life of the control plane (root rotation)."""
        await asyncio.Event().wait()

    def issue_control_plane_cert(
        self, hosts: list[str], now: dt.datetime | None = None
    ) -> ServingCert:
        """Issue the control plane's own HTTPS certificate and write it to the state dir.

        Unlike a workload SVID (`sign_csr`, which refuses DNS and IP names), this serving
        certificate carries the control plane's SPIFFE ID and also DNS/IP names, so ordinary
        HTTPS clients (`curl --cacert`) can verify it by host name. Its key is made here and
        written 0600 next to the CA key.
        """
        now = now or utcnow()
        spiffe_id = SpiffeId.workload(
            self.trust_domain, CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_ACCOUNT
        )
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(str(spiffe_id))]
        for host in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        key = ec.generate_private_key(ec.SECP256R1())
        issuer = self.ca.cert
        not_after = min(now + SERVING_CERT_VALIDITY, issuer.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gossamer control plane")])
            )
            .issuer_name(issuer.subject)
            .public_key(key.public_key())
            .serial_number(secrets.randbits(128) or 1)
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        serving = ServingCert(
            self.state_dir / SERVING_CERT_FILE, self.state_dir / SERVING_KEY_FILE, spiffe_id
        )
        write_private_file(serving.key_file, private_key_pem(key))
        chain = cert.public_bytes(serialization.Encoding.PEM) + self.ca.chain_pem()
        write_file_atomic(serving.cert_file, chain)
        return serving


def _ec_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"expected an EC CA key, got {type(key).__name__}")
    return key
