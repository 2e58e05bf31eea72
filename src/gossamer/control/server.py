"""The `gossamer control-plane` process: the parts wired together, served by uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn

from gossamer.control.ca_service import MeshCa
from gossamer.control.distribute import Distributor, TranslateFn
from gossamer.control.operators import Tokens
from gossamer.control.registry import Registry
from gossamer.control.resources import ResourceCache
from gossamer.control.store.base import Store
from gossamer.control.store.sqlite import SqliteStore
from gossamer.files import write_atomically
from gossamer.tasks import cancel_all

log = logging.getLogger("gossamer.control")

STORE_FILE = "store.sqlite"


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
    ) -> None:
        self.store = store
        self.ca = ca
        self.tokens = tokens
        self.admin_token_file = admin_token_file
        self.registry = Registry(store, ttl=heartbeat_ttl, clock=clock)
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
    ) -> ControlPlane:
        """Open the SQLite store in `state_dir` (created if needed) and build the parts on it.

        On first start this also creates the mesh root CA (key 0600 in `state_dir`) and the
        first admin token (0600 in `state_dir/admin.token`); later starts load them.
        """
        state = Path(state_dir)
        store = await SqliteStore.open(state / STORE_FILE)
        try:
            ca = await MeshCa.open(store, state)
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
        ]

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
    """uvicorn's server that announces its bound address and exits 0 on SIGTERM/SIGINT.

    With several listeners in one process, only the first (`signals=True`) takes the signals;
    stopping it stops its `peers` too.
    """

    def __init__(
        self,
        config: uvicorn.Config,
        on_started: Callable[[str, int], None],
        *,
        signals: bool = True,
    ) -> None:
        super().__init__(config)
        self._on_started = on_started
        self._signals = signals
        self.peers: list[_Server] = []

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
        if not self._signals:
            yield
            return
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
        for server in (self, *self.peers):
            if server.should_exit and sig == signal.SIGINT:
                server.force_exit = True
            server.should_exit = True


def _url(scheme: str, host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


async def serve(
    listen: str,
    state_dir: str | Path,
    *,
    internal_listen: str = "127.0.0.1:0",
    ready_file: str | Path | None = None,
    heartbeat_ttl: float = 3.0,
    log_level: str = "warning",
) -> None:
    """Run the control plane until SIGTERM/SIGINT.

    Two listeners: `listen` serves the operator API over HTTPS (a certificate from the mesh CA,
    bearer tokens); `internal_listen` serves only the proxies' calls over plain HTTP, until the
    proxies authenticate with their SVIDs over mTLS.
    """
    from gossamer.control.api import create_app

    host, port = parse_listen(listen)
    internal_host, internal_port = parse_listen(internal_listen)
    # The process edge: the registry and status report unix seconds, so the clock is the wall's.
    cp = await ControlPlane.open(state_dir, heartbeat_ttl=heartbeat_ttl, clock=time.time)
    try:
        await cp.start()
        serving = cp.ca.issue_control_plane_cert([host])
        common: dict[str, Any] = {
            "log_level": log_level,
            "access_log": False,
            "lifespan": "off",
            "loop": "none",
            # Long polls are cut short at shutdown rather than held for their full wait.
            "timeout_graceful_shutdown": 1,
        }
        operator = uvicorn.Config(
            create_app(cp, listener="operator"),
            host=host,
            port=port,
            ssl_certfile=str(serving.cert_file),
            ssl_keyfile=str(serving.key_file),
            **common,
        )
        internal = uvicorn.Config(
            create_app(cp, listener="internal"), host=internal_host, port=internal_port, **common
        )
        bound: dict[str, str] = {}

        def started(key: str, scheme: str) -> Callable[[str, int], None]:
            def announce(bound_host: str, bound_port: int) -> None:
                bound[key] = _url(scheme, bound_host, bound_port)
                if len(bound) < 2:
                    return
                log.info(
                    "control plane serving the operator API on %s and the proxies on %s "
                    "(state in %s)",
                    bound["api"],
                    bound["internal"],
                    state_dir,
                )
                if ready_file is not None:
                    write_ready_file(
                        ready_file,
                        {
                            "api": bound["api"],
                            "internal": bound["internal"],
                            "caBundle": str(cp.ca.bundle_path),
                            "adminTokenFile": str(cp.admin_token_file),
                            "pid": os.getpid(),
                        },
                    )

            return announce

        main = _Server(operator, started("api", "https"))
        proxies = _Server(internal, started("internal", "http"), signals=False)
        main.peers = [proxies]
        proxies.peers = [main]
        await asyncio.gather(main.serve(), proxies.serve())
    finally:
        await cp.close()
