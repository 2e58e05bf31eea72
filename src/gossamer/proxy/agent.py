"""The proxy's control-plane client: register, heartbeat, long-poll snapshots, ACK/NACK, deregister.

It speaks HTTP/1.1 JSON (see "Proxy <-> control plane" in docs/internals.md) over a tiny asyncio
client of its own, so the sidecar never imports an HTTP library or the control plane's models.
With an `https://` URL every call is mTLS: the proxy's SVID as the client certificate, the control
plane's certificate verified against the mesh's roots and its SPIFFE ID checked (`ClientTls`). Two
loops run side by side: the session loop (register, then heartbeat; a 404 means the control plane
forgot us, so register again) and the watch loop (long-poll the snapshot, apply it, ACK or NACK).
Neither ever ends on an error: an unreachable control plane means jittered, capped backoff and
another try, while the proxy keeps serving the snapshot it has.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import httptools
import msgspec

from gossamer import snapshot as snapshot_mod
from gossamer.proxy.cache import SnapshotCache
from gossamer.snapshot import Snapshot
from gossamer.tasks import cancel_all
from gossamer.telemetry.metrics import Registry

log = logging.getLogger("gossamer.proxy")

MAX_RESPONSE_BYTES = 64 * 1024 * 1024


# --- a minimal HTTP/1.1 client --------------------------------------------------------------------


class ControlPlaneError(Exception):
    """The control plane could not be reached or answered something that is not HTTP."""


class ServerNotTrusted(ControlPlaneError):
    """The control plane's certificate does not verify against the roots the proxy trusts."""


class ClientCertRefused(ControlPlaneError):
    """The control plane's TLS layer refused the proxy's client certificate (an alert about it),
    or may have (it closed the connection without a byte after the handshake)."""


# TLS alerts a server sends about the client's certificate (OpenSSL's reason names).
_CLIENT_CERT_ALERTS = frozenset(
    {
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    }
)


@dataclass(frozen=True)
class ClientTls:
    """How to reach an https:// control plane: a TLS client context (roots, and the proxy's SVID
    once it has one) and the SPIFFE ID the server must present.

    The hooks let the proxy's identity react to what only a call can show: `on_untrusted_server()`
    when the control plane's certificate does not verify (returns True when the trusted roots
    changed, so the call is worth one more try at once), and `on_refused(message)` when the
    control plane refuses the proxy's SVID (HTTP 401, or a TLS alert about the certificate).
    """

    context: ssl.SSLContext
    server_id: str
    on_untrusted_server: Callable[[], bool] | None = None
    on_refused: Callable[[str], None] | None = None


def parse_base_url(url: str, *, plaintext: bool = True) -> tuple[str, int, str]:
    """Split `https://host:port[/prefix]` (or `http://`, when `plaintext`) into (host, port,
    prefix); ValueError says what is off."""
    parts = urlsplit(url)
    if parts.scheme != "https" and not (plaintext and parts.scheme == "http"):
        raise ValueError(f"control plane URL {url!r} must start with https://")
    if not parts.hostname:
        raise ValueError(f"control plane URL {url!r} has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"control plane URL {url!r} has an invalid port") from None
    return parts.hostname, port, parts.path.rstrip("/")


class _Response:
    def __init__(self) -> None:
        self.body: list[bytes] = []
        self.headers_done = False
        self.complete = False

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


async def http_request(
    host: str,
    port: int,
    method: str,
    target: str,
    body: bytes | None = None,
    *,
    time_limit: float,
    tls: ClientTls | None = None,
) -> tuple[int, bytes]:
    """One request on a fresh connection (TLS when `tls` is given). Returns (status, body).

    Raises:
        ControlPlaneError: connect failure, TLS failure or the wrong server identity, timeout,
            or a response that is not HTTP/1.1.
    """
    head = [
        f"{method} {target} HTTP/1.1",
        f"host: {host}:{port}",
        "user-agent: gossamer-proxy",
        "connection: close",
    ]
    if body is not None:
        head += ["content-type: application/json", f"content-length: {len(body)}"]
    data = ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + (body or b"")
    sink = _Response()
    parser = httptools.HttpResponseParser(sink)
    received = 0
    try:
        async with asyncio.timeout(time_limit):
            if tls is None:
                reader, writer = await asyncio.open_connection(host, port)
            else:
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls.context, server_hostname=host
                )
            try:
                if tls is not None:
                    _check_server(writer, tls.server_id, host, port)
                writer.write(data)
                while not sink.complete:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    received += len(chunk)
                    if received > MAX_RESPONSE_BYTES:
                        raise ControlPlaneError(f"{method} {target}: response larger than 64 MiB")
                    parser.feed_data(chunk)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        raise ControlPlaneError(f"{method} {target}: no answer within {time_limit:g}s") from None
    except ssl.SSLCertVerificationError as exc:
        # Before SSLError and OSError: it is both.
        reason = exc.verify_message or exc.reason or exc
        raise ServerNotTrusted(f"{host}:{port}: TLS handshake failed: {reason}") from None
    except ssl.SSLError as exc:
        # Before OSError: SSLError is one. Names the TLS problem (a client certificate the
        # server refused, ...) rather than a bare errno.
        why = getattr(exc, "reason", None) or exc
        error = ClientCertRefused if why in _CLIENT_CERT_ALERTS else ControlPlaneError
        raise error(f"{host}:{port}: TLS handshake failed: {why}") from None
    except OSError as exc:
        raise ControlPlaneError(f"{host}:{port}: {exc.strerror or exc}") from None
    except httptools.HttpParserError as exc:
        raise ControlPlaneError(f"{method} {target}: bad HTTP response: {exc}") from None
    # A body without a length ends at EOF; anything cut short before the head is an error.
    if not sink.headers_done:
        message = f"{method} {target}: connection closed before a response"
        if tls is not None and not received:
            # Not one byte after our handshake: how an asyncio/uvicorn server drops a client
            # certificate it does not trust (it sends no alert). The identity decides.
            raise ClientCertRefused(message)
        raise ControlPlaneError(message)
    return parser.get_status_code(), b"".join(sink.body)


def _check_server(writer: asyncio.StreamWriter, server_id: str, host: str, port: int) -> None:
    from gossamer.security.tls import PeerIdentityError, check_peer

    ssl_object = writer.get_extra_info("ssl_object")
    try:
        check_peer(ssl_object, [server_id])
    except PeerIdentityError as exc:
        raise ControlPlaneError(f"{host}:{port} is not the mesh's control plane: {exc}") from None


async def tls_call(
    host: str,
    port: int,
    method: str,
    target: str,
    body: bytes | None,
    *,
    time_limit: float,
    tls: Callable[[], ClientTls] | None,
) -> tuple[int, bytes]:
    """`http_request` with the `ClientTls` hooks: `tls()` is read at every try (renewals and
    trust-bundle changes replace it); one more try at once when `on_untrusted_server()` says the
    roots changed; `on_refused` hears of a refused client certificate (TLS alert or HTTP 401).

    Raises:
        ControlPlaneError: as `http_request`.
    """
    retried = False
    while True:
        client = tls() if tls is not None else None
        try:
            answer = await http_request(
                host, port, method, target, body, time_limit=time_limit, tls=client
            )
        except ServerNotTrusted:
            # A root rotation the proxy missed: the identity re-reads its roots; when they
            # changed, one more try at once with the new context.
            hook = client.on_untrusted_server if client is not None else None
            if not retried and hook is not None and hook():
                retried = True
                continue
            raise
        except ClientCertRefused as exc:
            if client is not None and client.on_refused is not None:
                client.on_refused(str(exc))
            raise
        if answer[0] == 401 and client is not None and client.on_refused is not None:
            client.on_refused(error_message(answer[1]) or f"HTTP {answer[0]}")
        return answer


# --- what the proxy runs --------------------------------------------------------------------------


class AgentMetrics:
    """The proxy's own metrics about its snapshot and its control plane."""

    def __init__(self, registry: Registry) -> None:
        self.snapshot_info = registry.gauge(
            "gossamer_proxy_snapshot_info",
            "The snapshot the proxy runs (value 1), by version and where it came from.",
            ("version", "source"),
        )
        self.applies = registry.counter(
            "gossamer_proxy_snapshot_applies_total",
            "Snapshots received, by outcome (ack, nack).",
            ("result",),
        )
        self.applies_ack = self.applies.labels("ack")
        self.applies_nack = self.applies.labels("nack")
        self.connected = registry.gauge(
            "gossamer_proxy_control_plane_connected",
            "1 when the last call to the control plane succeeded.",
        )
        self.heartbeats = registry.counter(
            "gossamer_proxy_heartbeats_total",
            "Heartbeats sent, by result (ok, unknown, error).",
            ("result",),
        )
        self.registrations = registry.counter(
            "gossamer_proxy_registrations_total", "Successful registrations with the control plane."
        )
        self.ready = registry.gauge("gossamer_proxy_ready", "1 when the proxy reports ready.")


class SnapshotHolder:
    """The Snapshot the proxy runs, with its version, where it came from and its ACK state.

    `install` hands a Snapshot to the data plane (`apply`, which raises SnapshotError and keeps its
    old tables when it cannot) and returns None on success or the reason it failed.
    """

    def __init__(
        self,
        apply: Callable[[Snapshot], None],
        metrics: AgentMetrics,
        cache: SnapshotCache | None = None,
    ) -> None:
        self._apply = apply
        self.metrics = metrics
        self.cache = cache
        self.snapshot: Snapshot | None = None
        self.source = ""  # "control-plane", "cache" or "file"
        self.status = "NONE"  # ACK/NACK of the last snapshot received (NONE before any)
        self.last_version = ""  # the last version received, applied or not
        self.last_error = ""
        self.listeners: list[Callable[[], None]] = []
        self._installed = asyncio.Event()

    @property
    def version(self) -> str:
        return self.snapshot.version if self.snapshot is not None else ""

    def install(self, snap: Snapshot, source: str) -> str | None:
        self.last_version = snap.version
        try:
            self._apply(snap)
        except Exception as exc:
            # SnapshotError is the expected failure; anything else is a data-plane bug, still
            # reported as a NACK so that one bad snapshot never takes the proxy down.
            reason = str(exc) or type(exc).__name__
            if type(exc).__name__ != "SnapshotError":
                reason = f"{type(exc).__name__}: {reason}"
            self.reject(snap.version, reason)
            return reason
        first = self.snapshot is None
        self.snapshot, self.source = snap, source
        self.status, self.last_error = "ACK", ""
        self.metrics.applies_ack.inc()
        self.metrics.snapshot_info.clear()
        self.metrics.snapshot_info.labels(snap.version, source).set(1)
        self._installed.set()
        log.info("snapshot %s applied (from %s)", snap.version or "(unversioned)", source)
        if self.cache is not None and source == "control-plane":
            try:
                self.cache.save(snap)
            except OSError as exc:
                log.warning("cannot write snapshot cache %s: %s", self.cache.path, exc)
        if first:
            for listener in self.listeners:
                listener()
        return None

    def reject(self, version: str, reason: str) -> None:
        self.last_version = version
        self.status, self.last_error = "NACK", reason
        self.metrics.applies_nack.inc()
        log.warning("snapshot %s rejected (NACK): %s", version or "(unknown version)", reason)

    async def wait_installed(self) -> None:
        await self._installed.wait()


# --- the agent ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Registration:
    """What the proxy tells the control plane about itself (camelCase on the wire)."""

    proxy_id: str
    service: str
    inbound: str
    outbound: str
    admin: str
    app_port: int
    namespace: str = "default"
    subset: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    zone: str | None = None

    def body(self, ready: bool) -> dict[str, object]:
        return {
            "service": self.service,
            "namespace": self.namespace,
            "subset": self.subset,
            "labels": self.labels,
            "zone": self.zone,
            "inbound": self.inbound,
            "outbound": self.outbound,
            "admin": self.admin,
            "appPort": self.app_port,
            "ready": ready,
        }


class _RegisterAnswer(msgspec.Struct, rename="camel"):
    heartbeat_interval: float = 1.0


class _VersionOnly(msgspec.Struct):
    version: str = ""


_json = msgspec.json.Encoder()


def backoff_delay(attempt: int, rand: random.Random, base: float = 0.1, cap: float = 2.0) -> float:
    """Exponential backoff with jitter in [d/2, d], d = min(cap, base * 2**attempt)."""
    delay = min(cap, base * (2 ** min(attempt, 16)))
    return rand.uniform(delay / 2, delay)


class Agent:
    """Keeps the proxy registered and its snapshot current. `start()`, then `stop()` on drain."""

    def __init__(
        self,
        control_plane: str,
        registration: Registration,
        holder: SnapshotHolder,
        *,
        is_ready: Callable[[], bool],
        poll_wait: float = 30.0,
        request_timeout: float = 2.0,
        backoff_cap: float = 2.0,
        rand: random.Random | None = None,
        tls: Callable[[], ClientTls] | None = None,
        svid_report: Callable[[], dict[str, object] | None] | None = None,
        on_snapshot: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self.url = control_plane
        self.host, self.port, prefix = parse_base_url(control_plane)
        if control_plane.startswith("https:") and tls is None:
            raise ValueError("an https:// control plane needs the proxy's TLS settings")
        # Read at every call: renewals and trust-bundle changes replace it.
        self.tls = tls
        self.svid_report = svid_report
        self.on_snapshot = on_snapshot
        self.base = f"{prefix}/v1/proxies/{quote(registration.proxy_id, safe='')}"
        self.registration = registration
        self.holder = holder
        self.is_ready = is_ready
        self.poll_wait = poll_wait
        self.request_timeout = request_timeout
        self.backoff_cap = backoff_cap
        self.rand = rand or random.Random()
        self.metrics = holder.metrics
        self.heartbeat_interval = 1.0
        self.connected = False
        self.registered = asyncio.Event()
        self.session = 0  # bumped on every successful registration
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_failure = ""

    # -- lifecycle --

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._session_loop(), name="agent-session"),
            asyncio.create_task(self._watch_loop(), name="agent-watch"),
        ]

    async def stop(self, deregister: bool = True, time_limit: float = 1.0) -> None:
        """Stop both loops; then tell the control plane we are gone (best effort, bounded)."""
        await cancel_all(self._tasks)
        self._tasks = []
        if deregister and self.registered.is_set():
            try:
                status, _ = await self._call("DELETE", self.base, time_limit=time_limit)
            except ControlPlaneError as exc:
                log.info("deregister skipped: control plane unreachable: %s", exc)
            else:
                log.info("deregistered from control plane (status %d)", status)

    def readiness_changed(self) -> None:
        """Send a heartbeat now rather than at the next tick."""
        self._wake.set()

    # -- plumbing --

    async def _call(
        self, method: str, target: str, body: object = None, *, time_limit: float | None = None
    ) -> tuple[int, bytes]:
        payload = None if body is None else _json.encode(body)
        try:
            answer = await tls_call(
                self.host,
                self.port,
                method,
                target,
                payload,
                time_limit=self.request_timeout if time_limit is None else time_limit,
                tls=self.tls,
            )
        except ControlPlaneError as exc:
            self._set_connected(False, str(exc))
            raise
        self._set_connected(True)
        return answer

    def _set_connected(self, connected: bool, why: str = "") -> None:
        if connected and not self.connected:
            log.info("control plane %s reachable", self.url)
            self._last_failure = ""
        elif not connected and (self.connected or why != self._last_failure):
            if not self._last_failure:
                # One line per outage, not one per retry.
                log.warning("control plane unreachable: %s; retrying", why)
            self._last_failure = why
        self.connected = connected
        self.metrics.connected.set(1 if connected else 0)

    def _with_svid(self, payload: dict[str, object]) -> dict[str, object]:
        """`payload` with the current SVID's facts under "svid", when there is one."""
        svid = self.svid_report() if self.svid_report is not None else None
        if svid is not None:
            payload["svid"] = svid
        return payload

    async def _sleep_backoff(self, attempt: int) -> None:
        await asyncio.sleep(backoff_delay(attempt, self.rand, cap=self.backoff_cap))

    # -- session: register and heartbeat --

    async def _register(self) -> bool:
        ready = self.is_ready()
        payload = self._with_svid(self.registration.body(ready))
        status, body = await self._call("POST", f"{self.base}/register", payload)
        if status != 200:
            log.warning("control plane refused registration: %d %s", status, _excerpt(body))
            return False
        try:
            answer = msgspec.json.decode(body, type=_RegisterAnswer) if body else _RegisterAnswer()
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.warning("register answer unreadable (%s); heartbeating every 1s", exc)
            answer = _RegisterAnswer()
        self.heartbeat_interval = max(0.05, answer.heartbeat_interval)
        self.session += 1
        self.metrics.registrations.inc()
        self.metrics.ready.set(1 if ready else 0)
        self.registered.set()
        log.info(
            "registered %s with control plane (heartbeat every %gs)",
            self.registration.proxy_id,
            self.heartbeat_interval,
        )
        return True

    async def _heartbeat(self) -> bool:
        """One heartbeat; False when the control plane no longer knows us."""
        ready = self.is_ready()
        payload = self._with_svid({"ready": ready})
        status, body = await self._call("POST", f"{self.base}/heartbeat", payload)
        if status == 404:
            self.metrics.heartbeats.labels("unknown").inc()
            return False
        if status != 200:
            self.metrics.heartbeats.labels("error").inc()
            log.warning("heartbeat answered %d %s", status, _excerpt(body))
            return True
        self.metrics.heartbeats.labels("ok").inc()
        self.metrics.ready.set(1 if ready else 0)
        return True

    async def _session_loop(self) -> None:
        attempt = 0
        while True:
            try:
                if not self.registered.is_set():
                    if await self._register():
                        attempt = 0
                        continue
                    await self._sleep_backoff(attempt)
                    attempt += 1
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.heartbeat_interval):
                        await self._wake.wait()
                self._wake.clear()
                if not await self._heartbeat():
                    log.info("control plane does not know this proxy; registering again")
                    self.registered.clear()
                attempt = 0
            except ControlPlaneError:
                self.metrics.heartbeats.labels("error").inc()
                await self._sleep_backoff(attempt)
                attempt += 1

    # -- watch: long-poll, apply, ACK/NACK --

    async def _watch_loop(self) -> None:
        attempt = 0
        resync = True
        polled_session = -1
        while True:
            await self.registered.wait()
            # After a new registration or an error, ask for the whole state again (version ""):
            # a restarted control plane has lost our ACK, and re-sending it is cheap.
            fresh = resync or polled_session != self.session
            version = "" if fresh else self.holder.last_version
            polled_session = self.session
            target = (
                f"{self.base}/snapshot?version={quote(version, safe='')}&wait={self.poll_wait:g}"
            )
            try:
                status, body = await self._call(
                    "GET", target, time_limit=self.poll_wait + self.request_timeout + 1.0
                )
            except ControlPlaneError:
                resync = True
                await self._sleep_backoff(attempt)
                attempt += 1
                continue
            if status == 304:
                resync, attempt = False, 0
            elif status == 200:
                await self._receive(body)
                resync, attempt = False, 0
            elif status == 404:
                log.info("control plane has no snapshot for this proxy; registering again")
                self.registered.clear()
                self._wake.set()
                resync = True
            else:
                log.warning("snapshot poll answered %d %s", status, _excerpt(body))
                resync = True
                await self._sleep_backoff(attempt)
                attempt += 1

    async def _receive(self, body: bytes) -> None:
        holder = self.holder
        try:
            snap = snapshot_mod.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            version = _peek_version(body)
            reason = f"invalid snapshot: {exc}"
            holder.reject(version, reason)
            await self._ack(version, reason)
            return
        if snap.proxy.proxy_id != self.registration.proxy_id:
            reason = (
                f"snapshot is for proxy {snap.proxy.proxy_id!r}, not {self.registration.proxy_id!r}"
            )
            holder.reject(snap.version, reason)
            await self._ack(snap.version, reason)
            return
        if self.on_snapshot is not None:
            # Trust bundle and signer (root rotation) matter even in a snapshot the data plane
            # refuses: they are about reaching the control plane at all.
            try:
                self.on_snapshot(snap)
            except Exception:
                log.exception("handling the snapshot's TLS settings failed")
        if holder.snapshot is not None and snap.version and snap.version == holder.version:
            # Same content as what we run (a resync, or the one we started from the cache).
            holder.last_version = snap.version
            if holder.source != "control-plane":
                holder.source = "control-plane"
                holder.metrics.snapshot_info.clear()
                holder.metrics.snapshot_info.labels(snap.version, "control-plane").set(1)
            holder.status, holder.last_error = "ACK", ""
            await self._ack(snap.version, None)
            return
        error = holder.install(snap, "control-plane")
        await self._ack(snap.version, error)

    async def _ack(self, version: str, error: str | None) -> None:
        body = {"version": version, "status": "NACK" if error else "ACK", "error": error or ""}
        try:
            status, answer = await self._call("POST", f"{self.base}/ack", body)
        except ControlPlaneError:
            return  # the next resync after reconnecting sends it again
        if status != 200:
            log.warning("ack for %s answered %d %s", version, status, _excerpt(answer))


def error_message(body: bytes) -> str:
    """The message of the control plane's error document, else the start of the body."""
    try:
        doc = msgspec.json.decode(body)
        return str(doc["error"]["message"])
    except (msgspec.DecodeError, KeyError, TypeError):
        return _excerpt(body)


def _peek_version(body: bytes) -> str:
    try:
        return msgspec.json.decode(body, type=_VersionOnly).version
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""


def _excerpt(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", "replace").replace("\n", " ")
    return text + ("..." if len(body) > limit else "")
