"""The `gossamer control-plane` process: the parts wired together, served by uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from gossamer.control.ca_service import DEFAULT_TRUST_DOMAIN, MeshCa
from gossamer.control.distribute import Distributor, TranslateFn
from gossamer.control.metrics import ControlPlaneMetrics
from gossamer.control.operators import Tokens
from gossamer.control.registry import DEFAULT_MAX_PER_IDENTITY, Registry
from gossamer.control.resources import ResourceCache
from gossamer.control.store.base import Store
from gossamer.control.store.sqlite import SqliteStore
from gossamer.control.telemetry_window import DEFAULT_INTERVAL, DEFAULT_RETENTION, TelemetryWindow
from gossamer.control.tls_peer import PeerChecker, protocol_class
from gossamer.files import write_atomically
from gossamer.security.ca import DEFAULT_SVID_TTL
from gossamer.tasks import cancel_all

log = logging.getLogger("gossamer.control")

STORE_FILE = "store.sqlite"
# Used and expired bootstrap tokens are dropped from the Store this often.
TOKEN_PRUNE_INTERVAL = 300.0


class ControlPlane:
    """Store, resource cache, registry and distributor, and the tasks that keep them current."""

    def __init__(
        self,
        store: Store,
        *,
        heartbeat_ttl: float = 3.0,
        clock: Callable[[], float],
        translate: TranslateFn | None = None,
        debounce: float = 0.015,
        ca: MeshCa,
        tokens: Tokens,
        admin_token_file: Path,
        token_prune_interval: float = TOKEN_PRUNE_INTERVAL,
        registration_expiry: float | None = None,
        max_registrations_per_identity: int = DEFAULT_MAX_PER_IDENTITY,
        telemetry_interval: float = DEFAULT_INTERVAL,
        telemetry_retention: float = DEFAULT_RETENTION,
    ) -> None:
        """`telemetry_interval`, `telemetry_retention`: how often the proxies' /metrics are
        scraped and how long the rolling window keeps (control/telemetry_window.py).
        `registration_expiry`: seconds after its last heartbeat that a proxy's registration
        is removed (default `max(20 x heartbeat_ttl, 60)`); `max_registrations_per_identity`:
        how many proxy ids one SPIFFE identity may register."""
        self.store = store
        self.token_prune_interval = token_prune_interval
        self.ca = ca
        self.tokens = tokens
        self.admin_token_file = admin_token_file
        self.registry = Registry(
            store,
            ttl=heartbeat_ttl,
            clock=clock,
            expire_after=registration_expiry,
            max_per_identity=max_registrations_per_identity,
        )
        self.cache = ResourceCache(store)
        self.distributor = Distributor(
            self.cache.sorted_resources,
            self.registry,
            clock=clock,
            translate=translate,
            debounce=debounce,
            trust=ca.trust,
        )
        self.cache.subscribe(self.distributor.mark_dirty)
        self.registry.subscribe(self.distributor.mark_dirty)
        self.apply_lock = asyncio.Lock()
        self.metrics = ControlPlaneMetrics()
        self.metrics.watch(self.distributor)
        self.telemetry = TelemetryWindow(
            self.registry.endpoints, interval=telemetry_interval, retention=telemetry_retention
        )
        # Three heartbeats per TTL: one lost heartbeat does not mark a replica unhealthy.
        self.heartbeat_interval = heartbeat_ttl / 3
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(
        cls,
        state_dir: str | Path,
        *,
        heartbeat_ttl: float = 3.0,
        clock: Callable[[], float],
        translate: TranslateFn | None = None,
        debounce: float = 0.015,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        svid_ttl: dt.timedelta | None = None,
        token_prune_interval: float = TOKEN_PRUNE_INTERVAL,
        registration_expiry: float | None = None,
        max_registrations_per_identity: int = DEFAULT_MAX_PER_IDENTITY,
        telemetry_interval: float = DEFAULT_INTERVAL,
        telemetry_retention: float = DEFAULT_RETENTION,
    ) -> ControlPlane:
        """Open the SQLite store in `state_dir` (created if needed) and build the parts on it.

        On first start this also creates the mesh root CA for `trust_domain` (key 0600 in
        `state_dir`) and the first admin token (0600 in `state_dir/admin.token`); later starts
        load them (and ignore `trust_domain`). `svid_ttl`: the lifetime of issued SVIDs.
        """
        state = Path(state_dir)
        store = await SqliteStore.open(state / STORE_FILE)
        try:
            ca = await MeshCa.open(
                store,
                state,
                trust_domain,
                DEFAULT_SVID_TTL if svid_ttl is None else svid_ttl,
            )
            tokens = await Tokens.open(store, clock)
            admin_token_file = await tokens.ensure_admin(state)
        except BaseException:
            await store.close()
            raise
        return cls(
            store,
            heartbeat_ttl=heartbeat_ttl,
            clock=clock,
            translate=translate,
            debounce=debounce,
            ca=ca,
            tokens=tokens,
            admin_token_file=admin_token_file,
            token_prune_interval=token_prune_interval,
            registration_expiry=registration_expiry,
            max_registrations_per_identity=max_registrations_per_identity,
            telemetry_interval=telemetry_interval,
            telemetry_retention=telemetry_retention,
        )

    async def start(self) -> None:
        """Load resources and registrations, build every snapshot, then follow changes."""
        await self.cache.load()
        await self.registry.load()
        self.distributor.recompute()
        self._tasks = [
            asyncio.create_task(self.cache.follow(), name="resource-watch"),
            asyncio.create_task(self.registry.run(), name="registry-ttl"),
            asyncio.create_task(self.distributor.run(), name="distribute"),
            asyncio.create_task(self.ca.run(self.registry, self.distributor), name="ca"),
            asyncio.create_task(self._prune_tokens(), name="token-prune"),
            asyncio.create_task(self.telemetry.run(), name="telemetry-window"),
        ]

    async def prune_tokens(self) -> int:
        """Drop used and expired bootstrap tokens (and expired operator tokens) from the Store."""
        gone = self.tokens.tokens.prune()
        if gone:
            await self.tokens.flush()
            log.info("pruned %d used or expired token%s", gone, "" if gone == 1 else "s")
        return gone

    async def _prune_tokens(self) -> None:
        while True:
            await asyncio.sleep(self.token_prune_interval)
            try:
                await self.prune_tokens()
            except Exception:
                log.exception("pruning tokens failed; trying again later")

    async def close(self) -> None:
        await cancel_all(self._tasks)
        self._tasks = []
        await self.store.close()


def write_ready_file(path: str | Path, data: dict[str, Any]) -> None:
    """Announce where the control plane serves, atomically (the runtime polls this file)."""
    write_atomically(Path(path), json.dumps(data).encode(), fsync=False)


def parse_listen(value: str) -> tuple[str, int]:
    """Parse "host:port" (port 0: any free port).

    Raises:
        ValueError: naming the value when it is not host:port.
    """
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"--listen must be host:port, such as 127.0.0.1:0, got {value!r}")
    return host, int(port)


class _Server(uvicorn.Server):
    """uvicorn's server that announces its bound address and exits 0 on SIGTERM/SIGINT."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[str, int], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.should_exit or not self.servers:
            return
        sock = self.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        self._on_started(host, port)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises the captured signal after shutdown, which would end the process
        # "killed by SIGTERM"; a requested stop is a clean exit here.
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGINT, signal.SIGTERM)
        for sig in sigs:
            loop.add_signal_handler(sig, self._stop, sig)
        try:
            yield
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)

    def _stop(self, sig: int) -> None:
        log.info("stopping on %s", signal.Signals(sig).name)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        self.should_exit = True


def _url(scheme: str, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def api_config(
    cp: ControlPlane,
    host: str,
    port: int,
    *,
    log_level: str = "warning",
    wall_clock: Callable[[], float] = time.time,
) -> uvicorn.Config:
    """The one HTTPS listener, loaded: operators (bearer tokens) and proxies (client SVIDs).

    The TLS context asks for a client certificate but does not require one (operators have
    none), verifies it against the mesh's roots (`attach_server_context` keeps that context
    current across root changes, so it is the very object uvicorn serves with), and every
    request's scope carries the verified SPIFFE ID (`control/tls_peer.py`).
    """
    from gossamer.control.api import create_app

    serving = cp.ca.issue_control_plane_cert([host])
    checker = PeerChecker(cp.ca)
    config = uvicorn.Config(
        create_app(cp),
        host=host,
        port=port,
        ssl_certfile=str(serving.cert_file),
        ssl_keyfile=str(serving.key_file),
        ssl_cert_reqs=ssl.CERT_OPTIONAL,
        http=protocol_class(checker, wall_clock),
        log_level=log_level,
        access_log=False,
        lifespan="off",
        loop="none",
        # Long polls are cut short at shutdown rather than held for their full wait.
        timeout_graceful_shutdown=1,
    )
    config.load()
    assert config.ssl is not None
    # TLS 1.3 only, like the sidecars: no TLS 1.2 cipher suite to negotiate down to.
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
    cp.ca.attach_server_context(config.ssl)
    return config


async def serve(
    listen: str,
    state_dir: str | Path,
    *,
    ready_file: str | Path | None = None,
    heartbeat_ttl: float = 3.0,
    log_level: str = "warning",
    trust_domain: str = DEFAULT_TRUST_DOMAIN,
    svid_ttl: dt.timedelta | None = None,
    registration_expiry: float | None = None,
    telemetry_interval: float = DEFAULT_INTERVAL,
    telemetry_retention: float = DEFAULT_RETENTION,
) -> None:
    """Run the control plane until SIGTERM/SIGINT, on one HTTPS listener (see `api_config`).

    `registration_expiry`: see `ControlPlane` (default `max(20 x heartbeat_ttl, 60)` seconds).
    `telemetry_interval` / `telemetry_retention`: the rolling window of the proxies' metrics.
    """
    host, port = parse_listen(listen)
    # The process edge: the registry and status report unix seconds, so the clock is the wall's.
    cp = await ControlPlane.open(
        state_dir,
        heartbeat_ttl=heartbeat_ttl,
        clock=time.time,
        trust_domain=trust_domain,
        svid_ttl=svid_ttl,
        registration_expiry=registration_expiry,
        telemetry_interval=telemetry_interval,
        telemetry_retention=telemetry_retention,
    )
    try:
        await cp.start()
        config = api_config(cp, host, port, log_level=log_level)

        def announce(bound_host: str, bound_port: int) -> None:
            api = _url("https", bound_host, bound_port)
            log.info(
                "control plane serving operators and proxies on %s (trust domain %s, state in %s)",
                api,
                cp.ca.trust_domain,
                state_dir,
            )
            if ready_file is not None:
                write_ready_file(
                    ready_file,
                    {
                        "api": api,
                        "caBundle": str(cp.ca.bundle_path),
                        "adminTokenFile": str(cp.admin_token_file),
                        "trustDomain": cp.ca.trust_domain,
                        "pid": os.getpid(),
                    },
                )

        await _Server(config, announce).serve()
    finally:
        await cp.close()
