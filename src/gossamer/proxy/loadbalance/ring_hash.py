"""RING_HASH: a Ketama-style consistent hash ring, and the request hash key it routes on.

Each endpoint owns points on a 64-bit ring, placed by hashing "<address>#<block>": an endpoint of
the highest weight gets `minimum_ring_size` of them, the others proportionally fewer. A key goes to
the owner of the first point at or after its hash (wrapping round). Points depend only on an
endpoint's own address and relative weight, not on the other members, so adding or removing one of
n endpoints moves only about 1/n of the keys, and every proxy maps a key to the same endpoint. An
unavailable owner passes its keys on to the next available one clockwise. Without a key the pick
is a random available endpoint.

Hashes are BLAKE2b (deterministic across processes, unlike `hash()`).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from collections.abc import Sequence
from hashlib import blake2b

from gossamer import snapshot as snap
from gossamer.http.message import RequestHead
from gossamer.proxy.loadbalance.base import EndpointState, Sampler

MAXIMUM_RING_SIZE = 1 << 16
_OWNER_BITS = 20  # the low bits of a ring point hold its owner's index
_OWNER_MASK = (1 << _OWNER_BITS) - 1


def ring_point(data: bytes) -> int:
    """The 64-bit ring position of a key."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


def endpoint_points(address: str, count: int) -> list[int]:
    """`count` ring positions of an endpoint (owner bits cleared), sorted; eight per BLAKE2b
    digest of "<address>#<block>", so the first k of them do not depend on `count`."""
    prefix = address.encode() + b"#"
    points: list[int] = []
    for block in range((count + 7) // 8):
        digest = blake2b(prefix + str(block).encode()).digest()
        points.extend(
            int.from_bytes(digest[j : j + 8], "big") & ~_OWNER_MASK for j in range(0, 64, 8)
        )
    del points[count:]
    points.sort()
    return points


class RingHash:
    """Ketama-style ring. Each endpoint of the highest weight gets `minimum_ring_size` points,
    the others proportionally fewer, so an endpoint's points do not depend on the other members
    (the ring size is at least `minimum_ring_size`). Above `maximum_ring_size` points in all, every
    count is scaled down. Points are cached per endpoint, so a membership change hashes only the
    new endpoints."""

    def __init__(
        self,
        rand: random.Random,
        minimum_ring_size: int = 1024,
        maximum_ring_size: int = MAXIMUM_RING_SIZE,
    ) -> None:
        if minimum_ring_size < 1:
            raise ValueError(f"minimum_ring_size {minimum_ring_size} must be at least 1")
        self._minimum = min(minimum_ring_size, maximum_ring_size)
        self._maximum = maximum_ring_size
        self._sampler = Sampler(rand.random)
        self._points: list[int] = []
        self._owners: list[EndpointState] = []
        self._cache: dict[tuple[str, int], list[int]] = {}

    @property
    def ring_size(self) -> int:
        return len(self._points)

    def update(self, endpoints: Sequence[EndpointState]) -> None:
        """Rebuild the ring from the cached points of the endpoints.

        Raises:
            ValueError: more endpoints than the ring can index (2**20).
        """
        eps = [e for e in endpoints if e.weight > 0]
        if len(eps) > _OWNER_MASK:
            raise ValueError(f"ring hash: {len(eps)} endpoints is more than {_OWNER_MASK}")
        self._sampler.update(eps)
        if not eps:
            self._points, self._owners, self._cache = [], [], {}
            return
        top = max(e.weight for e in eps)
        counts = [max(math.ceil(self._minimum * e.weight / top), 1) for e in eps]
        total = sum(counts)
        if total > self._maximum:
            counts = [max(c * self._maximum // total, 1) for c in counts]
        cache: dict[tuple[str, int], list[int]] = {}
        ring: list[int] = []
        for idx, (e, count) in enumerate(zip(eps, counts, strict=True)):
            key = (e.address, count)
            points = self._cache.get(key)
            if points is None:
                points = endpoint_points(e.address, count)
            cache[key] = points
            ring.extend([p | idx for p in points])
        ring.sort()  # runs of sorted points: timsort merges them
        self._cache = cache
        self._points = ring
        self._owners = [eps[p & _OWNER_MASK] for p in ring]

    def pick(self, hash_key: bytes | None = None) -> EndpointState | None:
        """The owner of the key's point, or the next available one clockwise; a random available
        endpoint when `hash_key` is None; None when no endpoint is available."""
        if hash_key is None:
            return self._sampler.one()
        points = self._points
        n = len(points)
        if n == 0:
            return None
        i = bisect_left(points, ring_point(hash_key))
        if i == n:
            i = 0
        owners = self._owners
        e = owners[i]
        if e.healthy and not e.ejected:
            return e
        if not any(x.healthy and not x.ejected for x in self._sampler.endpoints):
            return None
        for _ in range(n):
            i = i + 1 if i + 1 < n else 0
            e = owners[i]
            if e.healthy and not e.ejected:
                return e
        return None  # unreachable: an available endpoint owns at least one point


class HashKeyExtractor:
    """Takes the ring-hash key from a request: a header's first value, or a cookie's value.

    Build one per cluster from its `snapshot.RingHash` and call it per request; it returns None
    when the header or cookie is absent (the balancer then picks at random).
    """

    __slots__ = ("cookie", "header")

    def __init__(self, config: snap.RingHash | None) -> None:
        self.header = config.header.lower().encode("latin-1") if config and config.header else None
        self.cookie = config.cookie.encode("latin-1") if config and config.cookie else None

    def __call__(self, head: RequestHead) -> bytes | None:
        header = self.header
        if header is not None:
            for k, v in head.headers:
                if k == header:
                    return v
            return None
        cookie = self.cookie
        if cookie is None:
            return None
        for k, v in head.headers:
            if k == b"cookie":
                value = cookie_value(v, cookie)
                if value is not None:
                    return value
        return None


def cookie_value(header: bytes, name: bytes) -> bytes | None:
    """The value of cookie `name` in one Cookie header ("a=1; b=2"), quotes removed; None when
    absent."""
    for part in header.split(b";"):
        k, sep, v = part.partition(b"=")
        if sep and k.strip() == name:
            v = v.strip()
            if len(v) >= 2 and v[:1] == b'"' and v[-1:] == b'"':
                v = v[1:-1]
            return v
    return None
