"""The proxy's workload identity: get an SVID (bootstrap token, then mTLS renewals), keep it fresh.

At start the proxy uses the unexpired SVID in its state dir for its own identity, or makes a key
and a CSR and redeems its bootstrap token (`POST /v1/svid` over TLS that verifies the control
plane: its chain against the CA bundle, its SPIFFE ID `spiffe://<td>/ns/gossamer-system/sa/
control-plane`). After that it renews over mTLS with its current SVID at half of the remaining
life (jittered, capped retries; the old SVID serves until it expires), and at once when the
snapshot says another CA now signs (root rotation). The key is made here, written 0600 into the
state dir for `ssl` to load, and never sent or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gossamer.proxy.agent import ClientTls, ControlPlaneError, backoff_delay, http_request
from gossamer.security.bundle import (
    BundleError,
    TrustBundle,
    VerifyError,
    fingerprint,
    verify_chain,
)
from gossamer.security.csr import KeyFileError, generate_key, make_csr, private_key_pem
from gossamer.security.spiffe import SpiffeId, SpiffeIdError
from gossamer.security.tls import SvidFiles, TlsConfigError, write_svid
from gossamer.snapshot import Snapshot
from gossamer.telemetry.metrics import Registry

log = logging.getLogger("gossamer.proxy.identity")

BOOTSTRAP_TOKEN_ENV = "GOSSAMER_BOOTSTRAP_TOKEN"
CONTROL_PLANE_NAMESPACE = "gossamer-system"
CONTROL_PLANE_ACCOUNT = "control-plane"
MAX_RETRY = 30.0  # seconds: the cap of the retry backoff (token or renewal)


class IdentityError(Exception):
    """This run can never get an SVID (bad bundle, refused token, no token); one line."""


@dataclass(frozen=True, slots=True)
class SvidInfo:
    """The SVID the proxy has now: its files and the facts reported (never the key)."""

    files: SvidFiles
    spiffe_id: str
    serial: str  # hex
    not_before: float  # unix seconds
    not_after: float  # unix seconds
    signer: str  # SHA-256 fingerprint (hex) of the CA certificate that issued it

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
    root = bundle.roots[0]
    try:
        san = root.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    for uri in uris:
        with contextlib.suppress(SpiffeIdError):
            spiffe_id = SpiffeId.parse(uri)
            if not spiffe_id.path:
                return spiffe_id.trust_domain
    raise IdentityError(
        "the CA bundle's root names no trust domain (no spiffe://<trust-domain> URI SAN): is it "
        "the mesh's ca-bundle.pem?"
    )


def _certs(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def _signer(leaf: x509.Certificate, chain: list[x509.Certificate], bundle: TrustBundle) -> str:
    """The fingerprint of the CA certificate that signed `leaf`: the chain's next certificate,
    or the root of the bundle that did."""
    candidates = chain[1:2] or [r for r in bundle.roots if r.subject == leaf.issuer]
    for ca in candidates:
        # Any failure (InvalidSignature, an unsupported key type) just means "not this one".
        with contextlib.suppress(Exception):
            leaf.verify_directly_issued_by(ca)
            return fingerprint(ca)
    return ""


def svid_info(
    files: SvidFiles, chain_pem: bytes, bundle: TrustBundle, signer: str | None = None
) -> SvidInfo:
    """Facts of an SVID chain (leaf first)."""
    chain = _certs(chain_pem)
    leaf = chain[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    (uri,) = san.get_values_for_type(x509.UniformResourceIdentifier)
    return SvidInfo(
        files=files,
        spiffe_id=uri,
        serial=f"{leaf.serial_number:x}",
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        signer=signer if signer is not None else _signer(leaf, chain, bundle),
    )


def load_stored(
    state_dir: Path, spiffe_id: SpiffeId, bundle: TrustBundle, now: float
) -> SvidInfo | None:
    """The SVID in `state_dir` if it is this proxy's identity, unexpired and from a trusted root."""
    files = SvidFiles(state_dir / "svid.pem", state_dir / "svid-key.pem")
    if not files.cert_chain.exists() or not files.key.exists():
        return None
    try:
        chain_pem = files.cert_chain.read_bytes()
        chain = _certs(chain_pem)
        found = verify_chain(
            chain[0].public_bytes(serialization.Encoding.PEM),
            [c.public_bytes(serialization.Encoding.PEM) for c in chain[1:]],
            bundle,
            dt.datetime.fromtimestamp(now, dt.UTC),
        )
    except (OSError, ValueError, VerifyError) as exc:
        log.info("not using the SVID in %s: %s", state_dir, exc)
        return None
    if found != spiffe_id:
        log.info("not using the SVID in %s: it is %s, not %s", state_dir, found, spiffe_id)
        return None
    info = svid_info(files, chain_pem, bundle)
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
    wall clock (certificates are dated by it); waits use the event loop's clock.
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
    ) -> None:
        self.url = url
        self.host, self.port, self.prefix = host, port, prefix
        self.bundle = bundle
        self.state_dir = state_dir
        self.trust_domain = trust_domain_of(bundle)
        try:
            self.spiffe_id = SpiffeId.workload(self.trust_domain, namespace, service_account)
        except SpiffeIdError as exc:
            raise IdentityError(
                f"namespace {namespace!r} and service account {service_account!r} make no "
                f"SPIFFE ID: {exc}"
            ) from None
        self.server_id = str(
            SpiffeId.workload(self.trust_domain, CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_ACCOUNT)
        )
        self._token = token
        self.on_svid = on_svid
        self.metrics = metrics
        self.wall = wall
        self.request_timeout = request_timeout
        self.rand = rand or random.Random()
        self.current: SvidInfo | None = None
        self.has_svid = asyncio.Event()
        self._tls: ClientTls | None = None
        self._renew_now = asyncio.Event()
        self.last_error = ""

    def __repr__(self) -> str:
        return f"Identity(spiffe_id={str(self.spiffe_id)!r}, token=<hidden>)"

    # -- what others read --

    def tls(self) -> ClientTls:
        """The context for calls to the control plane: the roots, and the SVID once there is one."""
        if self._tls is None:
            self._tls = ClientTls(self._context(), self.server_id)
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
            try:
                bundle = TrustBundle.from_pem(tls.trust_bundle)
            except BundleError as exc:
                log.warning("ignoring the snapshot's trust bundle: %s", exc)
            else:
                if len(bundle) and bundle.fingerprints() != self.bundle.fingerprints():
                    log.info("trust bundle changed: %d root(s)", len(bundle))
                    self.bundle = bundle
                    self._tls = None
        current = self.current
        if tls.signer and current is not None and tls.signer != current.signer:
            log.info("the mesh CA's signer changed; renewing the SVID now")
            self._renew_now.set()

    # -- getting one --

    async def acquire(self) -> SvidInfo:
        """The first SVID: the stored one, else one for the bootstrap token (retried while the
        control plane is unreachable or failing).

        Raises:
            IdentityError: no stored SVID and no token, or the token/CSR is refused (401/403/
                422): nothing this run could change.
        """
        stored = load_stored(self.state_dir, self.spiffe_id, self.bundle, self.wall())
        if stored is not None:
            log.info(
                "using the stored SVID for %s (serial %s, expires %s)",
                stored.spiffe_id,
                stored.serial,
                _when(stored.not_after),
            )
            self._install(stored)
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
                info = await self._request(self._token)
            except ControlPlaneError as exc:
                self._failed(f"cannot get a first SVID from {self.url}: {exc}", attempt)
                await asyncio.sleep(backoff_delay(attempt, self.rand, base=0.2, cap=MAX_RETRY))
                attempt += 1
                continue
            # Single use: it is spent now, and must never be sent again.
            self._token = None
            return info

    async def run(self) -> None:
        """Renew at half of the remaining life, or at once on a signer change; until cancelled."""
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            current = self.current
            assert current is not None
            if attempt:
                delay = backoff_delay(attempt, self.rand, base=0.5, cap=MAX_RETRY)
                # Never wait past the expiry for a retry: the next try may still be in time.
                delay = min(delay, max(0.05, (current.not_after - self.wall()) / 4))
            else:
                delay = max(0.0, (current.not_after - self.wall()) / 2)
            deadline = loop.time() + delay
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._renew_now.wait()
            self._renew_now.clear()
            try:
                await self._request(None)
            except (ControlPlaneError, IdentityError) as exc:
                left = current.not_after - self.wall()
                state = f"the current one expires in {left:.0f}s" if left > 0 else "it EXPIRED"
                self._failed(f"SVID renewal failed ({state}): {exc}", attempt)
                attempt += 1
            else:
                attempt = 0

    # -- plumbing --

    def _failed(self, message: str, attempt: int) -> None:
        self.metrics.renewed_error.inc()
        if message != self.last_error or attempt == 0:
            # One line per distinct problem, not one per retry.
            log.warning("%s; retrying", message)
        self.last_error = message

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

    async def _request(self, token: str | None) -> SvidInfo:
        """POST /v1/svid: with `token` (first SVID, no client cert) or over mTLS (renewal)."""
        key = generate_key()
        body: dict[str, str] = {"csr": make_csr(key, self.spiffe_id).decode("ascii")}
        if token is not None:
            body["token"] = token
        # A first SVID: no client certificate (the token proves who we are); renewal: mTLS.
        tls = ClientTls(self._context(with_svid=token is None), self.server_id)
        status, answer = await http_request(
            self.host,
            self.port,
            "POST",
            f"{self.prefix}/v1/svid",
            json.dumps(body).encode(),
            time_limit=self.request_timeout,
            tls=tls,
        )
        if status != 200:
            problem = _error_message(answer) or f"HTTP {status}"
            what = "the bootstrap token" if token is not None else "the SVID renewal"
            if status in (401, 403, 422):
                self.metrics.renewed_error.inc()
                raise IdentityError(f"the control plane refused {what} ({status}): {problem}")
            raise ControlPlaneError(f"{what} answered {status}: {problem}")
        try:
            doc = json.loads(answer)
            chain_pem = str(doc["chain"]).encode("ascii")
            signer = str(doc.get("signer") or "")
            files = write_svid(self.state_dir, chain_pem, private_key_pem(key))
            info = svid_info(files, chain_pem, self.bundle, signer or None)
        except (ValueError, KeyError, TypeError) as exc:
            raise ControlPlaneError(f"the SVID answer is unreadable: {exc}") from None
        except KeyFileError as exc:
            raise IdentityError(f"cannot store the SVID: {exc}") from None
        if info.spiffe_id != str(self.spiffe_id):
            raise IdentityError(f"the control plane issued {info.spiffe_id}, not {self.spiffe_id}")
        self.metrics.renewed_ok.inc()
        log.info(
            "%s SVID for %s (serial %s, expires %s)",
            "got an" if token is not None else "renewed the",
            info.spiffe_id,
            info.serial,
            _when(info.not_after),
        )
        self._install(info)
        return info

    def _install(self, info: SvidInfo) -> None:
        self.current = info
        self._tls = None
        self.last_error = ""
        self.metrics.expiry.set(info.not_after)
        self.on_svid(info.files)
        self.has_svid.set()


def _error_message(body: bytes) -> str:
    try:
        doc = json.loads(body)
        return str(doc["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")


def _when(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
