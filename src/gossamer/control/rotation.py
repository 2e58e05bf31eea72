"""Root rotation's persisted state and the checks that move it from one phase to the next."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import msgspec

from gossamer.control.distribute import ProxyState, ProxyStatus
from gossamer.control.registry import Registration

# distributing: the new root is in the bundle next to the old one; every registered proxy (healthy
#   or not: an unhealthy one may still serve) must ACK a snapshot that carries it before anything
#   is issued from the new CA (else a proxy that does not trust it yet would refuse its peers' new
#   SVIDs). A proxy that is really gone stops holding it up when its registration expires.
# reissuing: the new CA issues; every registered proxy must report an SVID from it before the old
#   root leaves the bundle (else a peer still serving an old SVID would be refused).
# done: the old CA is gone from the bundle and its key archived.
Phase = Literal["distributing", "reissuing", "done"]
ACTIVE_PHASES: tuple[Phase, ...] = ("distributing", "reissuing")
DEFAULT_PHASE_TIMEOUT = 300.0


class PhaseEvent(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """When a rotation entered a phase (unix seconds of the control plane's clock)."""

    phase: Phase
    at: float


class RotationState(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """One root rotation, persisted with the CA so that a restarted control plane resumes it.

    `old` and `new` are the SHA-256 fingerprints of the signing CA certificates before and after;
    `new_root` is the root the new CA chains to (what every proxy must trust before the switch).
    """

    id: str
    phase: Phase
    old: str
    new: str
    new_root: str
    started: float
    phase_started: float
    phase_timeout: float = DEFAULT_PHASE_TIMEOUT
    imported: bool = False
    automatic: bool = False  # started by the control plane: its generated root expires soon
    history: tuple[PhaseEvent, ...] = ()
    finished: float | None = None

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    def enter(self, phase: Phase, now: float) -> RotationState:
        """This rotation moved on to `phase` at `now`."""
        return msgspec.structs.replace(
            self,
            phase=phase,
            phase_started=now,
            history=(*self.history, PhaseEvent(phase=phase, at=now)),
            finished=now if phase == "done" else None,
        )

    def stalled(self, now: float) -> bool:
        """Whether the current phase has waited on proxies for longer than `phase_timeout`."""
        return self.active and now - self.phase_started > self.phase_timeout


def bundle_pending(
    statuses: Iterable[tuple[Registration, ProxyStatus, ProxyState]], root_pem: str
) -> list[str]:
    """The registered proxies that have not yet ACKed a snapshot whose bundle holds `root_pem`.

    A proxy whose snapshot has no mTLS settings trusts no bundle at all, so it waits on nothing.
    Unhealthy proxies are waited for too: one that missed heartbeats (a partition, a paused
    process) may still serve traffic with the old bundle, and would refuse its peers' SVIDs from
    the new CA. One that is gone for good is removed when its registration expires
    (`Registry.expire_after`), which ends the wait.
    """
    pending: list[str] = []
    for reg, status, _ in statuses:
        current = status.snapshot
        if current is None:
            pending.append(reg.proxy_id)
            continue
        if current.tls is None:
            continue
        if root_pem not in current.tls.trust_bundle or status.acked_version != current.version:
            pending.append(reg.proxy_id)
    return pending


def bundle_acked(status: ProxyStatus, bundle_pem: str) -> bool | None:
    """Whether a proxy runs (ACKed) the current bundle; None when its snapshot has no mTLS."""
    current = status.snapshot
    if current is None:
        return False
    if current.tls is None:
        return None
    return current.tls.trust_bundle == bundle_pem and status.acked_version == current.version


def svid_pending(registrations: Sequence[Registration], signer: str) -> list[str]:
    """The registered proxies whose reported SVID was not issued by `signer`.

    A proxy that reports no SVID (none yet, or no mTLS) has nothing to re-issue: its first SVID
    comes from whichever CA issues then.
    """
    return [r.proxy_id for r in registrations if r.svid is not None and r.svid.signer != signer]
