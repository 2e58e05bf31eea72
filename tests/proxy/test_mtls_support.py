"""Shared helpers for the sidecar mTLS tests: a test PKI on disk, mTLS Snapshots, TLS clients.

The PKI is real (gossamer.security's CA, CSRs and `write_svid`); nothing here is mocked. Test
functions live in test_mtls_inbound.py and test_mtls_sidecars.py; this module holds only a sanity
test.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from test_dataplane import (
    Client,
    _cleanups,
    cluster,
    metric_value,
    snapshot,
    start_dataplane,
    vhost,
)

from gossamer import snapshot as snap
from gossamer.proxy.dataplane import DataPlane
from gossamer.security.ca import CertificateAuthority
from gossamer.security.csr import generate_key, make_csr, private_key_pem
from gossamer.security.spiffe import SpiffeId
from gossamer.security.tls import SvidFiles, client_context, write_svid
from gossamer.telemetry.metrics import Registry

TD = "gossamer.local"


def spiffe(sa: str) -> str:
    return f"spiffe://{TD}/ns/default/sa/{sa}"


@dataclass
class Pki:
    """A mesh root CA, its bundle file, and SVIDs written under `base`."""

    ca: CertificateAuthority
    base: Path

    @property
    def bundle_pem(self) -> str:
        return self.ca.cert_pem().decode()

    @property
    def bundle_file(self) -> Path:
        path = self.base / "bundle.pem"
        if not path.exists():
            path.write_text(self.bundle_pem)
        return path

    def svid(
        self,
        sa: str,
        name: str | None = None,
        *,
        ttl: dt.timedelta = dt.timedelta(hours=24),
        now: dt.datetime | None = None,
        ca: CertificateAuthority | None = None,
    ) -> SvidFiles:
        """A fresh key and SVID for spiffe://gossamer.local/ns/default/sa/<sa>, on disk."""
        issuer = ca or self.ca
        key = generate_key()
        spiffe_id = SpiffeId.workload(issuer.trust_domain, "default", sa)
        svid = issuer.sign_csr(make_csr(key, spiffe_id), spiffe_id, ttl=ttl, now=now)
        folder = self.base / (name or sa)
        folder.mkdir(parents=True, exist_ok=True)
        return write_svid(folder, svid.cert_pem + svid.chain_pem, private_key_pem(key))

    def malformed(self, name: str, uris: list[str], dns: list[str] = ()) -> SvidFiles:  # type: ignore[assignment]
        """A leaf signed by the mesh CA that is not a valid SVID (no or several URI SANs)."""
        key = generate_key()
        ca_key = serialization.load_pem_private_key(self.ca.private_key_pem(), None)
        now = dt.datetime.now(dt.UTC)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.DNSName(d) for d in dns]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(hours=1))
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
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.ca.cert.public_key()  # type: ignore[arg-type]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        folder = self.base / name
        folder.mkdir(parents=True, exist_ok=True)
        return write_svid(
            folder, cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key)
        )


def make_pki(base: Path, *, now: dt.datetime | None = None) -> Pki:
    base.mkdir(parents=True, exist_ok=True)
    return Pki(CertificateAuthority.create_root(TD, now=now), base)


def with_tls(
    base: snap.Snapshot, mode: snap.MtlsMode, bundle_pem: str, **cluster_identities: list[str]
) -> snap.Snapshot:
    """`base` with mesh mTLS and, for each named cluster ("pricing" for pricing.default), tls."""
    clusters = [
        msgspec.structs.replace(c, tls=snap.UpstreamTls(identities=cluster_identities[c.service]))
        if c.service in cluster_identities
        else c
        for c in base.clusters
    ]
    return snap.seal(
        msgspec.structs.replace(
            base, tls=snap.MeshTls(mode=mode, trust_bundle=bundle_pem), clusters=clusters
        )
    )


def tls_client_context(files: SvidFiles, bundle_pem: str) -> ssl.SSLContext:
    """A client context presenting `files`, trusting the bundle (the library's own)."""
    from gossamer.security.bundle import TrustBundle

    return client_context(files, TrustBundle.from_pem(bundle_pem))


async def open_tls(address: str, ctx: ssl.SSLContext) -> Client:
    """A raw HTTP/1.1 client over mTLS (see test_dataplane.Client), closed by `run`."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(
        host, int(port), ssl=ctx, server_hostname="test.mesh.internal"
    )
    client = Client(reader, writer)

    async def cleanup() -> None:
        client.close()

    _cleanups.append(cleanup)
    return client


async def run_tool(
    *argv: str,
    stdin: bytes = b"",
    timeout: float = 8.0,  # noqa: ASYNC109
) -> tuple[int, str, str]:
    """Run curl/openssl without blocking the loop the proxies run on; (rc, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate(stdin)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv[0]} did not finish within {timeout}s: {argv}") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def test_pki_makes_svids_with_one_uri_san(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    files = pki.svid("web")
    cert = x509.load_pem_x509_certificate(files.cert_chain.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [spiffe("web")]
    assert files.key.stat().st_mode & 0o777 == 0o600


async def sidecar(
    pki: Pki,
    sa: str,
    mode: snap.MtlsMode = "STRICT",
    *,
    app_port: int | None = None,
    vhosts: list[snap.VirtualHost] | None = None,
    clusters: list[snap.Cluster] | None = None,
    svid: bool = True,
    identities: dict[str, list[str]] | None = None,
    **settings: object,
) -> tuple[DataPlane, str, str, Registry]:
    """A DataPlane for service `sa` with its own SVID and mesh mTLS in `mode`."""
    base = snapshot(vhosts or [], clusters or [], app_port=app_port, service=sa)
    dp, inbound, outbound, registry = await start_dataplane(
        with_tls(base, mode, pki.bundle_pem, **(identities or {})), **settings
    )
    if svid:
        dp.set_svid(pki.svid(sa))
    return dp, inbound, outbound, registry


async def pricing_caller(
    pki: Pki, pricing_in: str, **settings: object
) -> tuple[DataPlane, str, str, Registry]:
    """frontend's sidecar (STRICT), routing host `pricing` over mTLS to `pricing_in`, the inbound
    listener of a sidecar started with `sidecar(pki, "pricing", ...)`."""
    return await sidecar(
        pki,
        "frontend",
        "STRICT",
        vhosts=[vhost("pricing")],
        clusters=[cluster("pricing", [pricing_in])],
        identities={"pricing": [spiffe("pricing")]},
        **settings,
    )


def handshakes(registry: Registry, direction: str, result: str) -> float:
    return metric_value(
        registry,
        f'gossamer_proxy_tls_handshakes_total{{direction="{direction}",result="{result}"}}',
    )
