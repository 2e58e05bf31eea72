"""The sidecar's data plane: listeners, compiled route and cluster tables, snapshot swaps, drain."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass

from gossamer import snapshot as snap
from gossamer.filters import ratelimit
from gossamer.filters.authz import AuthzCompileError
from gossamer.proxy import failfast, measure
from gossamer.proxy.accesslog import AccessLog, open_target
from gossamer.proxy.authorize import Authorizer
from gossamer.proxy.breaker import resilience_metrics
from gossamer.proxy.cluster import ClusterRuntime
from gossamer.proxy.connection import DownstreamConnection
from gossamer.proxy.deadlines import Deadlines
from gossamer.proxy.exchange import RulePlan
from gossamer.proxy.fallback import resilience_counters
from gossamer.proxy.golden import GoldenMetrics, MeshNames, Recorder, recorders
from gossamer.proxy.mtls import InboundAcceptor, OutboundTls, PreparedBundle, TlsState
from gossamer.proxy.router import RouteCompileError, RouteTable
from gossamer.proxy.stats import ClusterStats, DataPlaneMetrics, ListenerStats
from gossamer.proxy.tap import TapHub
from gossamer.proxy.tracing import ProxyTracer
from gossamer.security.tls import SvidFiles, TlsConfigError
from gossamer.snapshot import Snapshot
from gossamer.telemetry.metrics import Registry

# After the drain timeout: how long the connections cut then get to close (and be logged) before
# the ones still open are aborted.
DRAIN_GRACE = 1.0


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Everything the data plane needs that does not come from the Snapshot.

    Addresses are "host:port" strings; port 0 lets the OS choose (`DataPlane.start()` returns what
    was really bound). Durations are seconds on the event loop's clock.
    """

    inbound: str = "127.0.0.1:0"
    outbound: str = "127.0.0.1:0"
    max_header_bytes: int = 65536
    max_request_headers: int = 100  # request header fields (Envoy's default); more: 431
    header_timeout: float = 10.0  # a client must send a whole request head within this
    downstream_idle_timeout: float = 300.0  # keep-alive client connection with no request
    retry_buffer_bytes: int = 65536  # request bodies up to this are buffered and retriable
    default_host: str | None = None  # route unmatched hosts as if they named this service
    drain_timeout: float = 5.0
    backlog: int = 1024
    access_log: str | None = None  # a file, or "-" for stdout; None: no access log
    access_log_sample: float = 1.0  # share of ordinary requests logged (see proxy/accesslog.py)


@dataclass(frozen=True, slots=True)
class BoundAddresses:
    """The "host:port" each listener really bound."""

    inbound: str
    outbound: str


class SnapshotError(Exception):
    """A Snapshot the data plane cannot apply; `reason` is one line for the NACK."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Tables:
    """Everything compiled from one Snapshot; swapped as a whole by `DataPlane.apply`."""

    __slots__ = ("app", "authz", "clusters", "plans", "rate_limits", "routes", "snapshot")

    def __init__(
        self,
        snapshot: Snapshot | None,
        routes: RouteTable,
        clusters: dict[str, ClusterRuntime],
        plans: dict[int, RulePlan],
        app: ClusterRuntime | None,
        authz: Authorizer | None = None,
        rate_limits: ratelimit.RateLimitTables | None = None,
    ) -> None:
        self.snapshot = snapshot
        self.routes = routes
        self.clusters = clusters
        self.plans = plans  # by id() of the Snapshot's RouteRule objects, kept alive by `snapshot`
        self.app = app
        self.authz = authz  # None: no AuthorizationPolicy selects this service (no check at all)
        # None: no RateLimitPolicy applies to this proxy (no check at all, either direction).
        self.rate_limits = rate_limits


class Listener:
    """One listening socket (inbound or outbound) and its open connections."""

    def __init__(self, dataplane: DataPlane, direction: str) -> None:
        self.dataplane = dataplane
        self.loop = dataplane.loop
        self.settings = dataplane.settings
        self.direction = direction
        self.outbound = direction == "outbound"
        self.stats = ListenerStats(dataplane.metrics, direction)
        self.none_stats = ClusterStats(dataplane.metrics, direction, "")
        self.golden: Recorder = dataplane.golden[direction]
        self.connections: set[DownstreamConnection] = set()
        self.rand = dataplane.rand.random
        s = self.settings
        self.timer_period = max(0.001, min(s.header_timeout, s.downstream_idle_timeout))
        self.server: asyncio.AbstractServer | None = None
        self.acceptor: InboundAcceptor | None = None  # the inbound listener's (mTLS modes)
        self.access_log: AccessLog | None = None  # set by DataPlane.start when configured
        self.tap: TapHub | None = None  # the tap hub while an admin client taps (proxy/tap.py)

    def protocol(self) -> DownstreamConnection:
        return DownstreamConnection(self)

    def on_connection_closed(self) -> None:
        dp = self.dataplane
        drained = dp.drained
        if drained is not None and not drained.done() and dp.open_connections() == 0:
            drained.set_result(None)


class DataPlane:
    """The sidecar's listeners and compiled tables (see docs/internals.md, "Data plane seams")."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, settings: ProxySettings, metrics: Registry
    ) -> None:
        self.loop = loop
        self.settings = settings
        self.metrics = DataPlaneMetrics(metrics)
        metrics.register(failfast.ejections_counter(self.metrics))
        self.rate_limit_metrics = ratelimit.RateLimitMetrics(metrics)
        for family in resilience_metrics(self.metrics).families():
            metrics.register(family)
        for counter in resilience_counters(self.metrics).all():  # fallbacks, faults, mirrors
            metrics.register(counter)
        self.rand = random.Random()
        self.draining = False
        self.drained: asyncio.Future[None] | None = None
        self.tables = Tables(None, RouteTable(), {}, {}, None)
        self.deadlines = Deadlines(loop)
        self.tls = TlsState(loop, self.metrics)
        # Trace headers on every request; spans and their export when a Snapshot asks for them.
        self.tracing = ProxyTracer(loop, metrics, lambda: self.tls.own_id)
        # The golden metrics (proxy/golden.py); their names follow each Snapshot and SVID.
        self.golden_names = MeshNames(lambda: self.tls.own_id)
        golden_in, golden_out = recorders(GoldenMetrics(metrics), self.golden_names, measure.now)
        self.golden: dict[str, Recorder] = {"inbound": golden_in, "outbound": golden_out}
        self.inbound = Listener(self, "inbound")
        self.outbound = Listener(self, "outbound")
        self.inbound.acceptor = InboundAcceptor(self.inbound, self.tls)
        self.access_log: AccessLog | None = None
        # Live taps (admin GET /tap): the listeners' `tap` stays None while nobody taps.
        self.taps = TapHub(loop, (self.inbound, self.outbound), lambda: self.tls.own_id)

    def _open_access_log(self) -> None:
        """Raises AccessLogError: the configured file cannot be opened."""
        target = self.settings.access_log
        if target is None or self.access_log is not None:
            return
        lines = self.metrics.access_log_lines
        access = AccessLog(
            self.loop,
            open_target(target),
            sample=self.settings.access_log_sample,
            rand=self.rand.random,
            own_identity=lambda: self.tls.own_id,
            written=lines.labels("written"),
            dropped=lines.labels("dropped"),
        )
        self.access_log = self.inbound.access_log = self.outbound.access_log = access

    async def start(self) -> BoundAddresses:
        """Open the access log, if any, and bind both listeners; returns the addresses bound.

        Raises:
            AccessLogError: the access log cannot be opened (nothing is bound).
            OSError: a listener cannot bind (the message names which and where).
        """
        self._open_access_log()
        addresses = []
        for listener, address in (
            (self.inbound, self.settings.inbound),
            (self.outbound, self.settings.outbound),
        ):
            host, port = split_address(address)
            try:
                if listener.acceptor is not None:
                    sock = await listener.acceptor.bind(host, port, self.settings.backlog)
                    listener.acceptor.set_mode(self.tls.mode)
                else:
                    server = await self.loop.create_server(
                        listener.protocol,
                        host,
                        port,
                        backlog=self.settings.backlog,
                        reuse_address=True,
                    )
                    listener.server = server
                    sock = server.sockets[0].getsockname()
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"cannot bind the {listener.direction} listener on {address}: {exc.strerror}",
                ) from None
            addresses.append(f"[{sock[0]}]:{sock[1]}" if ":" in sock[0] else f"{sock[0]}:{sock[1]}")
        return BoundAddresses(inbound=addresses[0], outbound=addresses[1])

    def apply(self, snapshot: Snapshot) -> None:
        """Compile `snapshot` and swap it in; on any problem raise SnapshotError, keep the old."""
        try:
            routes = RouteTable.compile(
                snapshot,
                self.settings.default_host,
                counters=resilience_counters(self.metrics),
                clock=self.loop.time,
                previous=self.tables.routes,
            )
        except RouteCompileError as exc:
            raise SnapshotError(exc.reason) from None
        plans: dict[int, RulePlan] = {}
        retried: set[str] = set()  # clusters some rule retries on: only they need the budget
        for vh in snapshot.virtual_hosts:
            for rule in vh.rules:
                try:
                    plan = plans[id(rule)] = RulePlan(rule)
                except ValueError as exc:
                    raise SnapshotError(
                        f"virtual host {vh.name!r}, rule {rule.name!r}: retry policy: {exc}"
                    ) from None
                if plan.retry_on is not None and plan.attempts > 0:
                    retried.update(b.cluster for b in rule.backends)
        specs: dict[str, snap.Cluster] = {}
        for spec in snapshot.clusters:
            if spec.name in specs:
                raise SnapshotError(f"cluster {spec.name!r} appears twice")
            specs[spec.name] = spec
            try:
                ClusterRuntime.check(spec, self.loop)
            except ValueError as exc:
                raise SnapshotError(f"cluster {spec.name!r}: {exc}") from None
        app_spec = self._app_cluster(snapshot)
        if app_spec is not None:
            try:
                ClusterRuntime.check(app_spec, self.loop)
            except ValueError as exc:
                raise SnapshotError(f"inbound listener: {exc}") from None
        tls_update = self._check_tls(snapshot)
        try:
            tracing = ProxyTracer.prepare(snapshot)
        except ValueError as exc:
            raise SnapshotError(f"telemetry.tracing: {exc}") from None
        authorizer = None
        if snapshot.authz is not None and snapshot.authz.policies:
            try:
                authorizer = Authorizer(snapshot.authz, self.metrics, self.loop.time)
            except AuthzCompileError as exc:
                raise SnapshotError(f"authz: {exc}") from None
        rate_limits = None
        if snapshot.rate_limits is not None:
            try:
                rate_limits = ratelimit.compile_tables(
                    snapshot.rate_limits,
                    self.tables.rate_limits,
                    self.loop.time,
                    self.rate_limit_metrics,
                    self._redis_client,
                )
            except ratelimit.RateLimitCompileError as exc:
                raise SnapshotError(exc.reason) from None
        # Everything is checked: build and swap. Runtimes of persisting clusters are updated in
        # place, so their pools and endpoint state carry over. Should the build fail after all
        # (a check missed something), the runtimes it started are closed (their health checks
        # and timers would run on, unreachable) and updated ones get their old spec back, before
        # anything else (TLS bundle, mode) has changed.
        old = self.tables
        tls = self.tls
        clusters: dict[str, ClusterRuntime] = {}
        built: list[ClusterRuntime] = []
        updated: list[tuple[ClusterRuntime, snap.Cluster, str | None]] = []
        building = "inbound listener"
        retired_app = app = old.app
        try:
            for name, spec in specs.items():
                building = f"cluster {name!r}"
                runtime = old.clusters.get(name)
                if runtime is None:
                    runtime = ClusterRuntime(
                        self.loop,
                        spec,
                        self.metrics,
                        "outbound",
                        self.settings.max_header_bytes,
                        zone=snapshot.proxy.zone,
                    )
                    built.append(runtime)
                else:
                    updated.append((runtime, runtime.spec, runtime.zone))
                    runtime.zone = snapshot.proxy.zone
                    runtime.update(spec)
                clusters[name] = runtime
            building = "inbound listener"
            if app_spec is None:
                app = None
            elif app is None or app.name != app_spec.name:
                app = ClusterRuntime(
                    self.loop, app_spec, self.metrics, "inbound", self.settings.max_header_bytes
                )
                built.append(app)
            else:
                retired_app = None
                updated.append((app, app.spec, app.zone))
                app.update(app_spec)
        except Exception as exc:
            if rate_limits is not None:
                rate_limits.retire(old.rate_limits)  # only what the old tables do not share
            for runtime in built:
                runtime.close()
            for runtime, spec, zone in updated:
                runtime.zone = zone
                with contextlib.suppress(Exception):
                    runtime.update(spec)
            raise SnapshotError(f"{building}: cannot be applied: {exc}") from exc
        if tls_update is not None:
            tls.install_bundle(tls_update)
        tls.mode = snapshot.tls.mode if snapshot.tls is not None else None
        if self.inbound.acceptor is not None:
            self.inbound.acceptor.set_mode(tls.mode)
        for name, runtime in clusters.items():
            spec = specs[name]
            runtime.count_for_budget = name in retried
            if spec.tls is None:
                runtime.tls = None
            else:
                runtime.tls = OutboundTls(tls, name, spec.tls.identities)
        if retired_app is not None and retired_app is not app:
            retired_app.close()
        routes.bind(clusters)  # mirrors and backend fallbacks reach their cluster runtimes
        self.tables = Tables(snapshot, routes, clusters, plans, app, authorizer, rate_limits)
        self.golden_names.apply(snapshot)
        self.tracing.install(tracing)
        if old.rate_limits is not None:
            old.rate_limits.retire(rate_limits)
        for name, runtime in old.clusters.items():
            if name not in clusters:
                runtime.close()

    def _redis_client(self, server: snap.RedisServer) -> ratelimit.RedisHandle:
        # Imported here: only a proxy with Global rate limits needs the Redis client.
        from gossamer.proxy.ratelimit_redis import RedisClient

        return RedisClient(self.loop, server, self.rate_limit_metrics)

    def _check_tls(self, snapshot: Snapshot) -> PreparedBundle | None:
        """Validate the Snapshot's mTLS settings; the new bundle and contexts when it changed.

        Raises:
            SnapshotError: a bundle that cannot be parsed or used, or a cluster asking for TLS
                without one.
        """
        mesh = snapshot.tls
        for spec in snapshot.clusters:
            if spec.tls is None:
                continue
            if mesh is None:
                raise SnapshotError(
                    f"cluster {spec.name!r}: tls is set but the Snapshot has no mesh tls "
                    "(no trust bundle to verify its servers with)"
                )
            if not spec.tls.identities:
                raise SnapshotError(
                    f"cluster {spec.name!r}: tls.identities is empty: no server could be accepted"
                )
        if mesh is None:
            return None
        needs_roots = mesh.mode != "DISABLE" or any(c.tls is not None for c in snapshot.clusters)
        if needs_roots and not mesh.trust_bundle.strip():
            raise SnapshotError(
                f"tls: mode {mesh.mode} (or a cluster with tls) needs a trust bundle, and "
                "trustBundle is empty"
            )
        if mesh.trust_bundle == self.tls.bundle_pem:
            return None
        # Here, not at the top: `cryptography` costs ~10 MiB of RSS, which a sidecar without
        # mTLS never pays.
        from gossamer.security.bundle import BundleError

        try:
            prepared = self.tls.prepare_bundle(mesh.trust_bundle)
        except BundleError as exc:
            raise SnapshotError(f"tls: trustBundle: {exc}") from None
        except TlsConfigError as exc:
            raise SnapshotError(f"tls: cannot build TLS contexts with this bundle: {exc}") from None
        return prepared

    def set_svid(self, files: SvidFiles | None) -> None:
        """Use these SVID files (written by `security.tls.write_svid`) from now on.

        Called at start once an SVID is issued and after each renewal (the same paths, new
        content): fresh server and client contexts are built at once; new connections use them,
        open ones keep theirs. None forgets the SVID (mTLS connections then fail, never fall back).

        Raises:
            TlsConfigError: the files cannot be loaded or are not an SVID; the old ones stay.
        """
        self.tls.set_svid(files)
        self.golden_names.changed()  # this proxy's identity is in the golden metrics' labels

    def tls_status(self) -> dict[str, object]:
        """mTLS state for the admin /config page: mode, SVID, bundle fingerprints (no key)."""
        return self.tls.status()

    @staticmethod
    def _app_cluster(snapshot: Snapshot) -> snap.Cluster | None:
        inbound = snapshot.listeners.inbound
        if inbound is None:
            return None
        if inbound.protocol != "http":
            raise SnapshotError(f"inbound listener: protocol {inbound.protocol!r} is not supported")
        host = f"[{inbound.app_host}]" if ":" in inbound.app_host else inbound.app_host
        return snap.Cluster(
            name=f"inbound|{inbound.app_port}",
            service=snapshot.proxy.service,
            namespace=snapshot.proxy.namespace,
            endpoints=[snap.Endpoint(address=f"{host}:{inbound.app_port}")],
        )

    def open_connections(self) -> int:
        return len(self.inbound.connections) + len(self.outbound.connections)

    async def drain(self, timeout: float) -> None:  # noqa: ASYNC109 (the documented interface)
        """Stop accepting, let requests in flight finish (answered with `connection: close`),
        close idle connections, and after `timeout` seconds close whatever is left."""
        self.draining = True
        self.drained = self.loop.create_future()
        for listener in (self.inbound, self.outbound):
            if listener.server is not None:
                listener.server.close()
            if listener.acceptor is not None:
                listener.acceptor.close()
            for conn in list(listener.connections):
                conn.close_if_idle()
        if self.open_connections() and not self.drained.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.drained), timeout)
            except TimeoutError:
                for listener in (self.inbound, self.outbound):
                    for conn in list(listener.connections):
                        conn.drain_expired(timeout)
                # Their connection_lost (which writes their access-log lines) comes a few loop
                # turns later, later still for TLS; a 503 that cannot be written is cut.
                try:
                    await asyncio.wait_for(asyncio.shield(self.drained), DRAIN_GRACE)
                except TimeoutError:
                    for listener in (self.inbound, self.outbound):
                        for conn in list(listener.connections):
                            if conn.transport is not None:
                                conn.transport.abort()
        for runtime in self.tables.clusters.values():
            runtime.close()
        self.deadlines.close()
        if self.tables.rate_limits is not None:
            self.tables.rate_limits.close()
        if self.tables.app is not None:
            self.tables.app.close()
        for listener in (self.inbound, self.outbound):
            if listener.server is not None:
                await listener.server.wait_closed()
            if listener.acceptor is not None:
                await listener.acceptor.wait_closed()
        if self.access_log is not None:
            # Connections aborted above log their cut-off requests in connection_lost, which
            # the loop calls soon after the abort: let it run, then write and close.
            await asyncio.sleep(0)
            await self.access_log.close()
        await asyncio.sleep(0)  # spans of the connections aborted above end in connection_lost
        await self.tracing.close()


def split_address(address: str) -> tuple[str, int]:
    """Parse "host:port" ("[::1]:port" for IPv6); ValueError names the address."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listener address {address!r} is not host:port")
    return host.strip("[]"), int(port)
