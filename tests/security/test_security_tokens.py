"""Bootstrap and operator tokens: single use, expiry, hash-only storage, revocation, roles."""

from __future__ import annotations

import hashlib

import pytest

from gossamer.security.spiffe import SpiffeId
from gossamer.security.tokens import (
    BOOTSTRAP_PREFIX,
    OPERATOR_PREFIX,
    TokenError,
    TokenStore,
    role_allows,
)

PRICING = SpiffeId.workload("gossamer.local", "default", "pricing")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def data() -> dict[str, bytes]:
    return {}


@pytest.fixture
def store(data: dict[str, bytes], clock: Clock) -> TokenStore:
    return TokenStore(data, clock)


def test_bootstrap_token_is_single_use(store: TokenStore) -> None:
    token = store.create_bootstrap(PRICING)
    assert token.secret.startswith(BOOTSTRAP_PREFIX)
    assert store.redeem_bootstrap(token.secret) == PRICING
    with pytest.raises(TokenError, match=f"bootstrap token {token.id} was already used"):
        store.redeem_bootstrap(token.secret)


def test_bootstrap_token_expires(store: TokenStore, clock: Clock) -> None:
    token = store.create_bootstrap(PRICING)  # 10 minutes by default
    clock.now += 599
    other = store.create_bootstrap(PRICING, ttl=1)
    assert store.redeem_bootstrap(token.secret) == PRICING
    clock.now += 1
    with pytest.raises(TokenError, match=f"bootstrap token {other.id} has expired"):
        store.redeem_bootstrap(other.secret)
    late = store.create_bootstrap(PRICING, ttl=30)
    with pytest.raises(TokenError, match="has expired"):
        store.redeem_bootstrap(late.secret, now=clock.now + 31)


def test_only_hashes_are_stored(store: TokenStore, data: dict[str, bytes]) -> None:
    boot = store.create_bootstrap(PRICING)
    op = store.create_operator("admin", description="first admin")
    for issued in (boot, op):
        secret = issued.secret.split(".", 1)[1]
        stored = data[issued.id]
        assert secret.encode() not in stored
        assert hashlib.sha256(secret.encode()).hexdigest().encode() in stored
    assert all(op.secret.encode() not in raw for raw in data.values())


def test_secrets_are_hidden_from_repr(store: TokenStore) -> None:
    token = store.create_operator("viewer")
    for text in (repr(token), str(token), f"{token}", repr(store.list())):
        assert token.secret not in text
        assert token.secret.split(".", 1)[1] not in text
    assert "<hidden>" in repr(token)


def test_unknown_tampered_and_malformed_tokens(store: TokenStore) -> None:
    token = store.create_bootstrap(PRICING)
    prefix_and_id, secret = token.secret.split(".", 1)
    tampered = f"{prefix_and_id}.{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    with pytest.raises(TokenError, match=f"unknown or revoked bootstrap token {token.id}"):
        store.redeem_bootstrap(tampered)
    with pytest.raises(TokenError, match="unknown or revoked bootstrap token 0123456789abcdef"):
        store.redeem_bootstrap(f"{BOOTSTRAP_PREFIX}0123456789abcdef.{secret}")
    for junk in ("", "hello", "gsb_", token.secret + "x"):
        with pytest.raises(TokenError, match="not a Gossamer bootstrap token"):
            store.redeem_bootstrap(junk)
    op = store.create_operator("admin")
    with pytest.raises(TokenError, match="not a bootstrap token"):
        store.redeem_bootstrap(op.secret)
    with pytest.raises(TokenError, match="not an operator token"):
        store.authenticate(token.secret)
    assert store.redeem_bootstrap(token.secret) == PRICING  # the failures did not use it up


def test_operator_authenticate_revoke_list(store: TokenStore, clock: Clock) -> None:
    admin = store.create_operator("admin", description="first admin")
    clock.now += 1
    viewer = store.create_operator("viewer", ttl=60)
    assert store.authenticate(admin.secret).role == "admin"
    assert store.authenticate(f"  {viewer.secret}\n").id == viewer.id
    listed = store.list("operator")
    assert [(t.id, t.role, t.description) for t in listed] == [
        (admin.id, "admin", "first admin"),
        (viewer.id, "viewer", ""),
    ]
    assert listed[1].expires == clock.now + 60
    assert store.revoke(admin.id)
    assert not store.revoke(admin.id)
    with pytest.raises(TokenError, match=f"unknown or revoked operator token {admin.id}"):
        store.authenticate(admin.secret)
    clock.now += 60
    with pytest.raises(TokenError, match=f"operator token {viewer.id} has expired"):
        store.authenticate(viewer.secret)


def test_prune_drops_used_and_expired(store: TokenStore, clock: Clock) -> None:
    used = store.create_bootstrap(PRICING)
    store.redeem_bootstrap(used.secret)
    store.create_bootstrap(PRICING, ttl=5)
    keep = store.create_operator("editor")
    fresh = store.create_bootstrap(PRICING)
    clock.now += 10
    assert store.prune() == 2
    assert {t.id for t in store.list()} == {keep.id, fresh.id}
    assert store.list("bootstrap")[0].spiffe_id == str(PRICING)


def test_bad_arguments(store: TokenStore, data: dict[str, bytes]) -> None:
    with pytest.raises(TokenError, match="unknown role 'root'"):
        store.create_operator("root")  # type: ignore[arg-type]
    with pytest.raises(TokenError, match="lifetime must be positive"):
        store.create_bootstrap(PRICING, ttl=0)
    token = store.create_operator("admin")
    data[token.id] = b"{not json"
    with pytest.raises(TokenError, match=f"corrupt record for token {token.id}"):
        store.authenticate(token.secret)


@pytest.mark.parametrize(
    ("role", "read", "write", "admin"),
    [("admin", True, True, True), ("editor", True, True, False), ("viewer", True, False, False)],
)
def test_roles(role: str, read: bool, write: bool, admin: bool) -> None:
    assert role_allows(role, "read") is read  # type: ignore[arg-type]
    assert role_allows(role, "write") is write  # type: ignore[arg-type]
    assert role_allows(role, "admin") is admin  # type: ignore[arg-type]


def test_tokens_are_unique_and_prefixed(store: TokenStore) -> None:
    tokens = [store.create_operator("viewer") for _ in range(20)]
    assert len({t.secret for t in tokens}) == 20
    assert len({t.id for t in tokens}) == 20
    assert all(t.secret.startswith(OPERATOR_PREFIX) for t in tokens)
