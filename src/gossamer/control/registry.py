"""The registry: every proxy replica's endpoint, readiness and heartbeat health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import msgspec

from gossamer.control.store.base import Store

log = logging.getLogger(__name__)


class SvidStatus(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """The SVID a proxy serves with, as it reports in its heartbeat (for rotation and checks)."""

    spiffe_id: str
    serial: str  # hex
    not_after: float  # unix seconds
    signer: str  # SHA-256 fingerprint (hex) of the CA certificate that issued it


class Registration(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """One registered proxy (sidecar) and the endpoint it serves for its service.

    `healthy` is `ready` and a heartbeat fresher than the TTL; the registry recomputes it on its own
    timer, so the translator only reads it. `last_heartbeat` is unix seconds.
    """

    proxy_id: str
    service: str
    namespace: str = "default"
    subset: str | None = None
    labels: dict[str, str] = {}
    zone: str | None = None
    inbound: str  # "host:port", the endpoint address other proxies send to
    outbound: str = ""
    admin: str = ""
    app_port: int = 0
    ready: bool = False
    healthy: bool = False
    last_heartbeat: float = 0.0
    svid: SvidStatus | None = None  # None: no SVID yet (or a proxy without mTLS)
    # The SPIFFE ID (client SVID) that registered this proxy id: only it may act on it after.
    identity: str = ""


REGISTRY_PREFIX = "/registry/"
# A registration whose heartbeats stopped this many TTLs ago (and at least EXPIRE_MIN seconds) is
# removed: a proxy that is gone for good must not hold up a root rotation, nor its id forever.
EXPIRE_TTLS = 20
EXPIRE_MIN = 60.0
# How many proxy ids one SPIFFE identity may hold: one SVID cannot fill the registry.
DEFAULT_MAX_PER_IDENTITY = 256


class RegistrationLimitError(Exception):
    """An identity already holds as many registrations as it may; the message says how many."""


def default_expire_after(ttl: float) -> float:
    """How long after its last heartbeat a registration is removed, for heartbeat TTL `ttl`."""
    return max(EXPIRE_TTLS * ttl, EXPIRE_MIN)


_encoder = msgspec.json.Encoder(order="deterministic")
_decoder = msgspec.json.Decoder(Registration)


def registry_key(proxy_id: str) -> str:
    return f"{REGISTRY_PREFIX}{proxy_id}"


class Registry:
    """Registered proxies with health, persisted under `/registry/{proxyId}`.

    Heartbeats are kept in memory only (writing each one would churn the store's revision and wake
    every watcher once a second per proxy); registrations and readiness changes are written. A
    heartbeat is fresh for `ttl` seconds of `clock` (unix seconds, injected so tests drive it);
    `sweep()` marks stale ones unhealthy and `run()` calls it on a loop timer at the next expiry.
    A registration silent for `expire_after` seconds is removed (`expire()`, also from `run()`).
    One identity may hold at most `max_per_identity` registrations.
    """

    def __init__(
        self,
        store: Store,
        *,
        ttl: float,
        clock: Callable[[], float],
        expire_after: float | None = None,
        max_per_identity: int = DEFAULT_MAX_PER_IDENTITY,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"heartbeat ttl must be positive, got {ttl}")
        expire_after = default_expire_after(ttl) if expire_after is None else expire_after
        if expire_after <= ttl:
            raise ValueError(
                f"registration expiry must be longer than the heartbeat ttl ({ttl}), "
                f"got {expire_after}"
            )
        if max_per_identity < 1:
            raise ValueError(f"max registrations per identity must be >= 1, got {max_per_identity}")
        self._store = store
        self.ttl = ttl
        self.expire_after = expire_after
        self.max_per_identity = max_per_identity
        self._clock = clock
        self._entries: dict[str, Registration] = {}
        self._listeners: list[Callable[[], None]] = []
        self._wake = asyncio.Event()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener()` whenever an endpoint appears, goes, or changes readiness or health."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        self._wake.set()
        for listener in self._listeners:
            listener()

    async def load(self) -> int:
        """Load persisted registrations, each with a fresh heartbeat; returns how many."""
        items, _ = await self._store.list(REGISTRY_PREFIX)
        now = self._clock()
        for kv in items:
            try:
                reg = _decoder.decode(kv.value)
            except msgspec.DecodeError as exc:
                log.warning("skipping unreadable registration %s: %s", kv.key, exc)
                continue
            self._entries[reg.proxy_id] = msgspec.structs.replace(
                reg, last_heartbeat=now, healthy=reg.ready
            )
        if items:
            self._changed()
        return len(self._entries)

    def get(self, proxy_id: str) -> Registration | None:
        return self._entries.get(proxy_id)

    def endpoints(self, service: str | None = None) -> list[Registration]:
        """Every registration (or those of `service`), ordered by proxy id; proxies without an
        app included (see `app_endpoints`)."""
        return [
            reg
            for _, reg in sorted(self._entries.items())
            if service is None or reg.service == service
        ]

    def app_endpoints(self, service: str | None = None) -> list[Registration]:
        """The registrations that are endpoints of their service (or of `service`), by proxy id.

        A proxy with no app behind it (`appPort` 0: a `publish` front door) is registered, and
        is listed among the proxies, but serves no requests for its service, so it is no endpoint
        (the translator leaves it out of clusters for the same reason).
        """
        return [reg for reg in self.endpoints(service) if reg.app_port]

    def count_identity(self, identity: str) -> int:
        """How many registrations `identity` holds."""
        return sum(1 for reg in self._entries.values() if reg.identity == identity)

    async def register(self, registration: Registration) -> Registration:
        """Add or replace a proxy's registration; it starts with a fresh heartbeat.

        Raises:
            RegistrationLimitError: a new proxy id for an identity that holds `max_per_identity`.
        """
        reg = msgspec.structs.replace(
            registration, last_heartbeat=self._clock(), healthy=registration.ready
        )
        old = self._entries.get(reg.proxy_id)
        if reg.identity and (old is None or old.identity != reg.identity):
            held = self.count_identity(reg.identity)
            if held >= self.max_per_identity:
                raise RegistrationLimitError(
                    f"{reg.identity} already holds {held} proxy registrations, the limit is "
                    f"{self.max_per_identity}: deregister unused proxy ids first (or wait "
                    f"{self.expire_after:g}s after their last heartbeat for them to expire)"
                )
        if old is None or _persisted(old) != _persisted(reg):
            await self._store.put(registry_key(reg.proxy_id), _persisted(reg))
        self._entries[reg.proxy_id] = reg
        if old is None or _visible(old) != _visible(reg):
            self._changed()
        return reg

    async def heartbeat(
        self, proxy_id: str, ready: bool | None = None, svid: SvidStatus | None = None
    ) -> bool:
        """Record a heartbeat; False when the proxy is unknown (it should register again).

        `svid`: the SVID the proxy serves with now; None keeps the last one reported.
        """
        old = self._entries.get(proxy_id)
        if old is None:
            return False
        ready = old.ready if ready is None else ready
        reg = msgspec.structs.replace(
            old,
            ready=ready,
            healthy=ready,
            last_heartbeat=self._clock(),
            svid=old.svid if svid is None else svid,
        )
        if reg.ready != old.ready or reg.svid != old.svid:
            await self._store.put(registry_key(proxy_id), _persisted(reg))
        if proxy_id in self._entries:  # not deregistered while the write was in flight
            self._entries[proxy_id] = reg
            if _visible(old) != _visible(reg):
                self._changed()
        return True

    async def deregister(self, proxy_id: str) -> bool:
        """Forget a proxy; False when it was not registered."""
        if self._entries.pop(proxy_id, None) is None:
            return False
        await self._store.delete(registry_key(proxy_id))
        self._changed()
        return True

    def sweep(self) -> bool:
        """Mark proxies whose heartbeat is older than the TTL unhealthy; True if any changed."""
        now = self._clock()
        changed = False
        for proxy_id, reg in list(self._entries.items()):
            if reg.healthy and now - reg.last_heartbeat >= self.ttl:
                self._entries[proxy_id] = msgspec.structs.replace(reg, healthy=False)
                changed = True
        if changed:
            self._changed()
        return changed

    async def expire(self) -> list[str]:
        """Remove the registrations whose last heartbeat is `expire_after` old; their ids."""
        now = self._clock()
        gone = [
            proxy_id
            for proxy_id, reg in sorted(self._entries.items())
            if now - reg.last_heartbeat >= self.expire_after
        ]
        removed: list[str] = []
        for proxy_id in gone:
            reg = self._entries.get(proxy_id)
            # Checked again: a heartbeat may have come while an earlier delete was written.
            if reg is None or self._clock() - reg.last_heartbeat < self.expire_after:
                continue
            del self._entries[proxy_id]
            await self._store.delete(registry_key(proxy_id))
            removed.append(proxy_id)
        if removed:
            log.info(
                "removed %d registration%s silent for %gs or more: %s",
                len(removed),
                "" if len(removed) == 1 else "s",
                self.expire_after,
                ", ".join(removed[:10]) + (" ..." if len(removed) > 10 else ""),
            )
            self._changed()
        return removed

    def next_expiry(self) -> float | None:
        """Clock time when the next healthy proxy goes stale, or None when none is healthy."""
        deadlines = [r.last_heartbeat + self.ttl for r in self._entries.values() if r.healthy]
        return min(deadlines) if deadlines else None

    def next_removal(self) -> float | None:
        """Clock time when the next registration expires, or None when there is none."""
        deadlines = [r.last_heartbeat + self.expire_after for r in self._entries.values()]
        return min(deadlines) if deadlines else None

    async def run(self) -> None:
        """Sweep at each expiry, and remove expired registrations; runs until cancelled."""
        while True:
            self.sweep()
            try:
                await self.expire()
                candidates = [self.next_expiry(), self.next_removal()]
            except Exception:
                # A store error must not end the registry's task: the next sweep retries.
                log.exception("removing expired registrations failed; retrying")
                candidates = [self.next_expiry()]
            deadlines = [d for d in candidates if d is not None]
            # Heartbeats only push deadlines later, and a new registration expires at least `ttl`
            # from now, so sleeping until the earliest deadline (at most `ttl`) misses none.
            delay = self.ttl if not deadlines else min(deadlines) - self._clock()
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the wait completes, and close() would then wait on this task forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(max(delay, 0.01), self.ttl)):
                    await self._wake.wait()


def _persisted(reg: Registration) -> bytes:
    # Health and heartbeat time are not persisted: a restarted control plane gives every
    # registration a fresh TTL instead.
    return _encoder.encode(msgspec.structs.replace(reg, healthy=False, last_heartbeat=0.0))


def _visible(reg: Registration) -> Registration:
    """The part of a registration the translator sees change (not the heartbeat time)."""
    return msgspec.structs.replace(reg, last_heartbeat=0.0)
