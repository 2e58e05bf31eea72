"""Bootstrap tokens (a proxy's first CSR) and operator API tokens, stored only as hashes."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Literal, get_args

import msgspec

from gossamer.security.spiffe import SpiffeId, SpiffeIdError

Role = Literal["admin", "editor", "viewer"]
Action = Literal["read", "write", "admin"]
TokenKind = Literal["bootstrap", "operator"]

ROLES: tuple[Role, ...] = get_args(Role)
BOOTSTRAP_PREFIX = "gsb_"
OPERATOR_PREFIX = "gso_"
DEFAULT_BOOTSTRAP_TTL = 600.0
_PREFIXES: dict[TokenKind, str] = {"bootstrap": BOOTSTRAP_PREFIX, "operator": OPERATOR_PREFIX}
# A token reads `<prefix><id>.<secret>`: the id finds the record, the secret is checked by hash.
_TOKEN = re.compile(r"(gs[bo]_)([0-9a-f]{16})\.([A-Za-z0-9_-]{43})")
_ALLOWED: dict[Role, frozenset[Action]] = {
    "admin": frozenset({"read", "write", "admin"}),
    "editor": frozenset({"read", "write"}),
    "viewer": frozenset({"read"}),
}


class TokenError(Exception):
    """A token is refused (malformed, unknown, expired, used, revoked) or cannot be created."""


def role_allows(role: Role, action: Action) -> bool:
    """Whether an operator with `role` may perform `action` (admin > editor > viewer)."""
    return action in _ALLOWED[role]


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly minted token: `secret` is shown once to its owner and never stored."""

    id: str
    kind: TokenKind
    secret: str

    def __repr__(self) -> str:
        return f"IssuedToken(id={self.id!r}, kind={self.kind!r}, secret=<hidden>)"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What is known about a stored token, without its secret or hash."""

    id: str
    kind: TokenKind
    created: float
    expires: float | None
    role: Role | None = None
    spiffe_id: str | None = None
    description: str = ""
    used: bool = False


class _Record(msgspec.Struct, frozen=True, omit_defaults=True, rename="camel"):
    """A stored token: its SHA-256 hash, never the secret."""

    kind: TokenKind
    hash: str
    created: float
    expires: float | None = None
    role: Role | None = None
    spiffe_id: str | None = None
    description: str = ""
    used: bool = False

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Record)


@dataclass(frozen=True, slots=True)
class Operator:
    """An authenticated operator: the token's id and role."""

    id: str
    role: Role


class TokenStore:
    """Mint, check and revoke tokens over a simple key-value persistence.

    Args:
        data: any `MutableMapping[str, bytes]` (a dict in tests; later a view on the control
            plane's Store). Keys are token ids, values JSON records holding only a SHA-256 hash.
        clock: unix seconds, `time.time` by default; tests inject their own.
    """

    def __init__(
        self, data: MutableMapping[str, bytes], clock: Callable[[], float] = time.time
    ) -> None:
        self._data = data
        self._clock = clock

    def create_bootstrap(
        self, spiffe_id: SpiffeId, ttl: float = DEFAULT_BOOTSTRAP_TTL, now: float | None = None
    ) -> IssuedToken:
        """A single-use token that lets one proxy get its first SVID for `spiffe_id`."""
        if ttl <= 0:
            raise TokenError(f"bootstrap token lifetime must be positive, got {ttl}")
        return self._mint("bootstrap", ttl, now, spiffe_id=str(spiffe_id))

    def create_operator(
        self, role: Role, description: str = "", ttl: float | None = None, now: float | None = None
    ) -> IssuedToken:
        """An operator API token with `role`; it never expires unless `ttl` (seconds) is given."""
        if role not in ROLES:
            raise TokenError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        if ttl is not None and ttl <= 0:
            raise TokenError(f"operator token lifetime must be positive, got {ttl}")
        return self._mint("operator", ttl, now, role=role, description=description)

    def redeem_bootstrap(self, token: str, now: float | None = None) -> SpiffeId:
        """Use a bootstrap token up: return the SPIFFE ID it is bound to.

        Raises:
            TokenError: malformed, unknown, expired or already used.
        """
        token_id, record = self._check(token, "bootstrap", now)
        if record.used:
            raise TokenError(f"bootstrap token {token_id} was already used")
        self._data[token_id] = _encoder.encode(msgspec.structs.replace(record, used=True))
        try:
            return SpiffeId.parse(record.spiffe_id or "")
        except SpiffeIdError:
            raise TokenError(f"bootstrap token {token_id} has a corrupt record") from None

    def authenticate(self, token: str, now: float | None = None) -> Operator:
        """The operator an API token belongs to.

        Raises:
            TokenError: malformed, unknown (or revoked) or expired.
        """
        token_id, record = self._check(token, "operator", now)
        if record.role is None:
            raise TokenError(f"operator token {token_id} has a corrupt record")
        return Operator(token_id, record.role)

    def revoke(self, token_id: str) -> bool:
        """Delete a token by id; False when there was none."""
        if token_id not in self._data:
            return False
        del self._data[token_id]
        return True

    def list(self, kind: TokenKind | None = None) -> list[TokenInfo]:
        """Every stored token (of `kind`), oldest first, without secrets or hashes."""
        infos = []
        for token_id, raw in list(self._data.items()):
            r = _decode(raw, token_id)
            if kind is not None and r.kind != kind:
                continue
            infos.append(
                TokenInfo(
                    id=token_id,
                    kind=r.kind,
                    created=r.created,
                    expires=r.expires,
                    role=r.role,
                    spiffe_id=r.spiffe_id,
                    description=r.description,
                    used=r.used,
                )
            )
        return sorted(infos, key=lambda i: (i.created, i.id))

    def prune(self, now: float | None = None) -> int:
        """Delete expired tokens and used bootstrap tokens; return how many went."""
        now = self._clock() if now is None else now
        gone = [
            token_id
            for token_id, raw in list(self._data.items())
            if (r := _decode(raw, token_id)).expired(now) or r.used
        ]
        for token_id in gone:
            del self._data[token_id]
        return len(gone)

    def _mint(
        self,
        kind: TokenKind,
        ttl: float | None,
        now: float | None,
        role: Role | None = None,
        spiffe_id: str | None = None,
        description: str = "",
    ) -> IssuedToken:
        now = self._clock() if now is None else now
        token_id = secrets.token_hex(8)
        while token_id in self._data:
            token_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        record = _Record(
            kind=kind,
            hash=_hash(secret),
            created=now,
            expires=None if ttl is None else now + ttl,
            role=role,
            spiffe_id=spiffe_id,
            description=description,
        )
        self._data[token_id] = _encoder.encode(record)
        return IssuedToken(token_id, kind, f"{_PREFIXES[kind]}{token_id}.{secret}")

    def _check(self, token: str, kind: TokenKind, now: float | None) -> tuple[str, _Record]:
        m = _TOKEN.fullmatch(token.strip()) if isinstance(token, str) else None
        article = "an" if kind == "operator" else "a"
        if m is None:
            raise TokenError(f"not a Gossamer {kind} token")
        prefix, token_id, secret = m.groups()
        if prefix != _PREFIXES[kind]:
            raise TokenError(f"not {article} {kind} token (it starts with {prefix!r})")
        raw = self._data.get(token_id)
        record = _decode(raw, token_id) if raw is not None else None
        # Compare a hash even for an unknown id, so timing does not tell which ids exist.
        stored = record.hash if record else _hash("")
        matched = hmac.compare_digest(_hash(secret), stored)
        if record is None or not matched or record.kind != kind:
            raise TokenError(f"unknown or revoked {kind} token {token_id}")
        if record.expired(self._clock() if now is None else now):
            raise TokenError(f"{kind} token {token_id} has expired")
        return token_id, record


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _decode(raw: bytes, token_id: str) -> _Record:
    try:
        return _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise TokenError(f"corrupt record for token {token_id} in the store: {exc}") from None
