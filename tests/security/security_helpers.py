"""Shared test helpers for the security tests: workloads with SVIDs from a test CA."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from gossamer.security.ca import CertificateAuthority, Svid
from gossamer.security.csr import generate_key, make_csr
from gossamer.security.spiffe import SpiffeId

TD = "gossamer.local"


@dataclass(frozen=True)
class Workload:
    """A key and the SVID a CA issued for it."""

    key: ec.EllipticCurvePrivateKey
    svid: Svid


def issue(
    ca: CertificateAuthority,
    sa: str,
    ttl: dt.timedelta = dt.timedelta(hours=24),
    now: dt.datetime | None = None,
) -> Workload:
    """A fresh key and an SVID for spiffe://<ca's trust domain>/ns/default/sa/<sa>."""
    key = generate_key()
    spiffe_id = SpiffeId.workload(ca.trust_domain, "default", sa)
    return Workload(key, ca.sign_csr(make_csr(key, spiffe_id), spiffe_id, ttl=ttl, now=now))
