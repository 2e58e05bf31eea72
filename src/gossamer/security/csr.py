"""The workload side of identity: make a key and a CSR for a SPIFFE ID, keep the key private."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gossamer.files import write_atomically
from gossamer.security.spiffe import SpiffeId

PRIVATE_MODE = 0o600


class KeyFileError(Exception):
    """A private key file cannot be written or read safely; the message names the file."""


def generate_key() -> ec.EllipticCurvePrivateKey:
    """A new ECDSA P-256 private key, held only in memory."""
    return ec.generate_private_key(ec.SECP256R1())


def make_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: SpiffeId) -> bytes:
    """A PEM CSR signed by `key` asking for exactly one URI SAN, `spiffe_id`, and nothing else."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """`key` as unencrypted PKCS#8 PEM. Handle with care: never log or send it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    """Parse an unencrypted PEM EC private key.

    Raises:
        KeyFileError: not a PEM private key, encrypted, or not an EC key.
    """
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise KeyFileError("the private key is encrypted: it must be unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise KeyFileError("not a PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"expected an EC private key, got {type(key).__name__}")
    return key


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write `key` to `path` with mode 0600, atomically (temp file in the same folder, renamed).

    An existing file at `path` is replaced only if nobody but its owner could read it: a key file
    that was group- or world-readable may have leaked, which an operator must look into.

    Raises:
        KeyFileError: the existing file has looser permissions, or the folder is not writable.
    """
    write_private_file(path, private_key_pem(key))


def read_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read a key written by `write_private_key`, refusing one that others can read.

    Raises:
        KeyFileError: missing, group/world-accessible, or not a PEM EC private key.
    """
    data = read_private_bytes(path)
    try:
        return load_private_key(data)
    except KeyFileError as exc:
        raise KeyFileError(f"{path}: {exc}") from None


def write_private_file(path: Path, data: bytes) -> None:
    """Write secret `data` to `path` as `write_private_key` does (0600, atomic, no looser file)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise KeyFileError(f"cannot inspect {path}: {exc.strerror}") from None
    else:
        _check_mode(path, mode)
    write_file_atomic(path, data, PRIVATE_MODE)


def write_file_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` through a temp file with `mode`, fsynced, then renamed over `path`.

    Raises:
        KeyFileError: the folder is missing or not writable.
    """
    try:
        write_atomically(path, data, mode=mode, make_parents=False)
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from None


def read_private_bytes(path: Path, *, remedy: str = "remove it") -> bytes:
    """The bytes of a private key file, refusing one that group or others can access.

    `remedy` ends the refusal's advice ("check it, then ..."): what to do with such a file.

    Raises:
        KeyFileError: missing, unreadable, or group/world-accessible.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read private key {path}: {exc.strerror}") from None
    _check_mode(path, mode, remedy)
    return data


def _check_mode(path: Path, mode: int, remedy: str = "remove it") -> None:
    if mode & 0o077:
        raise KeyFileError(
            f"{path} has mode {mode:04o}: a private key file must not be accessible to group or "
            f"others (it may have leaked; check it, then {remedy})"
        )
