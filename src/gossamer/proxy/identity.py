"""The proxy's workload identity: get an SVID (bootstrap token, then mTLS renewals), keep it fresh.

At start the proxy uses the unexpired SVID in its state dir for its own identity, or makes a key
and a CSR and redeems its bootstrap token (`POST /v1/svid` over TLS that verifies the control
plane: its chain against the CA bundle, its SPIFFE ID `spiffe://<td>/ns/gossamer-system/sa/
control-plane`). After that it renews over mTLS with its current SVID at half of the remaining
life (jittered, capped retries; the old SVID serves until it expires), and at once when the
snapshot says another CA now signs (root rotation). The key is made here, written 0600 into the
state dir for `ssl` to load, and never sent or logged.

Nothing is trusted on the control plane's word: a new SVID is verified (chain against the bundle,
SPIFFE ID, key) before it replaces the stored one, and its signer is worked out from that chain.
A control plane certificate that stops verifying makes the proxy re-read `--ca-bundle`; a refusal
of the SVID that no renewal can fix (a root rotation the proxy missed) ends `run()` with
`LockedOut`, for the process to exit 1 and be restarted with a new bootstrap token.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from gossamer.proxy.agent import (
    ClientCertRefused,
    ClientTls,
    ControlPlaneError,
    backoff_delay,
    error_message,
    tls_call,
)
from gossamer.security.bundle import (
    BundleError,
    TrustBundle,
    VerifyError,
    fingerprint,
    issued_by,
    public_der,
    svid_spiffe_id,
    verify_chain,
)
from gossamer.security.ca import trust_domain_of as ca_trust_domain_of
from gossamer.security.csr import (
    KeyFileError,
    generate_key,
    load_private_key,
    make_csr,
    private_key_pem,
)
from gossamer.security.spiffe import (
    BOOTSTRAP_TOKEN_ENV,
    SpiffeId,
    SpiffeIdError,
    control_plane_id,
)
from gossamer.security.tls import SvidFiles, TlsConfigError, write_svid
from gossamer.snapshot import Snapshot
from gossamer.telemetry.metrics import Registry

log = logging.getLogger("gossamer.proxy.identity")

MAX_RETRY = 30.0  # seconds: the cap of the retry backoff (token or renewal)


class IdentityError(Exception):
    """This run can never get an SVID (bad bundle, refused token, no token); one line."""


class LockedOut(IdentityError):
    """The control plane refuses the proxy's SVID and no renewal can fix it (a root rotation the
    proxy missed, an expired SVID): only a restart with a new bootstrap token can."""


# What the control plane's refusal says when it does not trust the client certificate at all
# (gossamer.security.bundle's messages, and a TLS alert about the certificate).
_UNTRUSTED_MARKS = (
    "not issued by a ca in the trust bundle",
    "unknown issuer",
    "not trusted",
    "alert_unknown_ca",
    "alert_certificate_expired",
    "alert_bad_certificate",
)


@dataclass(frozen=True, slots=True)
class SvidInfo:
    """The SVID the proxy has now: its files and the facts reported (never the key)."""

    files: SvidFiles
    spiffe_id: str
    serial: str  # hex
    not_before: float  # unix seconds
    not_after: float  # unix seconds
    signer: str  # SHA-256 fingerprint (hex) of the CA certificate that issued it
    chain: tuple[x509.Certificate, ...] = field(default=(), repr=False, compare=False)

    def report(self) -> dict[str, object]:
        """The heartbeat's `svid` and the admin /config's facts."""
        return {
            "spiffeId": self.spiffe_id,
            "serial": self.serial,
            "notAfter": self.not_after,
            "signer": self.signer,
        }


def read_bundle(path: Path) -> TrustBundle:
    """The roots in the `--ca-bundle` file.

    Raises:
        IdentityError: unreadable, or not a bundle of CA certificates.
    """
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"--ca-bundle {path}: cannot read: {exc.strerror or exc}") from None
    try:
        bundle = TrustBundle.from_pem(pem)
    except BundleError as exc:
        raise IdentityError(f"--ca-bundle {path}: {exc}") from None
    if not len(bundle):
        raise IdentityError(f"--ca-bundle {path}: holds no certificate")
    return bundle


def trust_domain_of(bundle: TrustBundle) -> str:
    """The trust domain the bundle's first root names in its URI SAN (`spiffe://<td>`).

    Raises:
        IdentityError: the root has no SPIFFE trust-domain URI SAN.
    """
    trust_domain = ca_trust_domain_of(bundle.roots[0], bare=True)
    if trust_domain is None:
        raise IdentityError(
            "the CA bundle's root names no trust domain (no spiffe://<trust-domain> URI SAN): is "
            "it the mesh's ca-bundle.pem?"
        )
    return trust_domain


def _certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def issuing_ca(chain: list[x509.Certificate], bundle: TrustBundle) -> x509.Certificate | None:
    """The CA certificate that signed the leaf `chain[0]`: the chain's next certificate, or the
    bundle's root that did; None when neither did."""
    leaf = chain[0]
    candidates = [*chain[1:2], *bundle.roots]
    return next((ca for ca in candidates if issued_by(leaf, ca)), None)


def issuing_root(chain: list[x509.Certificate], bundle: TrustBundle) -> x509.Certificate | None:
    """The root of `bundle` at the top of `chain` (leaf first), or None when none signed it."""
    top = chain[-1]
    return next((root for root in bundle.roots if issued_by(top, root)), None)


def svid_info(files: SvidFiles, chain: list[x509.Certificate], bundle: TrustBundle) -> SvidInfo:
    """Facts of an SVID chain (leaf first) that verified against `bundle`; the signer is worked
    out from the chain itself, never taken from what the control plane says.

    Raises:
        VerifyError: the leaf has no single SPIFFE ID URI SAN.
    """
    leaf = chain[0]
    spiffe_id = svid_spiffe_id(leaf)
    ca = issuing_ca(chain, bundle)
    return SvidInfo(
        files=files,
        spiffe_id=str(spiffe_id),
        serial=f"{leaf.serial_number:x}",
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        signer=fingerprint(ca) if ca is not None else "",
        chain=tuple(chain),
    )


def check_svid(
    chain_pem: bytes, key_pem: bytes, spiffe_id: SpiffeId, bundle: TrustBundle, now: float
) -> list[x509.Certificate]:
    """Everything that makes an SVID usable for `spiffe_id`: the chain (leaf first) verifies
    against `bundle` at `now`, names `spiffe_id`, and its leaf holds the public half of the key.
    Returns the chain.

    Raises:
        VerifyError: the first problem found, in words.
    """
    try:
        chain = _certs(chain_pem)
    except ValueError:
        raise VerifyError("the certificate chain is not PEM certificates") from None
    if not chain:
        raise VerifyError("the certificate chain is empty")
    found = verify_chain(chain[0], chain[1:], bundle, dt.datetime.fromtimestamp(now, dt.UTC))
    if found != spiffe_id:
        raise VerifyError(f"it is {found}, not {spiffe_id}")
    try:
        key = load_private_key(key_pem)
    except KeyFileError as exc:
        raise VerifyError(f"the key: {exc}") from None
    if public_der(key.public_key()) != public_der(chain[0].public_key()):
        raise VerifyError("the private key does not belong to the certificate")
    return chain


def load_stored(
    state_dir: Path, spiffe_id: SpiffeId, bundle: TrustBundle, now: float
) -> SvidInfo | None:
    """The SVID in `state_dir` if it is this proxy's identity, unexpired, from a trusted root,
    with the key that belongs to it (a crash between the two file writes can leave a new key next
    to the old certificate) and more than a tenth of its life left; else None and one log line."""
    files = SvidFiles(state_dir / "svid.pem", state_dir / "svid-key.pem")
    if not files.cert_chain.exists() or not files.key.exists():
        return None
    try:
        chain = check_svid(
            files.cert_chain.read_bytes(), files.key.read_bytes(), spiffe_id, bundle, now
        )
        info = svid_info(files, chain, bundle)
    except OSError as exc:
        log.info("not using the SVID in %s: cannot read it: %s", state_dir, exc.strerror or exc)
        return None
    except VerifyError as exc:
        log.info("not using the SVID in %s: %s", state_dir, exc)
        return None
    if info.not_after - now < (info.not_after - info.not_before) * 0.1:
        log.info("not using the SVID in %s: less than a tenth of its life is left", state_dir)
        return None
    return info


class IdentityMetrics:
    def __init__(self, registry: Registry) -> None:
        self.expiry = registry.gauge(
            "gossamer_proxy_svid_expiry_timestamp_seconds",
            "When the proxy's current SVID expires (unix seconds; 0 before it has one).",
        )
        renewals = registry.counter(
            "gossamer_proxy_svid_renewals_total",
            "SVIDs requested from the control plane, by result (ok, error).",
            ("result",),
        )
        self.renewed_ok = renewals.labels("ok")
        self.renewed_error = renewals.labels("error")


class Identity:
    """Gets and renews this proxy's SVID; `tls()` is what the agent connects with.

    `on_svid(files)` is called with every new SVID (the data plane's `set_svid`). `wall` is the
    wall clock (certificates are dated by it); waits use the event loop's clock. `ca_bundle_path`
    is the `--ca-bundle` file, read again when the control plane's certificate stops verifying
    (the local runtime, or a mounted ConfigMap, keeps it current through a root rotation).
    """

    def __init__(
        self,
        url: str,
        host: str,
        port: int,
        bundle: TrustBundle,
        state_dir: Path,
        namespace: str,
        service_account: str,
        *,
        token: str | None,
        on_svid: Callable[[SvidFiles], None],
        metrics: IdentityMetrics,
        prefix: str = "",
        wall: Callable[[], float] = time.time,
        request_timeout: float = 5.0,
        rand: random.Random | None = None,
        ca_bundle_path: Path | None = None,
        backoff: Callable[[int], float] | None = None,
    ) -> None:
        self.url = url
        self.host, self.port, self.prefix = host, port, prefix
        self.bundle = bundle
        self.ca_bundle_path = ca_bundle_path
        self.state_dir = state_dir
        self.trust_domain = trust_domain_of(bundle)
        try:
            self.spiffe_id = SpiffeId.workload(self.trust_domain, namespace, service_account)
        except SpiffeIdError as exc:
            raise IdentityError(
                f"namespace {namespace!r} and service account {service_account!r} make no "
                f"SPIFFE ID: {exc}"
            ) from None
        self.server_id = str(control_plane_id(self.trust_domain))
        self._token = token
        self.on_svid = on_svid
        self.metrics = metrics
        self.wall = wall
        self.request_timeout = request_timeout
        self.rand = rand or random.Random()
        # The retry delay after N failures; tests inject their own.
        self._backoff = backoff
        self.current: SvidInfo | None = None
        self.has_svid = asyncio.Event()
        self._tls: ClientTls | None = None
        self._renew_now = asyncio.Event()
        self._snapshot_bundle: TrustBundle | None = None  # the last Snapshot's
        self._snapshot_pem = ""  # the last Snapshot's trust bundle as it came, and parsed
        self._snapshot_parsed: TrustBundle | None = None
        self._install_failed = False
        self._bundle_problem = ""
        self.locked_out = ""  # why the control plane will never accept this SVID again
        self.last_error = ""

    def __repr__(self) -> str:
        return f"Identity(spiffe_id={str(self.spiffe_id)!r}, token=<hidden>)"

    # -- what others read --

    def tls(self) -> ClientTls:
        """The context for calls to the control plane: the roots, and the SVID once there is one."""
        if self._tls is None:
            self._tls = ClientTls(
                self._context(),
                self.server_id,
                on_untrusted_server=self.refresh_bundle,
                on_refused=self.refused,
            )
        return self._tls

    def report(self) -> dict[str, object] | None:
        return self.current.report() if self.current is not None else None

    def on_snapshot(self, snap: Snapshot) -> None:
        """Follow the snapshot's trust bundle (so a re-issued control plane certificate from a
        new root verifies) and renew at once when another CA signs now (root rotation)."""
        tls = snap.tls
        if tls is None:
            return
        if tls.trust_bundle:
            if tls.trust_bundle != self._snapshot_pem:
                # Parsed once per change, not once per snapshot (most do not change it).
                self._snapshot_pem = tls.trust_bundle
                try:
                    self._snapshot_parsed = TrustBundle.from_pem(tls.trust_bundle)
                except BundleError as exc:
                    self._snapshot_parsed = None
                    log.warning("ignoring the snapshot's trust bundle: %s", exc)
            bundle = self._snapshot_parsed
            if bundle is not None and len(bundle):
                self._snapshot_bundle = bundle
                if bundle.fingerprints() != self.bundle.fingerprints():
                    log.info("trust bundle changed: %d root(s)", len(bundle))
                    self.bundle = bundle
                    self._tls = None
        current = self.current
        # Our own signer, from the chain we verified: the control plane's word is not needed.
        if tls.signer and current is not None and tls.signer != current.signer:
            log.info("the mesh CA's signer changed; renewing the SVID now")
            self._renew_now.set()

    def refresh_bundle(self) -> bool:
        """The control plane's certificate did not verify: trust the `--ca-bundle` file as it is
        now together with the last Snapshot's bundle. True when that changed the roots."""
        if self.ca_bundle_path is None:
            return False
        try:
            from_file = read_bundle(self.ca_bundle_path)
        except IdentityError as exc:
            if str(exc) != self._bundle_problem:
                # Once per problem: every failed call to the control plane comes here.
                log.warning("cannot re-read the CA bundle: %s", exc)
            self._bundle_problem = str(exc)
            return False
        self._bundle_problem = ""
        merged = TrustBundle(
            [*from_file.roots, *(self._snapshot_bundle or self.bundle).roots],
            self.bundle.trust_domain,
        )
        if set(merged.fingerprints()) == set(self.bundle.fingerprints()):
            return False
        log.info(
            "the control plane's certificate did not verify; trusting %d root(s) from %s and "
            "the last snapshot now",
            len(merged),
            self.ca_bundle_path,
        )
        self.bundle = merged
        self._tls = None
        return True

    def refused(self, message: str) -> None:
        """The control plane refused this proxy's SVID (401 or a TLS alert). When that can
        never change by itself, end the renewal loop: `run()` raises `LockedOut`."""
        if self.locked_out or self.current is None:
            return
        reason = self._lockout_reason(message)
        if reason:
            self.locked_out = reason
            self._renew_now.set()

    # -- getting one --

    async def acquire(self) -> SvidInfo:
        """The first SVID: the stored one, else one for the bootstrap token (retried while the
        control plane is unreachable or failing).

        Raises:
            IdentityError: no usable stored SVID and no token, or the token/CSR is refused
                (401/403/422): nothing this run could change.
        """
        stored = self._stored()
        if stored is not None:
            return stored
        if not self._token:
            raise IdentityError(
                f"no usable SVID in {self.state_dir} and no bootstrap token: set "
                f"${BOOTSTRAP_TOKEN_ENV} (a token from POST /v1/tokens/bootstrap for "
                f"{self.spiffe_id})"
            )
        attempt = 0
        while True:
            try:
                info = await self._fetch(self._token)
            except ControlPlaneError as exc:
                self._failed(str(exc), attempt, f"cannot get a first SVID from {self.url}: ")
                attempt += 1
                await asyncio.sleep(self._delay(attempt, base=0.2))
                continue
            except IdentityError:
                raise
            except Exception as exc:
                # A surprise must not end the task silently (the proxy would never be ready).
                self._failed(_describe(exc), attempt, f"cannot get a first SVID from {self.url}: ")
                log.debug("getting the first SVID failed", exc_info=True)
                attempt += 1
                await asyncio.sleep(self._delay(attempt, base=0.2))
                continue
            # Single use: it is spent now, and must never be sent again.
            self._token = None
            try:
                self._install(info)
            except Exception as exc:
                # The SVID is ours and stored; the renewal loop tries again soon.
                self._install_failed = True
                self._failed(_describe(exc), 0, "cannot use the new SVID: ")
                log.debug("installing the first SVID failed", exc_info=True)
            return info

    def _delay(self, failures: int, base: float) -> float:
        if self._backoff is not None:
            return self._backoff(failures)
        return backoff_delay(failures - 1, self.rand, base=base, cap=MAX_RETRY)

    def _stored(self) -> SvidInfo | None:
        """The stored SVID, installed; None when it is missing or unusable in any way."""
        try:
            stored = load_stored(self.state_dir, self.spiffe_id, self.bundle, self.wall())
        except Exception as exc:
            log.warning("not using the SVID in %s: %s", self.state_dir, _describe(exc))
            log.debug("reading the stored SVID failed", exc_info=True)
            return None
        if stored is None:
            return None
        try:
            self._install(stored)
        except Exception as exc:
            log.warning(
                "not using the SVID in %s: the data plane cannot load it: %s",
                self.state_dir,
                _describe(exc),
            )
            log.debug("installing the stored SVID failed", exc_info=True)
            self.current = None
            self._tls = None
            self.has_svid.clear()
            self.metrics.expiry.set(0)
            return None
        log.info(
            "using the stored SVID for %s (serial %s, expires %s)",
            stored.spiffe_id,
            stored.serial,
            _when(stored.not_after),
        )
        return stored

    async def run(self) -> None:
        """Renew at half of the remaining life, or at once on a signer change; until cancelled.

        Any failure is logged (one line per distinct problem) and retried with jittered, capped
        backoff: the loop never ends on an error while the proxy runs.

        Raises:
            LockedOut: the control plane refuses this SVID and no renewal can change that.
        """
        loop = asyncio.get_running_loop()
        attempt = 1 if self._install_failed else 0
        while True:
            if self.locked_out:
                raise self._lockout()
            current = self.current
            assert current is not None
            if attempt:
                delay = self._delay(attempt, base=1.0)
                # Never wait past the expiry for a retry: the next try may still be in time.
                delay = min(delay, max(0.05, (current.not_after - self.wall()) / 4))
            else:
                delay = max(0.0, (current.not_after - self.wall()) / 2)
            deadline = loop.time() + delay
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._renew_now.wait()
            self._renew_now.clear()
            if self.locked_out:
                raise self._lockout()
            try:
                info = await self._fetch(None)
                self._install(info)
            except LockedOut:
                raise
            except (ControlPlaneError, IdentityError, TlsConfigError) as exc:
                self._failed(str(exc), attempt, f"SVID renewal failed ({self._left(current)}): ")
                attempt += 1
            except Exception as exc:
                # A bug or a surprise (a malformed certificate, ...) must not end the loop: the
                # SVID would expire silently a day later.
                self._failed(
                    _describe(exc),
                    attempt,
                    f"SVID renewal failed unexpectedly ({self._left(current)}): ",
                )
                log.debug("SVID renewal failed", exc_info=True)
                attempt += 1
            else:
                attempt = 0

    # -- plumbing --

    def _left(self, current: SvidInfo) -> str:
        left = current.not_after - self.wall()
        return f"the current one expires in {left:.0f}s" if left > 0 else "it EXPIRED"

    def _lockout(self) -> LockedOut:
        return LockedOut(
            f"the control plane refuses this proxy's SVID ({self.locked_out}); it cannot renew "
            f"it: restart the proxy with a new bootstrap token (${BOOTSTRAP_TOKEN_ENV})"
        )

    def _lockout_reason(self, message: str) -> str:
        """Why a refusal of the current SVID is for good, or "" when a retry may still work."""
        current = self.current
        if current is None:
            return ""
        if current.not_after <= self.wall():
            return f"it expired at {_when(current.not_after)}"
        if any(mark in message.lower() for mark in _UNTRUSTED_MARKS):
            return message
        roots = self._current_roots()
        if current.chain and issuing_root(list(current.chain), roots) is None:
            return f"{message}; its root is no longer in the mesh's trust bundle"
        return ""

    def _current_roots(self) -> TrustBundle:
        """The mesh's roots as of now: the `--ca-bundle` file (kept current by the runtime),
        else the last Snapshot's bundle."""
        if self.ca_bundle_path is not None:
            with contextlib.suppress(IdentityError):
                return read_bundle(self.ca_bundle_path)
        return self._snapshot_bundle or self.bundle

    def _failed(self, problem: str, attempt: int, context: str = "") -> None:
        self.metrics.renewed_error.inc()
        if problem != self.last_error or attempt == 0:
            # One line per distinct problem, not one per retry.
            log.warning("%s%s; retrying", context, problem)
        self.last_error = problem

    def _context(self, with_svid: bool = True) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        # SPIFFE IDs are not host names: the server's ID is checked after the handshake.
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=self.bundle.to_pem().decode("ascii"))
        if with_svid and self.current is not None:
            try:
                ctx.load_cert_chain(self.current.files.cert_chain, self.current.files.key)
            except (OSError, ssl.SSLError) as exc:
                raise TlsConfigError(f"cannot load the SVID: {exc}") from None
        return ctx

    async def _post_csr(self, token: str | None, body: bytes) -> tuple[int, bytes]:
        """POST /v1/svid; after a certificate that does not verify, the roots are re-read and
        the call tried once more. A renewal whose SVID is refused tells `refused`."""

        def client() -> ClientTls:
            # A first SVID: no client certificate (the token proves who we are); renewal: mTLS.
            return ClientTls(
                self._context(with_svid=token is None),
                self.server_id,
                on_untrusted_server=self.refresh_bundle,
                on_refused=self.refused if token is None else None,
            )

        try:
            return await tls_call(
                self.host,
                self.port,
                "POST",
                f"{self.prefix}/v1/svid",
                body,
                time_limit=self.request_timeout,
                tls=client,
            )
        except ClientCertRefused:
            if token is None and self.locked_out:
                raise self._lockout() from None
            raise

    async def _fetch(self, token: str | None) -> SvidInfo:
        """A new SVID from the control plane, checked in full, then stored (never before).

        Raises:
            ControlPlaneError: unreachable, failing, or an answer that is not a usable SVID
                (the SVID on disk is left as it was).
            IdentityError: refused (401/403/422), or it cannot be stored.
            LockedOut: a renewal the control plane will never accept.
        """
        key = generate_key()
        payload: dict[str, str] = {"csr": make_csr(key, self.spiffe_id).decode("ascii")}
        if token is not None:
            payload["token"] = token
        what = "the bootstrap token" if token is not None else "the SVID renewal"
        status, answer = await self._post_csr(token, json.dumps(payload).encode())
        if status != 200:
            problem = error_message(answer) or f"HTTP {status}"
            # `tls_call` has told `refused` of a renewal's 401 (with this same message).
            if status == 401 and token is None and self.locked_out:
                raise self._lockout()
            if status in (401, 403, 422):
                self.metrics.renewed_error.inc()
                raise IdentityError(f"the control plane refused {what} ({status}): {problem}")
            raise ControlPlaneError(f"{what} answered {status}: {problem}")
        try:
            doc = json.loads(answer)
            chain_pem = str(doc["chain"]).encode("ascii")
        except (ValueError, KeyError, TypeError) as exc:
            raise ControlPlaneError(f"the SVID answer is unreadable: {exc}") from None
        key_pem = private_key_pem(key)
        try:
            chain = self._check_answer(chain_pem, key_pem)
            info = svid_info(SvidFiles(Path(), Path()), chain, self.bundle)
        except VerifyError as exc:
            raise ControlPlaneError(f"the control plane answered an unusable SVID: {exc}") from None
        try:
            # The key first, then the certificate: a crash between the two leaves a pair that
            # `load_stored` refuses (so a restart takes the token path), never a usable lie.
            files = write_svid(self.state_dir, chain_pem, key_pem)
        except KeyFileError as exc:
            raise IdentityError(f"cannot store the SVID: {exc}") from None
        info = dataclasses.replace(info, files=files)
        self.metrics.renewed_ok.inc()
        log.info(
            "%s SVID for %s (serial %s, expires %s)",
            "got an" if token is not None else "renewed the",
            info.spiffe_id,
            info.serial,
            _when(info.not_after),
        )
        return info

    def _check_answer(self, chain_pem: bytes, key_pem: bytes) -> list[x509.Certificate]:
        try:
            return check_svid(chain_pem, key_pem, self.spiffe_id, self.bundle, self.wall())
        except VerifyError:
            # Issued from a root we have not heard of yet (a rotation under way): the file may
            # have it already.
            if not self.refresh_bundle():
                raise
        return check_svid(chain_pem, key_pem, self.spiffe_id, self.bundle, self.wall())

    def _install(self, info: SvidInfo) -> None:
        self.current = info
        self._tls = None
        self.metrics.expiry.set(info.not_after)
        self.has_svid.set()
        # It is ours even when the data plane refuses it (the agent's mTLS uses the files):
        # the renewal loop then tries again soon.
        self.on_svid(info.files)
        self.last_error = ""
        self._install_failed = False


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _when(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
