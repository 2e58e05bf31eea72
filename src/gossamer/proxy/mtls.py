"""Sidecar mTLS in the data plane: SVID contexts, outbound resumption, a sniffing inbound acceptor.

`TlsState` holds what the proxy's SVID and the Snapshot's trust bundle make: one server and one
client `SSLContext`, rebuilt whenever either changes. Connections keep the context they started
with, so a renewal or a root rotation drops nothing.

Inbound, a listener whose mode is DISABLE (or whose Snapshot has no `tls`) is an ordinary
`create_server` listener: the plaintext path is exactly what it was. In STRICT and PERMISSIVE
the `InboundAcceptor` accepts itself, peeks the first byte (0x16: a TLS handshake record) and hands
the socket to `loop.connect_accepted_socket`, with the server context for TLS: the TLS work stays
in uvloop's C code. The mode is read per connection, so a Snapshot can change it at any time.

Outbound, a cluster with `tls` connects through `OutboundTls`: TCP first (so a refused port is an
ordinary connect failure), then TLS 1.3 with the proxy's SVID, the chain checked against the
bundle and the server's SPIFFE ID against the cluster's identities. `ResumingContext` offers the
last session ticket of the same endpoint (keyed by a synthetic per-endpoint SNI), since
`create_connection` has no `session=` argument.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

from gossamer.proxy import flags, measure
from gossamer.proxy.accesslog import (
    END_CLIENT_CLOSED,
    END_CLIENT_RESET,
    END_DRAINING,
    END_TLS_FAILED,
)
from gossamer.proxy.connection import DownstreamConnection
from gossamer.proxy.upstream import TlsBufferedReads, TlsConnectError, TlsReadBuffer
from gossamer.security.tls import (
    PeerIdentityError,
    SvidFiles,
    TlsConfigError,
    check_peer,
    client_context,
    peer_spiffe_id,
    server_context,
)
from gossamer.telemetry.metrics import CounterChild
from gossamer.telemetry.ratelimit import RateLimit

if TYPE_CHECKING:
    # `cryptography` (through security.bundle) is imported only where mTLS is really used: it
    # costs ~10 MiB of RSS, which a sidecar without mTLS never pays.
    from gossamer.proxy.dataplane import Listener
    from gossamer.proxy.loadbalance.base import EndpointState
    from gossamer.proxy.stats import DataPlaneMetrics
    from gossamer.security.bundle import TrustBundle

log = logging.getLogger("gossamer.proxy.mtls")

_P = TypeVar("_P", bound=asyncio.BaseProtocol)

TLS_HANDSHAKE = 0x16  # the first byte of a TLS record carrying a handshake (ClientHello)
LOG_INTERVAL = 5.0  # at most one handshake-failure line per direction per this many seconds
XFCC = b"x-forwarded-client-cert"
SNI_SUFFIX = "mesh.internal"
MAX_SESSIONS = 4096  # endpoints whose session ticket is kept (one each)

_STRICT = "STRICT"
_PERMISSIVE = "PERMISSIVE"
_SNI_UNSAFE = re.compile(r"[^a-z0-9-]+")

# X509_V_ERR_* codes (openssl/x509_vfy.h) that mean "not our CA" and "out of its validity period".
_UNKNOWN_CA_CODES = frozenset({2, 18, 19, 20, 21})
_EXPIRED_CODES = frozenset({9, 10})
_PROTOCOL_REASONS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "HTTP_REQUEST",
        "UNSUPPORTED_PROTOCOL",
        "NO_PROTOCOLS_AVAILABLE",
        "UNEXPECTED_MESSAGE",
        "UNEXPECTED_RECORD",
        "RECORD_LAYER_FAILURE",
        "PACKET_LENGTH_TOO_LONG",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "VERSION_TOO_LOW",
    }
)

_REFUSAL_MESSAGE = (
    "this port requires mutual TLS from mesh sidecars: send requests through your own sidecar "
    "(its outbound listener), which encrypts them with its SVID"
)


def classify(exc: BaseException) -> tuple[str, str]:
    """(metric result, one-line reason) for a failed TLS handshake, either side."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        message = exc.verify_message or exc.reason or "verification failed"
        if code in _EXPIRED_CODES:
            return "expired", f"certificate verify failed: {message}"
        if code in _UNKNOWN_CA_CODES:
            return "unknown-ca", f"certificate verify failed: {message} (not the mesh's CA)"
        return "bad-certificate", f"certificate verify failed: {message}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "no-client-cert", "the client presented no certificate"
        if reason in _PROTOCOL_REASONS:
            return "protocol", f"not a TLS 1.3 handshake ({reason})"
        if "ALERT" in reason:
            return "peer-rejected", f"the peer refused the handshake ({reason})"
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return "closed", "the peer closed the connection during the handshake"
        return "protocol", f"TLS error {reason or exc}"
    if isinstance(exc, TimeoutError):
        return "timeout", "the handshake did not finish in time"
    if isinstance(exc, ConnectionAbortedError) and "handshake" in str(exc).lower():
        return "timeout", "the handshake did not finish in time"
    if isinstance(exc, ConnectionError | EOFError):
        return "closed", "the peer closed the connection during the handshake"
    if isinstance(exc, PeerIdentityError):
        return "bad-identity", str(exc)
    return "other", f"{type(exc).__name__}: {exc}"


def _more(held: int) -> str:
    """The tail of a rate-limited line: how many like it were held back since the last one."""
    return f" ({held} more like it since the last line)" if held else ""


class ResumingContext(ssl.SSLContext):
    """A client context that offers, per server name, the last session ticket it saw.

    `wrap_bio` is what asyncio and uvloop call to start TLS on a connection; the session must be
    given there. TLS 1.3 tickets arrive after the handshake, so the connection's `SSLObject` is
    remembered and its session read when the next connection to the same name starts.
    """

    # Set in `__init__`-less fashion: `ssl.SSLContext` is built by `__new__(protocol)`.
    _last: dict[str, ssl.SSLObject]
    _tickets: dict[str, ssl.SSLSession]

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if session is None and isinstance(server_hostname, str):
            session = self.session_for(server_hostname)
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def session_for(self, name: str) -> ssl.SSLSession | None:
        sessions = self.__dict__.setdefault("_tickets", {})
        last = self.__dict__.setdefault("_last", {}).pop(name, None)
        if last is not None:
            session = last.session
            if session is not None and session.has_ticket:
                if len(sessions) >= MAX_SESSIONS and name not in sessions:
                    sessions.clear()  # the same crude bound as `remember`
                sessions[name] = session
        return cast("ssl.SSLSession | None", sessions.get(name))

    def remember(self, name: str, ssl_object: ssl.SSLObject) -> None:
        last = self.__dict__.setdefault("_last", {})
        if len(last) >= MAX_SESSIONS and name not in last:
            last.clear()  # a crude bound: endpoints churn rarely, and a miss is a full handshake
        last[name] = ssl_object

    def cached(self) -> int:
        """How many endpoints have a session to offer (or a connection to take one from)."""
        return len(self.__dict__.get("_tickets", {}).keys() | self.__dict__.get("_last", {}).keys())


@dataclass(frozen=True, slots=True)
class PreparedBundle:
    """A parsed trust bundle and the contexts built with it, checked before a Snapshot swap."""

    pem: str
    bundle: TrustBundle | None
    server: ssl.SSLContext | None
    client: ResumingContext | None


class TlsState:
    """The proxy's SVID, the mesh trust bundle, the contexts they make, and the inbound mode."""

    def __init__(self, loop: asyncio.AbstractEventLoop, metrics: DataPlaneMetrics) -> None:
        self.loop = loop
        self.metrics = metrics
        self.mode: str | None = None  # None: the Snapshot has no `tls` (no mTLS at all)
        self.svid: SvidFiles | None = None
        self.own_id: str | None = None
        self.svid_not_after: str | None = None
        self.bundle: TrustBundle | None = None
        self.bundle_pem = ""
        self.server: ssl.SSLContext | None = None
        self.client: ResumingContext | None = None
        self.generation = 0  # bumped with every new pair of contexts
        # At most one handshake-failure line per direction and reason per LOG_INTERVAL.
        self.inbound_log = RateLimit(loop.time, LOG_INTERVAL)
        self.outbound_log = RateLimit(loop.time, LOG_INTERVAL)
        self._handshakes: dict[tuple[str, str], CounterChild] = {}
        self._peers: dict[str, CounterChild] = {}

    # --- configuration ---------------------------------------------------------------------------

    def set_svid(self, files: SvidFiles | None) -> None:
        """Load new SVID files (or forget the SVID) and rebuild both contexts.

        Raises:
            TlsConfigError: the files cannot be read or are not an SVID; the old ones stay.
        """
        if files is None:
            self.svid = self.own_id = self.svid_not_after = None
            self._install(None, None)
            return
        own_id, not_after = read_svid_identity(files)
        server, client = build_contexts(files, self.bundle)
        self.svid, self.own_id, self.svid_not_after = files, own_id, not_after
        self._install(server, client)

    def prepare_bundle(self, pem: str) -> PreparedBundle:
        """Parse a Snapshot's bundle and build the contexts it makes, without installing them.

        Raises:
            BundleError: the PEM is not a bundle of CA certificates.
            TlsConfigError: the contexts cannot be built with it.
        """
        from gossamer.security.bundle import BundleError, TrustBundle

        bundle = TrustBundle.from_pem(pem) if pem.strip() else None
        if bundle is not None and not len(bundle):
            raise BundleError("trust bundle: no certificate in the PEM")
        server, client = build_contexts(self.svid, bundle)
        return PreparedBundle(pem, bundle, server, client)

    def install_bundle(self, prepared: PreparedBundle) -> None:
        self.bundle_pem = prepared.pem
        self.bundle = prepared.bundle
        self._install(prepared.server, prepared.client)

    def _install(self, server: ssl.SSLContext | None, client: ResumingContext | None) -> None:
        self.server = server
        self.client = client
        self.generation += 1

    def status(self) -> dict[str, object]:
        """What the admin /config page shows (never the key, nor its path's content)."""
        return {
            "mode": self.mode or "none",
            "svidLoaded": self.svid is not None,
            "spiffeId": self.own_id,
            "svidNotAfter": self.svid_not_after,
            "svidFile": str(self.svid.cert_chain) if self.svid is not None else None,
            "bundleRoots": self.bundle.fingerprints() if self.bundle is not None else [],
            "contextsReady": self.server is not None,
            "contextGeneration": self.generation,
            "outboundSessionsCached": self.client.cached() if self.client is not None else 0,
        }

    # --- accounting ------------------------------------------------------------------------------

    def count_handshake(self, direction: str, result: str) -> None:
        child = self._handshakes.get((direction, result))
        if child is None:
            child = self._handshakes[(direction, result)] = self.metrics.tls_handshakes.labels(
                direction, result
            )
        child.value += 1.0

    def peer_counter(self, peer: str) -> CounterChild:
        child = self._peers.get(peer)
        if child is None:
            child = self._peers[peer] = self.metrics.inbound_requests_by_peer.labels(peer)
        return child


def build_contexts(
    svid: SvidFiles | None, bundle: TrustBundle | None
) -> tuple[ssl.SSLContext | None, ResumingContext | None]:
    """Server and client contexts for `svid` and `bundle`; (None, None) until both exist.

    Raises:
        TlsConfigError: the SVID files cannot be loaded, or the bundle is empty.
    """
    if svid is None or bundle is None:
        return None, None
    server = server_context(svid, bundle)
    client = cast(ResumingContext, client_context(svid, bundle, context_type=ResumingContext))
    return server, client


def read_svid_identity(files: SvidFiles) -> tuple[str, str]:
    """(SPIFFE ID, notAfter ISO time) of the leaf in an SVID chain file.

    Raises:
        TlsConfigError: unreadable, not PEM, or the leaf is not an SVID.
    """
    from cryptography import x509

    from gossamer.security.bundle import VerifyError, svid_spiffe_id

    try:
        data = files.cert_chain.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"cannot read the SVID {files.cert_chain}: {exc.strerror}") from None
    try:
        leaf = x509.load_pem_x509_certificates(data)[0]
        spiffe_id = svid_spiffe_id(leaf)
    except (ValueError, IndexError):
        raise TlsConfigError(f"{files.cert_chain} holds no PEM certificate") from None
    except VerifyError as exc:
        raise TlsConfigError(f"{files.cert_chain}: {exc}") from None
    not_after = leaf.not_valid_after_utc.astimezone(dt.UTC).isoformat()
    return str(spiffe_id), not_after


# --- outbound -------------------------------------------------------------------------------------


def server_name(cluster: str, host: str, port: int) -> str:
    """A synthetic, DNS-safe SNI naming one endpoint of one cluster: the session cache key."""
    ip = _SNI_UNSAFE.sub("-", host.lower()).strip("-") or "host"
    labels = [str(port), f"ip-{ip}"[:63]]
    for part in cluster.lower().split("."):
        label = _SNI_UNSAFE.sub("-", part).strip("-")[:63].strip("-")
        if label:
            labels.append(label)
    name = ".".join([*labels, SNI_SUFFIX])
    return name if len(name) <= 253 else ".".join([*labels[:2], SNI_SUFFIX])


class OutboundTls:
    """How one cluster's connections originate mTLS (see the module docstring)."""

    __slots__ = ("cluster", "identities", "state")

    def __init__(self, state: TlsState, cluster: str, identities: list[str]) -> None:
        self.state = state
        self.cluster = cluster
        self.identities = list(identities)

    async def connect(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: Callable[[], _P],
        endpoint: EndpointState,
        timeout: float,  # noqa: ASYNC109 (connect then handshake, one budget: the cluster's)
    ) -> _P:
        """Open TCP then TLS to `endpoint`; returns the protocol once the handshake is done.

        The peer's identity is checked by `verify`, after the pool has counted the connection.

        Raises:
            OSError / TimeoutError: the TCP connection itself failed (as for plaintext).
            TlsConnectError: no SVID yet, or the handshake failed (the reason says how).
        """
        state = self.state
        ctx = state.client
        address = endpoint.address
        if ctx is None:
            state.count_handshake("outbound", "no-svid")
            why = "no SVID yet" if state.svid is None else "no trust bundle yet"
            raise TlsConnectError(
                "no-svid",
                f"TLS to {address}: this proxy has {why}; it never sends plaintext to a cluster "
                "that requires mTLS",
                endpoint_fault=False,
            )
        host, port = endpoint.host, endpoint.port
        deadline = loop.time() + timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        name = server_name(self.cluster, host, port)
        try:
            async with asyncio.timeout(max(0.001, deadline - loop.time())):
                _, proto = await loop.create_connection(
                    factory, sock=sock, ssl=ctx, server_hostname=name
                )
        except (OSError, TimeoutError, EOFError) as exc:
            if sock.fileno() >= 0:
                sock.close()
            result, text = classify(exc)
            state.count_handshake("outbound", result)
            reason = f"TLS to {address}: {text}"
            held = state.outbound_log.due(result)
            if held is not None:
                log.warning("outbound %s (cluster %s)%s", reason, self.cluster, _more(held))
            raise TlsConnectError(result, reason) from None
        return proto

    def verified_peer(
        self, transport: asyncio.BaseTransport | None, address: str
    ) -> tuple[str | None, str | None]:
        """Check the server's SPIFFE ID: (None, its ID) when allowed, else (the reason, None);
        counted, and logged rate-limited."""
        state = self.state
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is None:
            state.count_handshake("outbound", "closed")
            return f"TLS to {address}: the connection closed right after the handshake", None
        try:
            peer = check_peer(ssl_object, self.identities)
        except PeerIdentityError as exc:
            result = "peer-not-allowed" if str(exc).startswith("peer spiffe://") else "bad-identity"
            state.count_handshake("outbound", result)
            reason = f"TLS to {address}: {exc}"
            held = state.outbound_log.due(result)
            if held is not None:
                log.warning("outbound %s (cluster %s)%s", reason, self.cluster, _more(held))
            return reason, None
        resumed = ssl_object.session_reused
        state.count_handshake("outbound", "resumed" if resumed else "ok")
        ctx = ssl_object.context
        if isinstance(ctx, ResumingContext) and ssl_object.server_hostname:
            ctx.remember(ssl_object.server_hostname, ssl_object)
        return None, str(peer)


# --- inbound --------------------------------------------------------------------------------------


class MtlsDownstreamConnection(DownstreamConnection, TlsBufferedReads):
    """An inbound connection that completed the mTLS handshake: it knows its peer's identity.

    It reads through `TlsReadBuffer` (see there: uvloop's TLS transport would allocate 256 KiB per
    read for a plain Protocol)."""

    __slots__ = ("_state", "rejected")

    mtls = True

    def buffer_updated(self, nbytes: int) -> None:
        if not self.rejected:
            DownstreamConnection.data_received(self, bytes(TlsReadBuffer.view[:nbytes]))

    def __init__(self, listener: Listener, state: TlsState, accepted: float) -> None:
        super().__init__(listener)
        self.rejected = False
        self._state = state
        self.opened_at = accepted  # before the handshake, which connection_made follows

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio and uvloop call this as soon as the handshake completes, before any data, and
        # may deliver data before the accepting coroutine resumes: the identity is set here.
        state = self._state
        ssl_object = transport.get_extra_info("ssl_object")
        try:
            peer = str(peer_spiffe_id(ssl_object))
        except PeerIdentityError as exc:
            self.rejected = True
            state.count_handshake("inbound", "bad-identity")
            held = state.inbound_log.due("bad-identity")
            if held is not None:
                log.warning(
                    "inbound TLS handshake from %s refused (bad-identity): %s%s",
                    _peer_text(transport),
                    exc,
                    _more(held),
                )
            access = self.listener.access_log
            if access is not None:
                access.refused(
                    "inbound",
                    _peer_text(transport),
                    self.opened_at,
                    END_TLS_FAILED,
                    f"bad-identity: {exc}",
                )
            transport.abort()  # type: ignore[attr-defined]
            return
        state.count_handshake("inbound", "resumed" if ssl_object.session_reused else "ok")
        state.metrics.inbound_connections_tls.labels("mtls").inc()
        self.peer_spiffe_id = peer
        own = state.own_id or ""
        self.xfcc_field = (XFCC, f"By={own};URI={peer}".encode("ascii", "replace"))
        self.peer_requests = state.peer_counter(peer)
        super().connection_made(transport)

    def eof_received(self) -> bool:
        return False if self.rejected else DownstreamConnection.eof_received(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.rejected:
            DownstreamConnection.connection_lost(self, exc)


class PlainSniffedConnection(DownstreamConnection):
    """A plaintext connection accepted by a PERMISSIVE listener (counted under peer 'none')."""

    __slots__ = ()

    def __init__(self, listener: Listener, state: TlsState, accepted: float) -> None:
        super().__init__(listener)
        self.opened_at = accepted
        state.metrics.inbound_connections_tls.labels("plaintext").inc()
        self.peer_requests = state.peer_counter("none")


class InboundAcceptor:
    """The inbound listening socket: `create_server` in DISABLE mode, a sniffing loop otherwise."""

    def __init__(self, listener: Listener, state: TlsState) -> None:
        self.listener = listener
        self.loop = listener.loop
        self.state = state
        self.sock: socket.socket | None = None
        self.server: asyncio.AbstractServer | None = None
        self.accept_task: asyncio.Task[None] | None = None
        self.switch_task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.sniffing = False  # wanted: STRICT or PERMISSIVE
        self.closed = False

    async def bind(self, host: str, port: int, backlog: int) -> tuple[str, int]:
        """Bind and listen, serving plaintext; returns (host, port) really bound.

        Raises:
            OSError: the address cannot be bound.
        """
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=backlog)
        sock.setblocking(False)
        self.sock = sock
        try:
            # The server gets its own descriptor of the same listening socket: closing it (to
            # start sniffing) leaves `sock` listening, and queued connections wait in the kernel.
            self.server = await self.loop.create_server(
                self.listener.protocol, sock=sock.dup(), backlog=backlog
            )
        except BaseException:
            sock.close()
            raise
        name = sock.getsockname()
        return str(name[0]), int(name[1])

    def set_mode(self, mode: str | None) -> None:
        """Follow a Snapshot's mode: sniff in STRICT/PERMISSIVE, plain `create_server` otherwise."""
        want = mode in (_STRICT, _PERMISSIVE)
        self.sniffing = want
        if self.closed or self.sock is None:
            return
        if want:
            if self.server is not None:
                self.server.close()  # stops accepting at once; `sock` keeps listening
                self.server = None
            if self.accept_task is None:
                self.accept_task = self.loop.create_task(self._accept_loop())
        elif self.server is None and self.switch_task is None:
            self.switch_task = self.loop.create_task(self._back_to_plain())

    async def _back_to_plain(self) -> None:
        try:
            assert self.sock is not None
            server = await self.loop.create_server(
                self.listener.protocol, sock=self.sock.dup(), backlog=self.listener.settings.backlog
            )
        except OSError as exc:
            log.error("cannot serve the inbound listener in plaintext again: %s", exc)
            return
        finally:
            self.switch_task = None
        if self.sniffing or self.closed:
            server.close()  # the mode changed back meanwhile
            return
        self.server = server
        if self.accept_task is not None:
            self.accept_task.cancel()
            self.accept_task = None

    async def _accept_loop(self) -> None:
        sock = self.sock
        assert sock is not None
        loop = self.loop
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                # Out of descriptors and the like: the backlog holds clients meanwhile.
                log.warning("inbound listener: accept failed: %s", exc)
                await asyncio.sleep(0.05)
                continue
            task = loop.create_task(self._handle(conn, peer))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _handle(self, conn: socket.socket, peer: Any) -> None:
        loop = self.loop
        listener = self.listener
        timeout = listener.settings.header_timeout
        started = measure.now()  # for the access log's line, if this one ends here
        handed = False
        try:
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            first = await self._peek(conn, timeout)
            if not first:  # closed, or no byte within the header timeout
                if first is None:
                    why = f"no byte within the {timeout:g}s header timeout"
                    self._log_refused(peer, started, flags.HEADER_TIMEOUT, why)
                else:
                    self._log_refused(peer, started, END_CLIENT_CLOSED, None)
                return
            state = self.state
            mode = state.mode
            if first[0] == TLS_HANDSHAKE and mode in (_STRICT, _PERMISSIVE):
                ctx = state.server
                if ctx is None:
                    state.count_handshake("inbound", "no-svid")
                    self._log_refused(peer, started, END_TLS_FAILED, "no-svid: no SVID yet")
                    held = state.inbound_log.due("no-svid")
                    if held is not None:
                        log.warning(
                            "inbound TLS handshake from %s refused (no-svid): "
                            "this proxy has no SVID yet%s",
                            _addr_text(peer),
                            _more(held),
                        )
                    return
                handed = True
                try:
                    await loop.connect_accepted_socket(
                        lambda: MtlsDownstreamConnection(listener, state, started),
                        conn,
                        ssl=ctx,
                        ssl_handshake_timeout=timeout,
                    )
                except (OSError, TimeoutError, EOFError) as exc:
                    result, text = classify(exc)
                    state.count_handshake("inbound", result)
                    self._log_refused(peer, started, END_TLS_FAILED, f"{result}: {text}")
                    held = state.inbound_log.due(result)
                    if held is not None:
                        log.warning(
                            "inbound TLS handshake from %s failed (%s): %s%s",
                            _addr_text(peer),
                            result,
                            text,
                            _more(held),
                        )
                    if conn.fileno() >= 0:
                        conn.close()
                return
            if mode == _STRICT:
                received, sent = await self._refuse_plaintext(conn)
                self._log_refused(
                    peer,
                    started,
                    flags.MTLS_REQUIRED,
                    "plaintext on a STRICT mTLS listener",
                    received,
                    sent,
                )
                return
            handed = True
            await loop.connect_accepted_socket(
                lambda: PlainSniffedConnection(listener, state, started), conn
            )
        except asyncio.CancelledError:
            if not handed:
                self._log_refused(peer, started, END_DRAINING, None)
            raise
        except OSError as exc:
            if not handed:  # the client went away while we looked at it
                self._log_refused(peer, started, END_CLIENT_RESET, exc.strerror or str(exc))
            return
        finally:
            if not handed and conn.fileno() >= 0:
                conn.close()

    def _log_refused(
        self, peer: Any, started: float, end: str, error: str | None, *bytes_in_out: int
    ) -> None:
        access = self.listener.access_log
        if access is not None:
            access.refused("inbound", _addr_text(peer), started, end, error, *bytes_in_out)

    async def _peek(self, conn: socket.socket, timeout: float) -> bytes | None:  # noqa: ASYNC109
        """The first byte (not consumed); b"" on EOF or error, None on timeout."""
        try:
            return conn.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            pass
        fd = conn.fileno()
        ready: asyncio.Future[None] = self.loop.create_future()
        self.loop.add_reader(fd, _set_done, ready)
        try:
            async with asyncio.timeout(timeout):
                await ready
        except TimeoutError:
            return None
        finally:
            self.loop.remove_reader(fd)
        try:
            return conn.recv(1, socket.MSG_PEEK)
        except OSError:
            return b""

    async def _refuse_plaintext(self, conn: socket.socket) -> tuple[int, int]:
        """Tell a plaintext client why, in plaintext HTTP, and close; nothing reaches the app.
        Returns the bytes read and written."""
        self.state.metrics.inbound_connections_tls.labels("refused-plaintext").inc()
        self.listener.stats.local_child(flags.MTLS_REQUIRED).inc()
        received = sent = 0
        with contextlib.suppress(OSError):
            # The request head, so closing does not reset the connection.
            received += len(conn.recv(65536))
        data = flags.local_response(flags.MTLS_REQUIRED, _REFUSAL_MESSAGE, b"", keep_alive=False)
        try:
            async with asyncio.timeout(1.0):
                await self.loop.sock_sendall(conn, data)
                sent = len(data)
                conn.shutdown(socket.SHUT_WR)
                # Read until the client closes, so unread bytes do not turn our FIN into a RST
                # that could discard the answer before the client reads it.
                while more := await self.loop.sock_recv(conn, 65536):
                    received += len(more)
        except (OSError, TimeoutError):
            pass
        return received, sent

    def close(self) -> None:
        """Stop accepting (drain): the server, the accept loop, connections not yet handed over."""
        self.closed = True
        if self.server is not None:
            self.server.close()
        for task in (self.accept_task, self.switch_task, *self.tasks):
            if task is not None:
                task.cancel()
        self.accept_task = self.switch_task = None
        if self.sock is not None:
            self.sock.close()

    async def wait_closed(self) -> None:
        if self.server is not None:
            await self.server.wait_closed()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _addr_text(peer: Any) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        host = str(peer[0])
        return f"[{host}]:{peer[1]}" if ":" in host else f"{host}:{peer[1]}"
    return str(peer)


def _peer_text(transport: asyncio.BaseTransport) -> str:
    return _addr_text(transport.get_extra_info("peername"))
