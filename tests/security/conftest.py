"""Fixtures for the security tests: a fresh test CA (root and intermediate) per session."""

from __future__ import annotations

import pytest
from security_helpers import TD

from gossamer.security.ca import CertificateAuthority


@pytest.fixture(scope="session")
def root_ca() -> CertificateAuthority:
    return CertificateAuthority.create_root(TD)


@pytest.fixture(scope="session")
def inter_ca(root_ca: CertificateAuthority) -> CertificateAuthority:
    return root_ca.create_intermediate()
