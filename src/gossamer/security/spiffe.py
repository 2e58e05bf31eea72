"""SPIFFE IDs: parse, format and validate them, and match them against principal patterns."""

from __future__ import annotations

import re
from dataclasses import dataclass

SCHEME = "spiffe://"
# The SPIFFE ID spec (SPIFFE-ID.md, sections 2.1 and 2.2): a trust domain is lower-case letters,
# digits, dots, dashes and underscores; a path segment may also hold upper-case letters.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[a-zA-Z0-9._-]+")
_MAX_ID_BYTES = 2048
_MAX_TRUST_DOMAIN = 255

# Shared by the CLI, the supervisor, the proxy and the control plane; kept here because this module
# imports nothing heavy.
BOOTSTRAP_TOKEN_ENV = "GOSSAMER_BOOTSTRAP_TOKEN"
CONTROL_PLANE_NAMESPACE = "gossamer-system"
CONTROL_PLANE_ACCOUNT = "control-plane"


class SpiffeIdError(ValueError):
    """A string is not a valid SPIFFE ID (or trust domain); the message says what is wrong."""


def validate_trust_domain(trust_domain: str) -> str:
    """Return `trust_domain` unchanged if it is a valid SPIFFE trust domain name.

    Raises:
        SpiffeIdError: empty, too long, or a character outside [a-z0-9._-] (which also rules out
            upper case, a port, userinfo, a query and a fragment).
    """
    if not trust_domain:
        raise SpiffeIdError("trust domain is empty")
    if len(trust_domain) > _MAX_TRUST_DOMAIN:
        raise SpiffeIdError(f"trust domain is longer than {_MAX_TRUST_DOMAIN} characters")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        bad = next(c for c in trust_domain if not _TRUST_DOMAIN.fullmatch(c))
        raise SpiffeIdError(
            f"trust domain {trust_domain!r} has {bad!r}: only lower-case letters, digits, "
            "'.', '-' and '_' are allowed"
        )
    return trust_domain


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A SPIFFE ID: `spiffe://<trust_domain><path>`.

    `path` is empty for the ID of a trust domain itself (as in a CA's URI SAN), else it starts with
    '/'. Build workload IDs with `SpiffeId.workload`, parse any ID with `SpiffeId.parse`.
    """

    trust_domain: str
    path: str = ""

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        _validate_path(self.path)
        if len(str(self).encode()) > _MAX_ID_BYTES:
            raise SpiffeIdError(f"SPIFFE ID is longer than {_MAX_ID_BYTES} bytes")

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse `spiffe://trust-domain/path...`.

        Raises:
            SpiffeIdError: naming the part that is wrong (scheme, trust domain, path segment).
        """
        if not isinstance(text, str):
            raise SpiffeIdError(f"SPIFFE ID must be a string, not {type(text).__name__}")
        if not text.startswith(SCHEME):
            raise SpiffeIdError(f"{text!r} is not a SPIFFE ID: it must start with {SCHEME!r}")
        rest = text[len(SCHEME) :]
        trust_domain, slash, path = rest.partition("/")
        for ch, what in (("@", "userinfo"), (":", "a port"), ("?", "a query"), ("#", "a fragment")):
            if ch in trust_domain:
                raise SpiffeIdError(f"SPIFFE ID {text!r} must not have {what} in its trust domain")
        if "?" in path or "#" in path:
            raise SpiffeIdError(f"SPIFFE ID {text!r} must not have a query or a fragment")
        try:
            return cls(trust_domain, slash + path)
        except SpiffeIdError as exc:
            raise SpiffeIdError(f"SPIFFE ID {text!r}: {exc}") from None

    @classmethod
    def workload(cls, trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
        """The ID of a workload: `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`."""
        return cls(trust_domain, f"/ns/{namespace}/sa/{service_account}")

    @property
    def is_workload(self) -> bool:
        """True when the path has the mesh's `/ns/<namespace>/sa/<service-account>` form."""
        parts = self.path.split("/")
        return len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa"

    @property
    def namespace(self) -> str | None:
        """The namespace of a workload ID, None for any other ID."""
        return self.path.split("/")[2] if self.is_workload else None

    @property
    def service_account(self) -> str | None:
        """The service account of a workload ID, None for any other ID."""
        return self.path.split("/")[4] if self.is_workload else None

    @property
    def trust_domain_id(self) -> SpiffeId:
        """The ID of this ID's trust domain (`spiffe://<trust_domain>`)."""
        return SpiffeId(self.trust_domain)

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"


def control_plane_id(trust_domain: str) -> SpiffeId:
    """The control plane's own SPIFFE ID in `trust_domain` (its serving certificate carries it)."""
    return SpiffeId.workload(trust_domain, CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_ACCOUNT)


def _validate_path(path: str) -> None:
    if not path:
        return
    if not path.startswith("/"):
        raise SpiffeIdError(f"path {path!r} must start with '/'")
    for segment in path[1:].split("/"):
        if not segment:
            raise SpiffeIdError(f"path {path!r} has an empty segment (or a trailing '/')")
        if segment in (".", ".."):
            raise SpiffeIdError(f"path {path!r} has a {segment!r} segment")
        if not _SEGMENT.fullmatch(segment):
            raise SpiffeIdError(
                f"path segment {segment!r} may only hold letters, digits, '.', '-' and '_'"
            )


def matches(pattern: str, spiffe_id: SpiffeId | str) -> bool:
    """Whether `spiffe_id` matches a principal pattern, as in Istio's `principals`.

    A pattern is an exact ID, `*` (any ID), `prefix*` or `*suffix`. The `spiffe://` scheme is
    optional on both sides, so Istio's `cluster.local/ns/default/sa/web` form works too.
    A `*` anywhere else in the pattern is a literal character and therefore never matches.
    """
    subject = _strip_scheme(str(spiffe_id))
    pat = _strip_scheme(pattern)
    if pat == "*":
        return True
    if pat.endswith("*"):
        return subject.startswith(pat[:-1])
    if pat.startswith("*"):
        return subject.endswith(pat[1:])
    return subject == pat


def _strip_scheme(text: str) -> str:
    return text[len(SCHEME) :] if text.startswith(SCHEME) else text
