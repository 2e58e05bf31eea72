"""Operator and bootstrap tokens kept in the control plane's Store; the first admin token."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, MutableMapping
from pathlib import Path
from typing import TypeVar

from gossamer.control.client import ADMIN_TOKEN_FILE
from gossamer.control.store.base import Store
from gossamer.security.csr import write_private_file
from gossamer.security.spiffe import SpiffeId
from gossamer.security.tokens import TokenInfo, TokenStore

T = TypeVar("T")

log = logging.getLogger("gossamer.control.tokens")

TOKENS_PREFIX = "/tokens/"
_TOKEN_ID = re.compile(r"gs[bo]_([0-9a-f]{16})\.")


class _WriteThrough(MutableMapping[str, bytes]):
    """A dict that remembers which keys changed, so they can be written to the async Store."""

    def __init__(self, data: dict[str, bytes]) -> None:
        self._data = data
        self.dirty: set[str] = set()

    def __getitem__(self, key: str) -> bytes:
        return self._data[key]

    def __setitem__(self, key: str, value: bytes) -> None:
        self._data[key] = value
        self.dirty.add(key)

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self.dirty.add(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


class Tokens:
    """`TokenStore` over an in-memory map loaded from the Store at start, written through.

    TokenStore is synchronous and the Store async: every change lands in the map at once (so a
    bootstrap token cannot be redeemed twice, the event loop being single-threaded) and is made
    durable by `flush()`, which the API awaits before it answers.
    """

    def __init__(self, store: Store, data: dict[str, bytes], clock: Callable[[], float]) -> None:
        self._store = store
        self._map = _WriteThrough(data)
        self.tokens = TokenStore(self._map, clock)

    @classmethod
    async def open(cls, store: Store, clock: Callable[[], float]) -> Tokens:
        items, _ = await store.list(TOKENS_PREFIX)
        data = {kv.key.removeprefix(TOKENS_PREFIX): kv.value for kv in items}
        return cls(store, data, clock)

    async def flush(self) -> None:
        """Write every changed token record to the Store (deleting the removed ones)."""
        dirty, self._map.dirty = self._map.dirty, set()
        for token_id in sorted(dirty):
            value = self._map.get(token_id)
            if value is None:
                await self._store.delete(TOKENS_PREFIX + token_id)
            else:
                await self._store.put(TOKENS_PREFIX + token_id, value)

    def info(self, token_id: str) -> TokenInfo | None:
        return next((t for t in self.tokens.list() if t.id == token_id), None)

    def redeem_bootstrap_for(self, token: str, use: Callable[[SpiffeId], T]) -> T:
        """Redeem a bootstrap token and pass its identity to `use`; if `use` raises, the token
        is left unused, so a bad CSR does not cost the proxy its one chance.

        Raises:
            TokenError: the token is malformed, unknown, expired or already used.
        """
        m = _TOKEN_ID.match(token.strip())
        before = self._map.get(m.group(1)) if m else None
        spiffe_id = self.tokens.redeem_bootstrap(token)
        try:
            return use(spiffe_id)
        except BaseException:
            if m is not None and before is not None:
                self._map[m.group(1)] = before
                self._map.dirty.discard(m.group(1))
            raise

    async def ensure_admin(self, state_dir: Path) -> Path:
        """Make the first admin token when no admin token exists; its secret goes 0600 to a file.

        Returns where the admin token file is. An existing admin token is left alone (its secret
        is not stored anywhere but the file it was first written to).
        """
        path = state_dir / ADMIN_TOKEN_FILE
        if any(t.role == "admin" for t in self.tokens.list("operator")):
            return path
        issued = self.tokens.create_operator("admin", "created at initialization")
        write_private_file(path, (issued.secret + "\n").encode())
        await self.flush()
        log.info("created admin token %s, written to %s", issued.id, path)
        return path
