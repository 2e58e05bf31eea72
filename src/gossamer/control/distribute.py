"""Distribution: one Snapshot per proxy, long-poll delivery, and ACK/NACK tracking."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from gossamer import snapshot as snap
from gossamer.config.models import Resource
from gossamer.control.registry import Registration, Registry

if TYPE_CHECKING:
    from gossamer.control.translate import Trust

log = logging.getLogger(__name__)

ProxyState = Literal["ACK", "NACK", "PENDING", "STALE"]


class TranslateFn(Protocol):
    """The translator's shape (control/translate.py `translate`); tests inject stand-ins."""

    def __call__(
        self,
        resources: Sequence[Resource],
        endpoints: Sequence[Registration],
        proxy: snap.ProxyIdentity,
        /,
        *,
        trust: Trust | None = None,
    ) -> snap.Snapshot: ...


def _default_translate() -> TranslateFn:
    from gossamer.control.translate import translate

    return translate


@dataclass(slots=True)
class ProxyStatus:
    """What the control plane knows of one proxy's configuration."""

    proxy_id: str
    snapshot: snap.Snapshot | None = None  # the latest built for it
    sent_version: str | None = None  # the latest a poll returned
    acked_version: str | None = None
    nacked_version: str | None = None
    error: str | None = None  # the reason of the last NACK
    last_contact: float = 0.0  # unix seconds (the injected clock)
    polling: int = 0  # long polls in flight: a proxy waiting on one is in contact
    changed: asyncio.Event | None = None  # set and replaced whenever `snapshot` changes version
    built_at: float = 0.0  # when `snapshot`'s version was built (the injected clock)
    answered_version: str | None = None  # the latest version an ACK/NACK was timed for


class UnknownProxyError(KeyError):
    """The proxy is not registered."""


class Distributor:
    """Recomputes every registered proxy's Snapshot on change and wakes its long poll.

    Sources call `mark_dirty()`; the `run()` loop waits `debounce` seconds so a burst of changes
    (an apply of twenty resources, a control plane start with all proxies re-registering) costs one
    recomputation, then translates for each proxy and wakes the polls whose version changed.
    """

    def __init__(
        self,
        resources: Callable[[], Sequence[Resource]],
        registry: Registry,
        *,
        clock: Callable[[], float],
        translate: TranslateFn | None = None,
        debounce: float = 0.015,
        trust: Callable[[], Trust] | None = None,
    ) -> None:
        """`trust` is read at each recomputation: after changing the CA's bundle or signer, call
        `mark_dirty()` and every proxy gets it in its next Snapshot."""
        self._resources = resources
        self._trust = trust
        self._registry = registry
        self._clock = clock
        self._translate = translate or _default_translate()
        self._debounce = debounce
        self._status: dict[str, ProxyStatus] = {}
        self._dirty = asyncio.Event()
        self.recomputations = 0
        # Told of each ACK/NACK: ok, and seconds from the version's build (None: not timed).
        self.on_answer: Callable[[bool, float | None], None] | None = None

    def mark_dirty(self) -> None:
        self._dirty.set()

    async def run(self) -> None:
        """Recompute after each burst of changes; runs until cancelled."""
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self._debounce)
            self._dirty.clear()
            self.recompute()

    # --- building --------------------------------------------------------------------------------

    def _identity(self, reg: Registration) -> snap.ProxyIdentity:
        return snap.ProxyIdentity(
            proxy_id=reg.proxy_id,
            service=reg.service,
            namespace=reg.namespace,
            subset=reg.subset,
            labels=dict(reg.labels),
        )

    def _build(
        self,
        reg: Registration,
        resources: Sequence[Resource],
        endpoints: Sequence[Registration],
        trust: Trust | None,
    ) -> snap.Snapshot | None:
        try:
            return self._translate(resources, endpoints, self._identity(reg), trust=trust)
        except Exception:
            # A translator failure for one proxy must not stop the others; it keeps its last one.
            log.exception("cannot build the snapshot of proxy %s", reg.proxy_id)
            return None

    def _status_of(self, proxy_id: str) -> ProxyStatus:
        status = self._status.get(proxy_id)
        if status is None:
            status = self._status[proxy_id] = ProxyStatus(proxy_id, changed=asyncio.Event())
        return status

    def _store_snapshot(self, status: ProxyStatus, built: snap.Snapshot) -> None:
        old = status.snapshot
        status.snapshot = built
        if old is None or old.version != built.version:
            status.built_at = self._clock()
            assert status.changed is not None
            status.changed.set()
            status.changed = asyncio.Event()

    def recompute(self) -> None:
        """Rebuild every registered proxy's Snapshot now; drop the state of deregistered ones."""
        self.recomputations += 1
        resources = self._resources()
        endpoints = self._registry.endpoints()
        trust = self._trust() if self._trust is not None else None
        live = {reg.proxy_id for reg in endpoints}
        for proxy_id in list(self._status):
            if proxy_id not in live:
                gone = self._status.pop(proxy_id)
                if gone.changed is not None:
                    gone.changed.set()  # release its polls; they find the proxy unknown
        for reg in endpoints:
            built = self._build(reg, resources, endpoints, trust)
            if built is not None:
                self._store_snapshot(self._status_of(reg.proxy_id), built)

    def snapshot(self, proxy_id: str) -> snap.Snapshot:
        """The proxy's current Snapshot, built now if it has none yet.

        Raises:
            UnknownProxyError: the proxy is not registered.
        """
        reg = self._registry.get(proxy_id)
        if reg is None:
            raise UnknownProxyError(proxy_id)
        status = self._status_of(proxy_id)
        if status.snapshot is None:
            trust = self._trust() if self._trust is not None else None
            built = self._build(reg, self._resources(), self._registry.endpoints(), trust)
            if built is None:
                raise RuntimeError(f"cannot build the snapshot of proxy {proxy_id}")
            self._store_snapshot(status, built)
        assert status.snapshot is not None
        return status.snapshot

    # --- the proxy's calls -----------------------------------------------------------------------

    def touch(self, proxy_id: str) -> None:
        """Note that the proxy was heard from (register, heartbeat, poll, ack)."""
        if self._registry.get(proxy_id) is not None:
            self._status_of(proxy_id).last_contact = self._clock()

    async def poll(self, proxy_id: str, version: str | None, wait: float) -> snap.Snapshot | None:
        """The proxy's Snapshot once its version differs from `version`; None after `wait` s.

        Raises:
            UnknownProxyError: the proxy is not registered (or was deregistered while waiting).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(wait, 0.0)
        while True:
            current = self.snapshot(proxy_id)
            status = self._status_of(proxy_id)
            status.last_contact = self._clock()
            if current.version != version:
                status.sent_version = current.version
                return current
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            assert status.changed is not None
            status.polling += 1
            try:
                async with asyncio.timeout(remaining):
                    await status.changed.wait()
            except TimeoutError:
                self.touch(proxy_id)
                return None
            finally:
                status.polling -= 1

    def ack(self, proxy_id: str, version: str, ok: bool, error: str | None) -> None:
        """Record the proxy's answer to a Snapshot version.

        Raises:
            UnknownProxyError: the proxy is not registered.
        """
        if self._registry.get(proxy_id) is None:
            raise UnknownProxyError(proxy_id)
        status = self._status_of(proxy_id)
        status.last_contact = self._clock()
        if self.on_answer is not None:
            latency = None
            current = status.snapshot.version if status.snapshot is not None else None
            if version == current and status.answered_version != version:
                status.answered_version = version
                latency = status.last_contact - status.built_at
            self.on_answer(ok, latency)
        if ok:
            status.acked_version = version
            status.nacked_version = None
            status.error = None
        else:
            status.nacked_version = version
            status.error = error or "rejected without a reason"
            log.warning("proxy %s rejected snapshot %s: %s", proxy_id, version, status.error)

    def state(self, proxy_id: str) -> ProxyState:
        status = self._status_of(proxy_id)
        if not status.polling and self._clock() - status.last_contact > self._registry.ttl:
            return "STALE"
        current = status.snapshot.version if status.snapshot is not None else None
        if status.nacked_version is not None and status.nacked_version == current:
            return "NACK"
        if current is not None and status.acked_version == current:
            return "ACK"
        return "PENDING"

    def statuses(self) -> list[tuple[Registration, ProxyStatus, ProxyState]]:
        """Every registered proxy with its status and state, ordered by proxy id."""
        return [
            (reg, self._status_of(reg.proxy_id), self.state(reg.proxy_id))
            for reg in self._registry.endpoints()
        ]
