"""The `gossamer proxy` process: binds the data plane and admin listener, runs the agent, drains."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from gossamer import snapshot as snapshot_mod
from gossamer.files import write_atomically
from gossamer.proxy.accesslog import AccessLogError
from gossamer.proxy.admin import AdminServer
from gossamer.proxy.agent import Agent, AgentMetrics, Registration, SnapshotHolder
from gossamer.proxy.cache import CacheError, SnapshotCache
from gossamer.proxy.dataplane import BoundAddresses, DataPlane, ProxySettings
from gossamer.proxy.readiness import ReadinessProbe
from gossamer.proxy.tap import TapHub
from gossamer.snapshot import Snapshot
from gossamer.tasks import cancel_all
from gossamer.telemetry.metrics import Registry

if TYPE_CHECKING:
    from gossamer.proxy.identity import Identity
    from gossamer.security.tls import SvidFiles

log = logging.getLogger("gossamer.proxy")


class StartupError(Exception):
    """The proxy cannot start; the message is one line for the operator."""


@dataclass
class ProxyOptions:
    """The `gossamer proxy` flags, parsed (see docs/internals.md)."""

    service: str
    proxy_id: str
    app_port: int | None = None  # None: no local app (a publish front door)
    namespace: str = "default"
    subset: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    zone: str | None = None
    control_plane: str | None = None
    snapshot_file: Path | None = None
    inbound: str = "127.0.0.1:0"
    outbound: str = "127.0.0.1:0"
    admin: str = "127.0.0.1:0"
    readiness_path: str | None = None
    state_dir: Path | None = None
    ready_file: Path | None = None
    max_header_bytes: int = 65536
    header_timeout: float = 10.0
    default_host: str | None = None
    drain_timeout: float = 5.0
    app_host: str = "127.0.0.1"
    cache_deadline: float = 2.0  # how long to wait for the control plane before using the cache
    poll_wait: float = 30.0
    probe_interval: float = 1.0
    ca_bundle: Path | None = None  # the roots trusted for the first contact (https only)
    service_account: str | None = None  # None: the service's name
    # A static SVID (with a static Snapshot): files that something else issues and renews.
    svid_cert: Path | None = None
    svid_key: Path | None = None
    access_log: str | None = None  # a file, or "-" for stdout; None: off
    access_log_sample: float = 1.0
    # From $GOSSAMER_BOOTSTRAP_TOKEN only (never a flag); single use; never logged or shown.
    bootstrap_token: str | None = field(default=None, repr=False)


class DataPlaneLike(Protocol):
    """The part of `gossamer.proxy.dataplane.DataPlane` this process drives."""

    async def start(self) -> BoundAddresses: ...

    def apply(self, snapshot: Snapshot) -> None: ...

    async def drain(self, timeout: float) -> None: ...  # noqa: ASYNC109 (the data plane's API)

    def set_svid(self, files: SvidFiles | None) -> None: ...


DataPlaneFactory = Callable[[asyncio.AbstractEventLoop, ProxyOptions, Registry], DataPlaneLike]


def real_dataplane(
    loop: asyncio.AbstractEventLoop, options: ProxyOptions, registry: Registry
) -> DataPlaneLike:
    settings = ProxySettings(
        inbound=options.inbound,
        outbound=options.outbound,
        max_header_bytes=options.max_header_bytes,
        header_timeout=options.header_timeout,
        default_host=options.default_host,
        drain_timeout=options.drain_timeout,
        access_log=options.access_log,
        access_log_sample=options.access_log_sample,
    )
    dataplane: DataPlaneLike = DataPlane(loop, settings, registry)
    return dataplane


def split_address(text: str, what: str) -> tuple[str, int]:
    """Parse "host:port" (IPv6 in brackets); ValueError names the flag."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{what}: {text!r} is not host:port")
    return host.strip("[]"), int(port)


def _addr_text(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ProxyProcess:
    """One sidecar: data plane, admin listener, readiness probe, and the agent or a static file."""

    def __init__(
        self, options: ProxyOptions, make_dataplane: DataPlaneFactory = real_dataplane
    ) -> None:
        self.options = options
        self.make_dataplane = make_dataplane
        self.registry = Registry()
        self.metrics = AgentMetrics(self.registry)
        self.cache = SnapshotCache(options.state_dir) if options.state_dir is not None else None
        self.holder: SnapshotHolder | None = None
        self.agent: Agent | None = None
        self.probe: ReadinessProbe | None = None
        self.admin = AdminServer(self, self.registry)
        self.addresses: dict[str, str] = {}
        self.draining = False
        self._quit = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_ready: bool | None = None
        self._dataplane: DataPlaneLike | None = None  # set once it has started
        self._admin_started = False
        self._stopped = False
        self.identity: Identity | None = None
        self.exit_code = 0
        self._temp_state: Path | None = None  # a private state dir made for the SVID, removed

    # -- ProxyView (admin) --

    def readiness(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining"
        if self.identity is not None and self.identity.current is None:
            why = self.identity.last_error or f"waiting for {self.options.control_plane}"
            return False, f"no SVID yet ({why})"
        if self.holder is None or self.holder.snapshot is None:
            where = self.options.control_plane or "the snapshot file"
            return False, f"no snapshot yet (waiting for {where})"
        if self.probe is not None and not self.probe.ready:
            return False, self.probe.reason
        return True, ""

    def config_document(self) -> dict[str, object]:
        holder = self.holder
        snap = holder.snapshot if holder is not None else None
        doc: dict[str, object] = {
            "proxyId": self.options.proxy_id,
            "version": snap.version if snap is not None else None,
            "source": holder.source if holder is not None else "",
            "status": holder.status if holder is not None else "NONE",
            "lastVersion": holder.last_version if holder is not None else "",
            "error": holder.last_error if holder is not None else "",
            "controlPlane": None,
            "snapshot": snapshot_mod.to_builtins(snap) if snap is not None else None,
        }
        if self.agent is not None:
            doc["controlPlane"] = {"url": self.agent.url, "connected": self.agent.connected}
        if self.identity is not None:
            # Facts only: the key never leaves the state dir.
            doc["svid"] = self.identity.report()
        tls_status = getattr(self._dataplane, "tls_status", None)
        if callable(tls_status):
            doc["tls"] = tls_status()
        return doc

    def request_quit(self) -> None:
        self._quit.set()

    # -- lifecycle --

    def _readiness_changed(self, _app_ready: bool | None = None) -> None:
        ready, why = self.readiness()
        self.metrics.ready.set(1 if ready else 0)
        if ready != self._last_ready:
            self._last_ready = ready
            log.info("proxy %s", "ready" if ready else f"not ready: {why}")
            if self.agent is not None:
                self.agent.readiness_changed()

    async def start(self) -> dict[str, str]:
        """Bind everything, start the agent or load the file, write the ready file."""
        opts = self.options
        loop = asyncio.get_running_loop()
        admin_host, admin_port = split_address(opts.admin, "--admin")
        dataplane = self.make_dataplane(loop, opts, self.registry)
        try:
            bound = await dataplane.start()
            self._dataplane = dataplane
            taps = getattr(dataplane, "taps", None)  # fakes in tests have none
            if isinstance(taps, TapHub):
                self.admin.taps = taps
            bound_admin = await self.admin.start(admin_host, admin_port)
            self._admin_started = True
        except AccessLogError as exc:
            raise StartupError(str(exc)) from None
        except OSError as exc:
            raise StartupError(f"cannot bind listeners: {exc.strerror or exc}") from None
        self.addresses = {
            "inbound": bound.inbound,
            "outbound": bound.outbound,
            "admin": _addr_text(bound_admin),
        }
        self.holder = SnapshotHolder(dataplane.apply, self.metrics, self.cache)
        self.holder.listeners.append(self._readiness_changed)

        if opts.svid_cert is not None and opts.svid_key is not None:
            self._load_static_svid(dataplane, opts.svid_cert, opts.svid_key)
        if opts.snapshot_file is not None:
            self._install_file(opts.snapshot_file)

        if opts.app_port is not None:
            self.probe = ReadinessProbe(
                opts.app_host,
                opts.app_port,
                opts.readiness_path,
                interval=opts.probe_interval,
                on_change=self._readiness_changed,
            )
            self._tasks.append(asyncio.create_task(self.probe.run(), name="readiness-probe"))

        if opts.control_plane is not None:
            if opts.control_plane.startswith("https:"):
                self.identity = self._make_identity(opts.control_plane, dataplane)
            registration = Registration(
                proxy_id=opts.proxy_id,
                service=opts.service,
                namespace=opts.namespace,
                subset=opts.subset,
                labels=dict(opts.labels),
                zone=opts.zone,
                inbound=self.addresses["inbound"],
                outbound=self.addresses["outbound"],
                admin=self.addresses["admin"],
                app_port=opts.app_port or 0,
            )
            self.agent = Agent(
                opts.control_plane,
                registration,
                self.holder,
                is_ready=lambda: self.readiness()[0],
                poll_wait=opts.poll_wait,
                tls=self.identity.tls if self.identity is not None else None,
                svid_report=self.identity.report if self.identity is not None else None,
                on_snapshot=self.identity.on_snapshot if self.identity is not None else None,
            )
            if self.identity is None:
                self.agent.start()
            else:
                self._tasks.append(asyncio.create_task(self._run_identity(), name="identity"))
            self._tasks.append(asyncio.create_task(self._cache_fallback(), name="cache-fallback"))

        if opts.ready_file is not None:
            doc = {"proxyId": opts.proxy_id, **self.addresses, "pid": os.getpid()}
            try:
                write_atomically(opts.ready_file, msgspec.json.encode(doc))
            except OSError as exc:
                raise StartupError(
                    f"--ready-file {opts.ready_file}: cannot write: {exc.strerror or exc}"
                ) from None
        log.info(
            "proxy %s listening: inbound %s, outbound %s, admin %s",
            opts.proxy_id,
            self.addresses["inbound"],
            self.addresses["outbound"],
            self.addresses["admin"],
        )
        self._readiness_changed()
        return self.addresses

    def _make_identity(self, url: str, dataplane: DataPlaneLike) -> Identity:
        from gossamer.proxy.agent import parse_base_url
        from gossamer.proxy.identity import Identity, IdentityError, IdentityMetrics, read_bundle

        opts = self.options
        if opts.ca_bundle is None:
            raise StartupError(
                f"--control-plane {url} needs --ca-bundle FILE: the mesh's roots, to verify "
                "the control plane on first contact"
            )
        state_dir = opts.state_dir
        if state_dir is None:
            # The SVID's key must be a file for `ssl`; mkdtemp makes the directory 0700.
            state_dir = self._temp_state = Path(tempfile.mkdtemp(prefix="gossamer-proxy-"))
        else:
            try:
                state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise StartupError(
                    f"--state-dir {state_dir}: cannot create: {exc.strerror or exc}"
                ) from None
        host, port, prefix = parse_base_url(url)
        try:
            return Identity(
                url,
                host,
                port,
                read_bundle(opts.ca_bundle),
                state_dir,
                opts.namespace,
                opts.service_account or opts.service,
                token=opts.bootstrap_token,
                on_svid=dataplane.set_svid,
                metrics=IdentityMetrics(self.registry),
                prefix=prefix,
                ca_bundle_path=opts.ca_bundle,
            )
        except IdentityError as exc:
            raise StartupError(str(exc)) from None

    async def _run_identity(self) -> None:
        """Get the SVID, then start the agent (every call is mTLS), then keep the SVID fresh."""
        from gossamer.proxy.identity import IdentityError

        identity, agent = self.identity, self.agent
        assert identity is not None
        assert agent is not None
        try:
            await identity.acquire()
            self._readiness_changed()
            agent.start()
            await identity.run()
        except IdentityError as exc:
            # Nothing this run can change (a spent or unknown token, or an SVID the mesh no longer
            # trusts after a rotation it missed): exit non-zero so that a supervisor starts it
            # again, with a new token.
            log.error("%s", exc)
            self.exit_code = 1
            self.request_quit()

    @staticmethod
    def _load_static_svid(dataplane: DataPlaneLike, cert: Path, key: Path) -> None:
        from gossamer.security.tls import SvidFiles, TlsConfigError

        try:
            dataplane.set_svid(SvidFiles(cert, key))
        except TlsConfigError as exc:
            raise StartupError(f"--svid-cert/--svid-key: {exc}") from None

    def _install_file(self, path: Path) -> None:
        assert self.holder is not None
        try:
            snap = snapshot_mod.decode(path.read_bytes())
        except OSError as exc:
            raise StartupError(f"--snapshot {path}: cannot read: {exc.strerror or exc}") from None
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise StartupError(f"--snapshot {path}: not a valid snapshot: {exc}") from None
        error = self.holder.install(snap, "file")
        if error is not None:
            raise StartupError(f"--snapshot {path}: cannot apply: {error}")

    async def _cache_fallback(self) -> None:
        """Static stability: no snapshot from the control plane in time, so run the cached one."""
        assert self.holder is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.options.cache_deadline):
                await self.holder.wait_installed()
                return
        if self.holder.snapshot is not None or self.cache is None:
            if self.cache is None:
                log.info("no snapshot from the control plane yet and no --state-dir cache; waiting")
            return
        try:
            cached = self.cache.load()
        except CacheError as exc:
            log.warning("ignoring snapshot cache: %s", exc)
            return
        if cached is None:
            log.info("no snapshot from the control plane yet and no cached one; waiting")
            return
        log.info("control plane not answering; starting from cached snapshot %s", cached.version)
        if self.holder.snapshot is None:
            self.holder.install(cached, "cache")

    async def wait_quit(self) -> None:
        await self._quit.wait()

    async def stop(self) -> None:
        """Drain: report not ready, deregister, let the data plane finish, close the rest."""
        if self._stopped:
            return
        self._stopped = True
        self.draining = True
        self._readiness_changed()
        log.info("draining (up to %gs)", self.options.drain_timeout)
        await cancel_all(self._tasks)
        self._tasks = []
        jobs = []
        if self._dataplane is not None:
            jobs.append(self._dataplane.drain(self.options.drain_timeout))
        if self.agent is not None:
            jobs.append(self.agent.stop(deregister=True))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                log.warning("while draining: %s: %s", type(result).__name__, result)
        if self._admin_started:
            await self.admin.close()
        if self._temp_state is not None:
            shutil.rmtree(self._temp_state, ignore_errors=True)
        log.info("stopped")


async def serve(options: ProxyOptions, make_dataplane: DataPlaneFactory = real_dataplane) -> int:
    """Run the proxy until SIGTERM/SIGINT or POST /quitquitquit; returns the exit status."""
    proxy = ProxyProcess(options, make_dataplane)
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        log.info("%s received; draining", sig.name)
        proxy.request_quit()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await proxy.start()
        await proxy.wait_quit()
    except StartupError as exc:
        log.error("%s", exc)
        await proxy.stop()
        return 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    # A second signal during the drain ends it at once.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _cancel_current, asyncio.current_task())
    try:
        await proxy.stop()
    except asyncio.CancelledError:
        log.info("second signal: stopped without finishing the drain")
    return proxy.exit_code


def _cancel_current(task: asyncio.Task[Any] | None) -> None:
    if task is not None:
        task.cancel()


def setup_logging(proxy_id: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s.%(msecs)03d proxy[{proxy_id}] %(levelname)s %(message)s",
            datefmt="%H:%M:%S",
        )
    )
    root = logging.getLogger("gossamer")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def run(options: ProxyOptions, make_dataplane: DataPlaneFactory = real_dataplane) -> int:
    """Entry point for `gossamer proxy`: uvloop, serve, exit status."""
    import uvloop

    setup_logging(options.proxy_id)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(options, make_dataplane))
