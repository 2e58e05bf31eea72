"""The last good responses of a route rule, kept so its fallback can serve them stale.

One `ResponseCache` per rule whose fallback has `max_stale`: the last 2xx response (head fields
and whole body, at most `max_body_bytes`) to each GET/HEAD request, keyed by (method, authority,
path, query), least recently used first out past `max_entries`. Times come from the injected
clock (the event loop's), so tests drive staleness without waiting. Only the exchange writes here,
and only for responses whose body arrived complete.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from gossamer.http.message import Headers

CacheKey = tuple[bytes, bytes, bytes, bytes]  # method, authority, path, query


class CachedResponse:
    """One stored response: `head_only` for the answer to a HEAD (its fields keep the
    Content-Length, the body is empty)."""

    __slots__ = ("body", "head_only", "headers", "status", "stored_at")

    def __init__(
        self, stored_at: float, status: int, headers: Headers, body: bytes, head_only: bool
    ) -> None:
        self.stored_at = stored_at
        self.status = status
        self.headers = headers
        self.body = body
        self.head_only = head_only

    def __repr__(self) -> str:
        return f"CachedResponse({self.status}, {len(self.body)} bytes, at {self.stored_at:.3f})"


class ResponseCache:
    """An LRU map of `CacheKey` to `CachedResponse`; see the module docstring."""

    __slots__ = ("clock", "entries", "max_body_bytes", "max_entries")

    def __init__(self, max_entries: int, max_body_bytes: int, clock: Callable[[], float]) -> None:
        """Raises ValueError for a size that cannot hold anything."""
        if max_entries < 1:
            raise ValueError(f"maxEntries must be at least 1, not {max_entries}")
        if max_body_bytes < 0:
            raise ValueError(f"maxBodyBytes must not be negative, not {max_body_bytes}")
        self.max_entries = max_entries
        self.max_body_bytes = max_body_bytes
        self.clock = clock
        self.entries: OrderedDict[CacheKey, CachedResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    def put(
        self, key: CacheKey, status: int, headers: Headers, body: bytes, head_only: bool
    ) -> bool:
        """Keep this response for `key` (replacing an older one); False when the body is over
        `max_body_bytes` (nothing kept)."""
        if len(body) > self.max_body_bytes:
            return False
        entries = self.entries
        entries[key] = CachedResponse(self.clock(), status, headers, body, head_only)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
        return True

    def get(self, key: CacheKey, max_age: float) -> CachedResponse | None:
        """The response kept for `key` if it is at most `max_age` seconds old, else None
        (a too old one is dropped)."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if self.clock() - entry.stored_at > max_age:
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return entry

    def __repr__(self) -> str:
        return f"ResponseCache({len(self.entries)}/{self.max_entries} entries)"
