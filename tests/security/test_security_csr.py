"""The workload side: keys, CSRs, and private key files that stay 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gossamer.security.csr import (
    KeyFileError,
    generate_key,
    load_private_key,
    make_csr,
    private_key_pem,
    read_private_key,
    write_private_key,
)
from gossamer.security.spiffe import SpiffeId

PRICING = SpiffeId.workload("gossamer.local", "default", "pricing")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_csr_asks_for_exactly_the_id() -> None:
    key = generate_key()
    assert isinstance(key.curve, ec.SECP256R1)
    csr = x509.load_pem_x509_csr(make_csr(key, PRICING))
    assert csr.is_signature_valid
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(str(PRICING))]
    assert len(csr.extensions) == 1
    assert b"PRIVATE" not in make_csr(key, PRICING)


def test_write_private_key_is_0600_and_round_trips(tmp_path: Path) -> None:
    key = generate_key()
    path = tmp_path / "key.pem"
    old_umask = os.umask(0)  # even with a permissive umask the file must be 0600
    try:
        write_private_key(path, key)
    finally:
        os.umask(old_umask)
    assert _mode(path) == 0o600
    assert read_private_key(path).private_numbers() == key.private_numbers()
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]  # no temp file left behind


def test_replacing_a_0600_key_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    write_private_key(path, generate_key())
    inode_before = path.stat().st_ino
    second = generate_key()
    write_private_key(path, second)
    assert path.stat().st_ino != inode_before  # renamed over, never rewritten in place
    assert read_private_key(path).private_numbers() == second.private_numbers()
    assert _mode(path) == 0o600


def test_refuses_to_replace_a_looser_file(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(b"old")
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match=r"key\.pem has mode 0644: a private key file must not"):
        write_private_key(path, generate_key())
    assert path.read_bytes() == b"old"
    with pytest.raises(KeyFileError, match="has mode 0644"):
        read_private_key(path)


def test_key_file_errors(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot write"):
        write_private_key(tmp_path / "missing-dir" / "key.pem", generate_key())
    with pytest.raises(KeyFileError, match="cannot read private key"):
        read_private_key(tmp_path / "absent.pem")
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"not a key")
    bad.chmod(0o600)
    with pytest.raises(KeyFileError, match=r"bad\.pem: not a PEM private key"):
        read_private_key(bad)


def test_load_private_key_refusals() -> None:
    assert load_private_key(private_key_pem(key := generate_key())).private_numbers() == (
        key.private_numbers()
    )
    from cryptography.hazmat.primitives import serialization

    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyFileError, match="expected an EC private key"):
        load_private_key(ed)
    encrypted = generate_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(KeyFileError, match="encrypted"):
        load_private_key(encrypted)
