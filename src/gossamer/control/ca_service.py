"""The mesh CA in the control plane: its CAs across restarts, SVIDs, rotation, the API's cert."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import os
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gossamer.control.client import CA_BUNDLE_FILE
from gossamer.control.distribute import Distributor
from gossamer.control.registry import Registry
from gossamer.control.rotation import (
    DEFAULT_PHASE_TIMEOUT,
    RotationState,
    bundle_acked,
    bundle_pending,
    svid_pending,
)
from gossamer.control.store.base import Store
from gossamer.control.translate import Trust
from gossamer.security.bundle import (
    TrustBundle,
    describe_remaining,
    expires_within,
    fingerprint,
    past_half_life,
)
from gossamer.security.ca import (
    DEFAULT_SVID_TTL,
    EXPIRY_WARNING,
    CaError,
    CertificateAuthority,
    Svid,
    subject_of,
    trust_domain_of,
)
from gossamer.security.csr import (
    KeyFileError,
    private_key_pem,
    read_private_bytes,
    write_file_atomic,
    write_private_file,
)
from gossamer.security.spiffe import SpiffeId, control_plane_id

log = logging.getLogger("gossamer.control.ca")

DEFAULT_TRUST_DOMAIN = "gossamer.local"
# The CAs, which one issues, and the rotation under way, as one JSON document (one atomic write).
STATE_KEY = "/ca/state"
# The layout before rotation existed: one root certificate. Migrated to STATE_KEY at start.
LEGACY_ROOT_KEY = "/ca/root.pem"
# The issuing CA's key; the other CAs' keys are KEYS_DIR/<fingerprint>.pem, retired ones are
# moved to RETIRED_DIR. All 0600, in the state dir only.
KEY_FILE = "ca-key.pem"
KEYS_DIR = "ca-keys"
RETIRED_DIR = "ca-keys/retired"
BUNDLE_FILE = CA_BUNDLE_FILE
SERVING_CERT_FILE = "api-cert.pem"
SERVING_KEY_FILE = "api-key.pem"
# Re-issued at every start and rotation, so a year only matters for a control plane that never
# restarts.
SERVING_CERT_VALIDITY = dt.timedelta(days=365)
POLL_INTERVAL = 0.25
IDLE_CHECK_INTERVAL = 3600.0
# A generated root this close to its end is rotated by the control plane itself.
AUTO_ROTATE_BEFORE = EXPIRY_WARNING

Origin = Literal["generated", "imported"]


class CaImportError(CaError):
    """An operator's CA (or a rotation request) is refused; nothing was changed."""


class RotationConflictError(CaError):
    """A rotation is already under way."""


class AuthorityRecord(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """One CA the mesh trusts: its certificate and the chain up to its root (never its key)."""

    fingerprint: str  # of `cert`
    cert: str
    chain: str = ""  # the issuers above `cert`, nearest first, ending with the root
    origin: Origin = "generated"
    added: float = 0.0


class CaState(msgspec.Struct, kw_only=True, frozen=True, rename="camel"):
    """Everything the store keeps about the mesh CA under STATE_KEY."""

    version: int = 1
    trust_domain: str
    active: str  # the fingerprint of the CA certificate that issues now
    authorities: tuple[AuthorityRecord, ...]
    rotation: RotationState | None = None


_encode = msgspec.json.Encoder(order="deterministic").encode
_decode_state = msgspec.json.Decoder(CaState).decode


@dataclass(frozen=True, slots=True)
class ServingCert:
    """The control plane's own TLS certificate (leaf first) and its 0600 key, as files."""

    cert_file: Path
    key_file: Path
    spiffe_id: SpiffeId


class MeshCa:
    """The mesh's CAs: certificates in the store, private keys in 0600 files of the state dir.

    Several CAs may be trusted at once (during a root rotation); one of them issues. Keys are
    never put in the store (whose content may be dumped or backed up as JSON), never logged and
    never served. Build one with `open`.
    """

    def __init__(
        self,
        store: Store,
        state_dir: Path,
        state: CaState,
        cas: dict[str, CertificateAuthority],
        *,
        svid_ttl: dt.timedelta = DEFAULT_SVID_TTL,
        clock: Callable[[], float] = time.time,
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self._store = store
        self.state_dir = state_dir
        self.state = state
        self._cas = cas
        self.svid_ttl = svid_ttl
        self._clock = clock
        self.poll_interval = poll_interval
        # The TLS contexts that serve the API; they get the new roots and certificate on rotation.
        self._server_contexts: list[ssl.SSLContext] = []
        self._serving_hosts: list[str] | None = None
        # Who issued the certificate the API serves right now (None: no API in this process).
        self._served_by: str | None = None
        self._registry: Registry | None = None
        self._distributor: Distributor | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stall_logged: tuple[str, str] | None = None
        self._trust = self._compute_trust()
        self._issuers = self._compute_issuers()

    def __repr__(self) -> str:
        return f"MeshCa(trust_domain={self.trust_domain!r}, cas={len(self._cas)})"

    # --- opening ---------------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        store: Store,
        state_dir: Path,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        svid_ttl: dt.timedelta = DEFAULT_SVID_TTL,
        clock: Callable[[], float] = time.time,
    ) -> MeshCa:
        """Load the CAs from `store` and their keys from `state_dir`, or create a root on first
        start; a store with the old single-root layout is migrated.

        `trust_domain` only names a new root: an existing CA keeps its own.

        Raises:
            CaError: the stored CAs and the key files do not belong together, or one is missing.
        """
        now = clock()
        kv = await store.get(STATE_KEY)
        legacy = await store.get(LEGACY_ROOT_KEY)
        key_path = state_dir / KEY_FILE
        if kv is None and legacy is None:
            if key_path.exists():
                raise CaError(
                    f"{key_path} exists but the store has no mesh CA ({STATE_KEY}): refusing to "
                    "make a new root next to an old key; remove the key file to start afresh"
                )
            ca = CertificateAuthority.create_root(trust_domain, now=_utc(now))
            # The key first: a CA in the store without its key could never sign anything.
            write_private_file(key_path, ca.private_key_pem())
            state = CaState(
                trust_domain=trust_domain,
                active=fingerprint(ca.cert),
                authorities=(_record(ca, "generated", now),),
            )
            await store.put(STATE_KEY, _encode(state))
            log.info("created the mesh root CA for trust domain %s", trust_domain)
            cas = {state.active: ca}
        elif kv is None:
            assert legacy is not None
            key_pem = _read_key(key_path)
            ca = CertificateAuthority.load(legacy.value, key_pem, now=_utc(now), check_times=False)
            state = CaState(
                trust_domain=ca.trust_domain,
                active=fingerprint(ca.cert),
                authorities=(_record(ca, "generated", now),),
            )
            await store.put(STATE_KEY, _encode(state))
            await store.delete(LEGACY_ROOT_KEY)
            log.info("migrated the mesh root CA to the multi-CA layout (%s)", STATE_KEY)
            cas = {state.active: ca}
        else:
            try:
                state = _decode_state(kv.value)
            except msgspec.DecodeError as exc:
                raise CaError(f"the mesh CA's state in the store ({STATE_KEY}): {exc}") from None
            if legacy is not None:  # an interrupted migration: the new layout was written
                await store.delete(LEGACY_ROOT_KEY)
            cas = {
                record.fingerprint: _load_authority(state_dir, state, record, now)
                for record in state.authorities
            }
            if state.active not in cas:
                raise CaError(f"the mesh CA's state names issuer {state.active} but has no such CA")
        mesh_ca = cls(store, state_dir, state, cas, svid_ttl=svid_ttl, clock=clock)
        mesh_ca._place_keys()
        await mesh_ca._recover_from_expiry()
        write_file_atomic(state_dir / BUNDLE_FILE, mesh_ca.bundle_pem())
        for warning in mesh_ca.warnings():
            log.warning("%s", warning)
        return mesh_ca

    # --- what the rest of the control plane reads ----------------------------------------------

    @property
    def ca(self) -> CertificateAuthority:
        """The CA that issues now."""
        return self._cas[self.state.active]

    @property
    def trust_domain(self) -> str:
        return self.state.trust_domain

    @property
    def rotation(self) -> RotationState | None:
        return self.state.rotation

    @property
    def bundle_path(self) -> Path:
        """The trust bundle as a file, for clients such as `curl --cacert`."""
        return self.state_dir / BUNDLE_FILE

    def authorities(self) -> list[CertificateAuthority]:
        return [self._cas[r.fingerprint] for r in self.state.authorities]

    def bundle(self) -> TrustBundle:
        """Every root of every trusted CA (two during a rotation), in the order they came."""
        return TrustBundle([ca.root for ca in self.authorities()], self.trust_domain)

    def bundle_pem(self) -> bytes:
        return self.bundle().to_pem()

    def signer_fingerprint(self) -> str:
        """The SHA-256 fingerprint of the CA certificate that signs SVIDs now."""
        return self.state.active

    def trust(self) -> Trust:
        """The bundle and signer every proxy gets in its Snapshot."""
        return self._trust

    def trusted_issuers(self) -> frozenset[str]:
        """The fingerprints of every CA certificate in use (each CA and its chain up to its
        root): a client SVID signed by one of them is still trusted. Cached: read per request."""
        return self._issuers

    def sign_svid(self, csr_pem: bytes | str, spiffe_id: SpiffeId) -> Svid:
        """A workload SVID for `spiffe_id` (which the caller proved); see `sign_csr`.

        The Svid's `signer` names the CA that signed it; read it there, not from
        `signer_fingerprint()` later: a rotation may switch issuers in between.
        """
        return self.ca.sign_csr(csr_pem, spiffe_id, ttl=self.svid_ttl, now=self._now())

    def warnings(self) -> list[str]:
        """A line for each CA certificate in use that expires within 30 days, or has expired."""
        now = self._now()
        lines: list[str] = []
        for cert in self._ca_certificates():
            if expires_within(cert, EXPIRY_WARNING.days, now):
                lines.append(
                    f"CA certificate {subject_of(cert)} ({fingerprint(cert)[:16]}): "
                    f"{_life(cert, now)}; rotate it with `gossamer ca rotate`"
                )
        return lines

    # --- the API's TLS ---------------------------------------------------------------------------

    def attach_server_context(self, ctx: ssl.SSLContext) -> None:
        """Have `ctx` (the API's HTTPS listener) verify client SVIDs against the mesh's roots,
        now and after every change of roots, and serve the control plane's certificate as it is
        re-issued by a rotation."""
        ctx.load_verify_locations(cadata=self.bundle_pem().decode("ascii"))
        self._server_contexts.append(ctx)

    def issue_control_plane_cert(
        self, hosts: list[str], now: dt.datetime | None = None
    ) -> ServingCert:
        """Issue the control plane's own HTTPS certificate and write it to the state dir.

        It carries the control plane's SPIFFE ID and also DNS/IP names (see
        `CertificateAuthority.issue_server_cert`). Its key is made here and written 0600 next to
        the CA key. A rotation issues it again from the new CA for the same `hosts`.
        """
        now = now or self._now()
        spiffe_id = control_plane_id(self.trust_domain)
        names: list[x509.GeneralName] = []
        for host in dict.fromkeys(["localhost", "127.0.0.1", *hosts]):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.ca.issue_server_cert(
            key.public_key(), spiffe_id, names, validity=SERVING_CERT_VALIDITY, now=now
        )
        serving = ServingCert(
            self.state_dir / SERVING_CERT_FILE, self.state_dir / SERVING_KEY_FILE, spiffe_id
        )
        write_private_file(serving.key_file, private_key_pem(key))
        # The leaf, then every CA between it and the root (clients hold the root): with an
        # operator's intermediate issuing, that is the intermediate itself and its parents.
        issuers = (self.ca.cert, *self.ca.parents[:-1]) if self.ca.parents else ()
        chain = cert.public_bytes(serialization.Encoding.PEM) + b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in issuers
        )
        write_file_atomic(serving.cert_file, chain)
        if self._serving_hosts is None:
            # The first issue: the listener about to start serves these files.
            self._served_by = self.state.active
        self._serving_hosts = list(hosts)
        return serving

    # --- rotation --------------------------------------------------------------------------------

    async def start_rotation(
        self,
        cert_pem: str | None = None,
        key_pem: str | None = None,
        chain_pem: str | None = None,
        *,
        phase_timeout: float = DEFAULT_PHASE_TIMEOUT,
    ) -> tuple[RotationState, list[str]]:
        """Start a root rotation to a new generated root, or to an operator's CA (BYO: a root,
        or an intermediate with `chain_pem` up to its root). Returns it and any warnings.

        Raises:
            RotationConflictError: a rotation is under way.
            CaImportError: the operator's CA is unusable (the message says why); nothing changed.
        """
        async with self._lock:
            current = self.state.rotation
            if current is not None and current.active:
                raise RotationConflictError(
                    f"rotation {current.id} is already under way (phase {current.phase}): "
                    "wait for it to finish (gossamer ca status)"
                )
            if phase_timeout <= 0:
                raise CaImportError(f"phaseTimeout must be positive, got {phase_timeout:g}")
            now = self._clock()
            if cert_pem is None and key_pem is None and not chain_pem:
                new = CertificateAuthority.create_root(self.trust_domain, now=_utc(now))
                origin: Origin = "generated"
            else:
                new = self._check_import(cert_pem, key_pem, chain_pem or "", now)
                origin = "imported"
            rotation = await self._begin(new, origin, phase_timeout, now)
            return rotation, list(new.warnings)

    async def _begin(
        self,
        new: CertificateAuthority,
        origin: Origin,
        phase_timeout: float,
        now: float,
        *,
        automatic: bool = False,
    ) -> RotationState:
        fp = fingerprint(new.cert)
        rotation = RotationState(
            id=secrets.token_hex(4),
            phase="distributing",
            old=self.state.active,
            new=fp,
            new_root=fingerprint(new.root),
            started=now,
            phase_started=now,
            phase_timeout=phase_timeout,
            imported=origin == "imported",
            automatic=automatic,
        ).enter("distributing", now)
        key_file = self._key_path(fp)
        key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # The key first, as at creation: a stored CA must always find its key.
        write_private_file(key_file, new.private_key_pem())
        state = msgspec.structs.replace(
            self.state,
            authorities=(*self.state.authorities, _record(new, origin, now)),
            rotation=rotation,
        )
        try:
            await self._save(state)
        except BaseException:
            key_file.unlink(missing_ok=True)
            raise
        self._cas[fp] = new
        log.info(
            "rotation %s started%s: adding CA %s (%s, %s) to the trust bundle",
            rotation.id,
            " automatically (the issuing root expires soon)" if automatic else "",
            subject_of(new.cert),
            fp[:16],
            origin,
        )
        self._changed()
        return rotation

    async def _recover_from_expiry(self) -> None:
        """An issuing CA that has expired: every SVID and the API's certificate from it are
        already invalid, so there is nothing left to keep working by waiting on proxies. Switch
        to a new root at once (the old one stays in the bundle until the proxies have renewed),
        so that the control plane can serve and the proxies can get SVIDs again."""
        now = self._clock()
        expired = [
            c for c in (self.ca.cert, *self.ca.parents) if c.not_valid_after_utc <= _utc(now)
        ]
        if not expired:
            return
        current = self.state.rotation
        if current is not None and current.active:
            if current.phase == "distributing":
                log.error(
                    "the issuing CA has expired: switching to rotation %s's CA now", current.id
                )
                await self._switch(current, now)
            return
        log.error(
            "the issuing CA %s expired at %s: the mesh switches to a new generated root now "
            "(import your own CA afterwards with gossamer ca import if you use one)",
            subject_of(self.ca.cert),
            f"{expired[0].not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        )
        new = CertificateAuthority.create_root(self.trust_domain, now=_utc(now))
        rotation = await self._begin(new, "generated", DEFAULT_PHASE_TIMEOUT, now, automatic=True)
        await self._switch(rotation, now)

    def _due_for_automatic_rotation(self, now: float) -> bool:
        """A root the mesh generated is replaced by itself before it expires (no certificate
        doomsday); an operator's own CA is only warned about, since the operator issues its
        successor."""
        record = next(r for r in self.state.authorities if r.fingerprint == self.state.active)
        if record.origin != "generated":
            return False
        return any(
            expires_within(cert, AUTO_ROTATE_BEFORE.days, _utc(now))
            for cert in (self.ca.cert, *self.ca.parents)
        )

    def _check_import(
        self, cert_pem: str | None, key_pem: str | None, chain_pem: str, now: float
    ) -> CertificateAuthority:
        if not cert_pem:
            raise CaImportError("cert: the CA certificate is missing (give cert and key)")
        if not key_pem:
            raise CaImportError("key: the CA's private key is missing (give cert and key)")
        try:
            new = CertificateAuthority.load(
                cert_pem,
                key_pem,
                chain_pem=chain_pem,
                trust_domain=self.trust_domain,
                now=_utc(now),
            )
        except CaError as exc:
            raise CaImportError(str(exc)) from None
        for cert in (new.cert, *new.parents):
            named = trust_domain_of(cert)
            if named is not None and named != self.trust_domain:
                raise CaImportError(
                    f"{subject_of(cert)} names trust domain {named!r} (spiffe://{named}) but this "
                    f"mesh's trust domain is {self.trust_domain!r}"
                )
        fp = fingerprint(new.cert)
        if fp in self._cas:
            raise CaImportError(f"CA {subject_of(new.cert)} ({fp[:16]}) is already in this mesh")
        return new

    async def step(self) -> None:
        """Move the rotation on as far as the proxies allow now (the body of `run`)."""
        async with self._lock:
            await self._recover_from_expiry()
            while await self._advance():
                pass

    async def _advance(self) -> bool:
        rotation = self.state.rotation
        now = self._clock()
        if rotation is None or not rotation.active:
            if not self._due_for_automatic_rotation(now):
                return False
            new = CertificateAuthority.create_root(self.trust_domain, now=_utc(now))
            await self._begin(new, "generated", DEFAULT_PHASE_TIMEOUT, now, automatic=True)
            return True
        pending = self.pending()
        if pending:
            self._note_stall(rotation, now, pending)
            return False
        if rotation.phase == "distributing":
            await self._switch(rotation, now)
        else:
            await self._retire(rotation, now)
        return True

    def pending(
        self, registry: Registry | None = None, distributor: Distributor | None = None
    ) -> list[str]:
        """What the current phase of the rotation waits for: proxy ids (and the API's own
        certificate, named as such); empty when it may move on or no rotation is under way."""
        rotation = self.state.rotation
        registry = registry or self._registry
        distributor = distributor or self._distributor
        if rotation is None or not rotation.active:
            return []
        if registry is None or distributor is None:
            return ["(the CA's task has not started)"]
        if rotation.phase == "distributing":
            root_pem = self._cas[rotation.new].root.public_bytes(serialization.Encoding.PEM)
            return bundle_pending(distributor.statuses(), root_pem.decode("ascii"))
        waiting = svid_pending(registry.endpoints(), rotation.new)
        if self._served_by is not None and self._served_by != rotation.new:
            # The API's listener was not attached, so it still serves a certificate from the old
            # CA: retiring that CA would make every client refuse the API.
            waiting.append("(the control plane's API certificate: restart the control plane)")
        return waiting

    def _note_stall(self, rotation: RotationState, now: float, pending: list[str]) -> None:
        if not rotation.stalled(now) or self._stall_logged == (rotation.id, rotation.phase):
            return
        self._stall_logged = (rotation.id, rotation.phase)
        log.warning("rotation %s: %s", rotation.id, self._stall_message(rotation, pending))

    def _stall_message(self, rotation: RotationState, pending: list[str]) -> str:
        shown = ", ".join(pending[:10]) + (
            f" and {len(pending) - 10} more" if len(pending) > 10 else ""
        )
        waited = describe_remaining(dt.timedelta(seconds=rotation.phase_timeout))
        if rotation.phase == "distributing":
            return (
                f"stalled: after {waited}, {shown} still have not ACKed the bundle with the new "
                "root (nothing is issued from the new CA until they do: check their logs, or "
                "remove them from the mesh)"
            )
        return (
            f"stalled: after {waited}, {shown} still serve an SVID from the old CA (the old root "
            "stays trusted until they renew: check their logs, or remove them from the mesh)"
        )

    async def _switch(self, rotation: RotationState, now: float) -> None:
        state = msgspec.structs.replace(
            self.state, active=rotation.new, rotation=rotation.enter("reissuing", now)
        )
        await self._save(state)
        self._place_keys()
        log.info(
            "rotation %s: every proxy trusts the new root; CA %s issues now",
            rotation.id,
            rotation.new[:16],
        )
        if self._serving_hosts is not None:
            serving = self.issue_control_plane_cert(self._serving_hosts)
            for ctx in self._server_contexts:
                ctx.load_cert_chain(serving.cert_file, serving.key_file)
            if self._server_contexts:
                self._served_by = rotation.new
        self._changed()

    async def _retire(self, rotation: RotationState, now: float) -> None:
        keep = tuple(r for r in self.state.authorities if r.fingerprint != rotation.old)
        state = msgspec.structs.replace(
            self.state, authorities=keep, rotation=rotation.enter("done", now)
        )
        await self._save(state)
        retired = self._cas.pop(rotation.old, None)
        old_key = self.state_dir / KEYS_DIR / f"{rotation.old}.pem"
        if old_key.exists():
            archive = self.state_dir / RETIRED_DIR / f"{rotation.old}.pem"
            archive.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.replace(old_key, archive)
        log.info(
            "rotation %s done: CA %s (%s) retired from the trust bundle",
            rotation.id,
            subject_of(retired.cert) if retired else "?",
            rotation.old[:16],
        )
        self._changed()

    async def run(self, registry: Registry, distributor: Distributor) -> None:
        """Drive rotations for the life of the control plane (resuming one left by a restart)."""
        self.bind(registry, distributor)
        registry.subscribe(self._wake.set)
        while True:
            try:
                await self.step()
            except Exception:
                # A store or file error must not end the CA's task: the next round retries.
                log.exception("root rotation step failed; retrying")
            self._wake.clear()
            rotation = self.state.rotation
            active = rotation is not None and rotation.active
            # Idle, it still looks now and then whether a generated root is due for rotation.
            timeout = self.poll_interval if active else IDLE_CHECK_INTERVAL
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def bind(self, registry: Registry, distributor: Distributor) -> None:
        """The registry and distributor the rotation watches (`run` does this)."""
        self._registry = registry
        self._distributor = distributor

    # --- status ----------------------------------------------------------------------------------

    def status(self, registry: Registry, distributor: Distributor) -> dict[str, Any]:
        """The CA as `GET /v1/ca` shows it: certificates, rotation, each proxy's SVID."""
        now_ts = self._clock()
        now = _utc(now_ts)
        active = self.ca
        roots = {fingerprint(ca.root) for ca in self.authorities()}
        certificates: list[dict[str, Any]] = []
        for cert in self._ca_certificates():
            fp = fingerprint(cert)
            certificates.append(
                {
                    "fingerprint": fp,
                    "subject": subject_of(cert),
                    "issuer": cert.issuer.rfc4514_string(),
                    "kind": "root" if fp in roots else "intermediate",
                    "notBefore": cert.not_valid_before_utc.isoformat(),
                    "notAfter": cert.not_valid_after_utc.isoformat(),
                    "signing": fp == self.state.active,
                    "inChainOfSigner": cert in (active.cert, *active.parents),
                    "state": _cert_state(cert, now),
                    "expiresIn": describe_remaining(cert.not_valid_after_utc - now),
                }
            )
        bundle_pem = self.bundle_pem().decode("ascii")
        proxies: list[dict[str, Any]] = []
        for reg, pstatus, state in distributor.statuses():
            item: dict[str, Any] = {
                "proxyId": reg.proxy_id,
                "service": reg.service,
                "namespace": reg.namespace,
                "healthy": reg.healthy,
                "configState": state,
                "bundleAcked": bundle_acked(pstatus, bundle_pem),
                "svid": None,
            }
            not_after = _utc_or_none(reg.svid.not_after) if reg.svid is not None else None
            if reg.svid is not None and not_after is not None:
                item["svid"] = {
                    "spiffeId": reg.svid.spiffe_id,
                    "serial": reg.svid.serial,
                    "notAfter": not_after.isoformat(),
                    "expiresIn": describe_remaining(not_after - now),
                    "signer": reg.svid.signer,
                    "signerCurrent": reg.svid.signer == self.state.active,
                    "expired": not_after <= now,
                    "renewalOverdue": past_half_life(not_after, self.svid_ttl, now),
                }
            proxies.append(item)
        return {
            "trustDomain": self.trust_domain,
            "signer": self.state.active,
            "roots": [fingerprint(r) for r in self.bundle().roots],
            # Public anyway (GET /v1/ca/bundle): a client following a rotation keeps trusting
            # the API as its certificate moves to the new root.
            "bundle": bundle_pem,
            "svidTtlSeconds": self.svid_ttl.total_seconds(),
            "now": now.isoformat(),
            "certificates": certificates,
            "rotation": self.rotation_view(registry, distributor, now_ts),
            "proxies": proxies,
            "warnings": self.warnings(),
        }

    def rotation_view(
        self, registry: Registry, distributor: Distributor, now_ts: float | None = None
    ) -> dict[str, Any] | None:
        """The rotation as `GET /v1/ca` shows it (None when there has been none)."""
        rotation = self.state.rotation
        if rotation is None:
            return None
        if now_ts is None:
            now_ts = self._clock()
        pending = self.pending(registry, distributor)
        return {
            "id": rotation.id,
            "phase": rotation.phase,
            "active": rotation.active,
            "old": rotation.old,
            "new": rotation.new,
            "imported": rotation.imported,
            "automatic": rotation.automatic,
            "started": rotation.started,
            "phaseStarted": rotation.phase_started,
            "phaseTimeoutSeconds": rotation.phase_timeout,
            "finished": rotation.finished,
            "pending": pending,
            "stalled": rotation.stalled(now_ts),
            "message": self._stall_message(rotation, pending)
            if rotation.stalled(now_ts) and pending
            else None,
            "history": [{"phase": e.phase, "at": e.at} for e in rotation.history],
        }

    # --- internals -------------------------------------------------------------------------------

    def _now(self) -> dt.datetime:
        return _utc(self._clock())

    def _ca_certificates(self) -> list[x509.Certificate]:
        """Every CA certificate in use (each CA and its chain), each once, issuer first."""
        seen: dict[str, x509.Certificate] = {}
        for ca in self.authorities():
            for cert in (ca.root, *reversed(ca.parents[:-1]), ca.cert):
                seen.setdefault(fingerprint(cert), cert)
        return list(seen.values())

    def _compute_issuers(self) -> frozenset[str]:
        return frozenset(fingerprint(cert) for cert in self._ca_certificates())

    def _compute_trust(self) -> Trust:
        return Trust(bundle_pem=self.bundle_pem().decode("ascii"), signer=self.state.active)

    async def _save(self, state: CaState) -> None:
        await self._store.put(STATE_KEY, _encode(state))
        self.state = state

    def _changed(self) -> None:
        """The bundle or the signer changed: tell every place that holds a copy."""
        self._trust = self._compute_trust()
        self._issuers = self._compute_issuers()
        write_file_atomic(self.bundle_path, self.bundle_pem())
        for ctx in self._server_contexts:
            # Adds the new roots; OpenSSL cannot drop one from a live context, so a retired root
            # stays trusted for client certificates on the API until the control plane restarts.
            ctx.load_verify_locations(cadata=self._trust.bundle_pem)
        if self._distributor is not None:
            self._distributor.mark_dirty()
        self._wake.set()

    def _key_path(self, fp: str) -> Path:
        if fp == self.state.active:
            return self.state_dir / KEY_FILE
        return self.state_dir / KEYS_DIR / f"{fp}.pem"

    def _place_keys(self) -> None:
        """Put every CA's key where `_key_path` says, after a switch of issuer (or a crash in
        the middle of one). Each step leaves every key in one place or another: the others are
        written before the issuer's replaces `KEY_FILE`, and copies are removed last."""
        wanted = {fp: self._key_path(fp) for fp in self._cas}
        stray: list[Path] = []
        for fp in sorted(wanted, key=lambda f: f == self.state.active):
            path = wanted[fp]
            pem = self._cas[fp].private_key_pem()
            try:
                current = path.read_bytes()
            except OSError:
                current = b""
            if current != pem:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                write_private_file(path, pem)
            other = _other_key_path(self.state_dir, fp, path)
            if other.exists() and other not in wanted.values():
                stray.append(other)
        for path in stray:
            path.unlink(missing_ok=True)


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def _utc_or_none(ts: float) -> dt.datetime | None:
    """`ts` as a datetime, or None when it is no time at all (nan, inf, out of range): a bad
    value that reached the registry must not break the status of every other proxy."""
    try:
        return dt.datetime.fromtimestamp(ts, dt.UTC)
    except (ValueError, OverflowError, OSError):
        return None


def _record(ca: CertificateAuthority, origin: Origin, now: float) -> AuthorityRecord:
    return AuthorityRecord(
        fingerprint=fingerprint(ca.cert),
        cert=ca.cert_pem().decode("ascii"),
        chain=ca.chain_pem().decode("ascii"),
        origin=origin,
        added=now,
    )


def _other_key_path(state_dir: Path, fp: str, path: Path) -> Path:
    if path == state_dir / KEY_FILE:
        return state_dir / KEYS_DIR / f"{fp}.pem"
    return state_dir / KEY_FILE


def _load_authority(
    state_dir: Path, state: CaState, record: AuthorityRecord, now: float
) -> CertificateAuthority:
    """A stored CA with its key: where it belongs, or where an interrupted switch left it."""
    if record.fingerprint == state.active:
        expected = state_dir / KEY_FILE
    else:
        expected = state_dir / KEYS_DIR / f"{record.fingerprint}.pem"
    first: CaError | None = None
    for path in (expected, _other_key_path(state_dir, record.fingerprint, expected)):
        try:
            key_pem = _read_key(path)
            # Expired CAs load (with a warning): the control plane must start to report them.
            return CertificateAuthority.load(
                record.cert,
                key_pem,
                chain_pem=record.chain,
                trust_domain=state.trust_domain,
                now=_utc(now),
                check_times=False,
            )
        except CaError as exc:
            first = first or exc
    assert first is not None
    raise first


def _read_key(path: Path) -> bytes:
    """A CA key file's PEM, refusing one that others may read (it may have leaked)."""
    try:
        # Never advise removing it: without its key the mesh CA could not sign anything.
        return read_private_bytes(path, remedy="chmod 600 it")
    except KeyFileError as exc:
        raise CaError(f"the mesh CA's private key: {exc}") from None


def _cert_state(cert: x509.Certificate, now: dt.datetime) -> str:
    if now < cert.not_valid_before_utc:
        return "not-yet-valid"
    if cert.not_valid_after_utc <= now:
        return "expired"
    if expires_within(cert, EXPIRY_WARNING.days, now):
        return "expiring"
    return "ok"


def _life(cert: x509.Certificate, now: dt.datetime) -> str:
    left = cert.not_valid_after_utc - now
    when = f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if left.total_seconds() <= 0:
        return f"expired at {when}"
    return f"expires in {describe_remaining(left)} ({when})"
