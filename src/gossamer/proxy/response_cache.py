"""The last good responses of a route rule, kept so its fallback can serve them stale.

One `ResponseCache` per rule whose fallback has `max_stale`: the last shareable response (head
fields and whole body, at most `max_body_bytes`) to each GET/HEAD request, keyed by (method,
authority, path, query), least recently used first out past `max_entries`. Times come from the
injected clock (the event loop's), so tests drive staleness without waiting. Only the exchange
writes here, through a `Capture`, and only for responses whose body arrived complete.

What is shared between clients, and what never is (the rules of a shared HTTP cache, as Varnish's
and Envoy's cache filter users expect):

- a request with `Authorization`, `Cookie` or `Range` is never captured, and one with
  `Authorization` or `Cookie` is never served from the cache (it may carry its own answer);
- only statuses 200, 203 and 204 are kept;
- a response with `Set-Cookie`, `Cache-Control: private`, `no-store` or `no-cache`, or `Vary: *`
  is not kept;
- a response with another `Vary` is kept with the request's values of the fields it names, and
  served only to a request with the same values (one variant per key: the last one received).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from gossamer.http.http1 import BODY_HEAD
from gossamer.http.message import Headers, RequestHead, ResponseHead

CacheKey = tuple[bytes, bytes, bytes, bytes]  # method, authority, path, query
Varied = tuple[tuple[bytes, bytes | None], ...]  # the Vary fields and the request's values

KEPT_STATUSES = frozenset((200, 203, 204))
_CACHEABLE_METHODS = (b"GET", b"HEAD")
_PRIVATE_REQUEST = frozenset((b"authorization", b"cookie"))  # never captured nor served
_NOT_CAPTURED_REQUEST = _PRIVATE_REQUEST | {b"range"}
_UNSHAREABLE_DIRECTIVES = frozenset((b"private", b"no-store", b"no-cache"))


class CachedResponse:
    """One stored response: `head_only` for the answer to a HEAD (its fields keep the
    Content-Length, the body is empty); `vary` the request values it may be served for."""

    __slots__ = ("body", "head_only", "headers", "status", "stored_at", "vary")

    def __init__(
        self,
        stored_at: float,
        status: int,
        headers: Headers,
        body: bytes,
        head_only: bool,
        vary: Varied = (),
    ) -> None:
        self.stored_at = stored_at
        self.status = status
        self.headers = headers
        self.body = body
        self.head_only = head_only
        self.vary = vary

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
        self,
        key: CacheKey,
        status: int,
        headers: Headers,
        body: bytes,
        head_only: bool,
        vary: Varied = (),
    ) -> bool:
        """Keep this response for `key` (replacing an older one); False when the body is over
        `max_body_bytes` (nothing kept). The caller has checked that it may be shared."""
        if len(body) > self.max_body_bytes:
            return False
        entries = self.entries
        entries[key] = CachedResponse(self.clock(), status, headers, body, head_only, vary)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
        return True

    def get(
        self, key: CacheKey, max_age: float, request: Headers | None = None
    ) -> CachedResponse | None:
        """The response kept for `key` if it is at most `max_age` seconds old and `request` (the
        request's fields) has the values its Vary named, else None (a too old one is dropped)."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        if self.clock() - entry.stored_at > max_age:
            del self.entries[key]
            return None
        for name, value in entry.vary:
            if _joined(request or (), name) != value:
                return None
        self.entries.move_to_end(key)
        return entry

    def lookup(self, head: RequestHead, max_age: float) -> CachedResponse | None:
        """What may be served to this request, if anything (see the module docstring)."""
        if head.method not in _CACHEABLE_METHODS:
            return None
        for k, _ in head.headers:
            if k in _PRIVATE_REQUEST:
                return None
        return self.get((head.method, head.host, head.path, head.query), max_age, head.headers)

    def capture(self, head: RequestHead) -> Capture | None:
        """A `Capture` for this request's response, or None when its response is never kept."""
        if head.method not in _CACHEABLE_METHODS:
            return None
        for k, _ in head.headers:
            if k in _NOT_CAPTURED_REQUEST:
                return None
        return Capture(self, (head.method, head.host, head.path, head.query))

    def __repr__(self) -> str:
        return f"ResponseCache({len(self.entries)}/{self.max_entries} entries)"


class Capture:
    """One response on its way to the client, kept (chunks by reference, no copies) until it
    ends whole; made only for rules with a cache, so a plain exchange carries a single None."""

    __slots__ = ("cache", "chunks", "head", "key", "length", "room")

    def __init__(self, cache: ResponseCache, key: CacheKey) -> None:
        self.cache = cache
        self.key = key
        self.head: ResponseHead | None = None
        self.chunks: list[bytes] = []
        self.length = 0
        self.room = cache.max_body_bytes

    def begin(self, head: ResponseHead, body_length: int) -> bool:
        """The response head is going out; False when this response is not kept (its status,
        or a declared length over the limit)."""
        if head.status not in KEPT_STATUSES or body_length > self.room:
            return False
        self.head = head
        self.length = body_length
        return True

    def add(self, data: bytes) -> bool:
        """A body chunk; False once the body is over the limit (a chunked one: not kept)."""
        self.room -= len(data)
        if self.room < 0:
            return False
        self.chunks.append(data)
        return True

    def keep(self, request: RequestHead, dropped: frozenset[bytes]) -> bool:
        """The response ended whole: store it unless its fields say it must not be shared.
        `dropped`: fields not stored (framing, hop-by-hop, the proxy's own flags)."""
        head = self.head
        if head is None:
            return False
        vary = varied(head.headers, request.headers)
        if vary is None:
            return False
        head_only = self.length == BODY_HEAD
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        fields = [
            (k, v)
            for k, v in head.headers
            if k not in dropped and (head_only or k != b"content-length")
        ]
        return self.cache.put(self.key, head.status, fields, body, head_only, vary)


def varied(response: Headers, request: Headers) -> Varied | None:
    """None when a response must not be shared (Set-Cookie; Cache-Control private, no-store or
    no-cache; Vary: *), else the fields its Vary names with this request's values."""
    names: list[bytes] = []
    for k, v in response:
        if k == b"set-cookie":
            return None
        if k == b"cache-control":
            for directive in v.lower().split(b","):
                if directive.partition(b"=")[0].strip() in _UNSHAREABLE_DIRECTIVES:
                    return None
        elif k == b"vary":
            for name in v.lower().split(b","):
                name = name.strip()
                if name == b"*":
                    return None
                if name and name not in names:
                    names.append(name)
    return tuple((name, _joined(request, name)) for name in names)


def _joined(headers: Headers | tuple[()], name: bytes) -> bytes | None:
    """All values of one field, joined as a list (None when absent)."""
    values = [v for k, v in headers if k == name]
    if not values:
        return None
    return values[0] if len(values) == 1 else b", ".join(values)
