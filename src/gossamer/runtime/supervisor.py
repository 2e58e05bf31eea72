"""The supervisor behind `gossamer up`: starts the mesh in order, watches it, stops it in reverse.

Start: the control plane; the file's resources applied to it; per replica the sidecar, then the
workload; then the published front doors. Each step waits on a readiness signal (ready files, then
the sidecars' /ready, which includes the app's probe) with one overall deadline. Stop: front doors,
workloads, sidecars, control plane; each stage is asked to stop (proxies through /quitquitquit, the
rest by SIGTERM) and SIGKILLed at its deadline, and every process group is killed at the end so that
nothing of the mesh outlives it.

Once ready, a child that exits unexpectedly is restarted, like `restart: unless-stopped`, with
exponential backoff and on the same addresses (the control plane on its URL and store, a sidecar on
its three listeners and cached snapshot, a workload with the same PORT and env): the others know
those addresses and keep them. Nothing is restarted once stopping has begun.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossamer.runtime.logs import LogMux
from gossamer.runtime.plan import Plan, PublishPlan, ReplicaPlan
from gossamer.runtime.ports import PortReservation, address_free
from gossamer.runtime.process import Child, stop_all
from gossamer.runtime.readiness import (
    Aborted,
    NotReady,
    http_ok,
    http_post,
    ready_file,
    wait_for,
)
from gossamer.runtime.state import StateDir, write_json_atomic
from gossamer.security.spiffe import BOOTSTRAP_TOKEN_ENV

# The label of a `publish` front door (control/translate.py reads it; importing it from there
# would load pydantic and the config models into every `gossamer up`).
PUBLISH_LABEL = "gossamer.dev/publish"

# Every process of one run carries this in its environment, so a test (or an operator) can find
# all of them, grandchildren included.
RUN_ID_ENV = "GOSSAMER_RUN_ID"
_PROXY_ENV = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")

Applier = Callable[[str, list[dict[str, Any]]], None]
# (control plane URL, namespace, service account) -> a single-use bootstrap token for that
# identity (cli/up.py: POST /v1/tokens/bootstrap with the admin token).
Minter = Callable[[str, str, str], str]
# Given the control plane's URL, a check of (replica ids, proxy ids) -> converged (converge.py).
ConvergeProbe = Callable[[str], Callable[[Collection[str], Collection[str]], bool]]


class StartError(Exception):
    """The mesh could not be started; the message says which part and where its log is."""


# Not `-m gossamer.cli.main`: run as __main__, that module's CommandError would be a different class
# from the one the command modules import, and their errors would end in tracebacks.
GOSSAMER_MAIN = "import sys; from gossamer.cli.main import main; sys.exit(main())"


def default_gossamer_argv() -> list[str]:
    """How to run `gossamer SUBCOMMAND ...` with this very Python and package."""
    return [sys.executable, "-c", GOSSAMER_MAIN]


@dataclass
class RuntimeOptions:
    state: StateDir
    file: Path
    gossamer: list[str] = field(default_factory=default_gossamer_argv)
    start_timeout: float = 30.0
    stop_timeout: float = 5.0
    clock: Callable[[], float] = time.monotonic
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # Restart backoff: the first delay, doubling up to the cap; a child that ran `restart_reset`
    # seconds before it died starts again from the first delay.
    restart_delay: float = 0.2
    restart_max_delay: float = 10.0
    restart_reset: float = 30.0
    svid_ttl: str | None = None  # the control plane's --svid-ttl (None: its default, 24h)


@dataclass
class ReplicaState:
    plan: ReplicaPlan
    app_port: PortReservation
    sidecar: Child
    workload: Child | None = None
    addresses: dict[str, Any] = field(default_factory=dict)
    ready: bool = False


@dataclass
class PublisherState:
    plan: PublishPlan
    proxy: Child
    addresses: dict[str, Any] = field(default_factory=dict)
    ready: bool = False


def base_env(run_id: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Every child's environment: ours, minus proxy settings, with our Python first on PATH."""
    env = dict(os.environ if environ is None else environ)
    for key in _PROXY_ENV:
        env.pop(key, None)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bindir, env["PATH"]]) if env.get("PATH") else bindir
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[RUN_ID_ENV] = run_id
    return env


def workload_env(
    base: dict[str, str],
    replica: ReplicaPlan,
    app_port: int,
    sidecar: dict[str, Any],
    control_plane: str,
) -> dict[str, str]:
    """The workload's environment: PORT, the sidecar as HTTP proxy, GOSSAMER_*, the file's env."""
    proxy = f"http://{sidecar['outbound']}"
    env = dict(base)
    env.update(
        {
            "PORT": str(app_port),
            "HTTP_PROXY": proxy,
            "http_proxy": proxy,
            "NO_PROXY": "",
            "no_proxy": "",
            "GOSSAMER_SERVICE": replica.service,
            "GOSSAMER_NAMESPACE": replica.namespace,
            "GOSSAMER_SUBSET": replica.subset or "",
            "GOSSAMER_REPLICA": str(replica.index),
            "GOSSAMER_PROXY_ID": replica.name,
            "GOSSAMER_OUTBOUND": str(sidecar["outbound"]),
            "GOSSAMER_ADMIN": str(sidecar["admin"]),
            "GOSSAMER_CONTROL_PLANE": control_plane,
        }
    )
    env.update(replica.env)
    return env


def sidecar_argv(
    gossamer: list[str],
    replica: ReplicaPlan,
    app_port: int,
    control_plane: str,
    ready: Path,
    state_dir: Path,
    ca_bundle: str | None = None,
    access_log: Path | None = None,
) -> list[str]:
    argv = [
        *gossamer,
        "proxy",
        "--service",
        replica.service,
        "--namespace",
        replica.namespace,
        "--proxy-id",
        replica.name,
        "--app-port",
        str(app_port),
        "--control-plane",
        control_plane,
        "--ready-file",
        str(ready),
        "--state-dir",
        str(state_dir),
    ]
    if replica.subset:
        argv += ["--subset", replica.subset]
    if replica.zone:
        argv += ["--zone", replica.zone]
    for key, value in sorted(replica.labels.items()):
        argv += ["--label", f"{key}={value}"]
    if replica.readiness_path:
        argv += ["--readiness-path", replica.readiness_path]
    return argv + _proxy_options(ca_bundle, replica.service_account, access_log)


def _proxy_options(
    ca_bundle: str | None, service_account: str | None, access_log: Path | None
) -> list[str]:
    """The optional flags a sidecar and a front door share."""
    options: list[str] = []
    if ca_bundle:
        options += ["--ca-bundle", ca_bundle]
    if service_account:
        options += ["--service-account", service_account]
    if access_log is not None:
        options += ["--access-log", str(access_log)]
    return options


def access_log_path(logs: Path, proxy_id: str) -> Path:
    """Where a sidecar of the mesh writes its access log: beside the processes' own logs."""
    return logs / f"{proxy_id}.access.log"


def host_port(url: str) -> str:
    """The host:port of a URL such as https://127.0.0.1:4000/."""
    return url.partition("://")[2].rstrip("/") if "://" in url else url.rstrip("/")


def pin_flag(argv: list[str], flag: str, value: str) -> None:
    """Set `flag` to `value` in `argv`, replacing its value if present, else appending both."""
    if flag in argv:
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]


def _what(child: Child) -> str:
    if child.kind == "control-plane":
        return "control plane"
    if child.kind == "publish":
        return f"published proxy {child.name}"
    return f"{child.kind} {child.name}"


def publish_argv(
    gossamer: list[str],
    pub: PublishPlan,
    control_plane: str,
    ready: Path,
    state_dir: Path,
    ca_bundle: str | None = None,
    access_log: Path | None = None,
) -> list[str]:
    return [
        *gossamer,
        "proxy",
        "--service",
        pub.service,
        "--namespace",
        pub.namespace,
        "--proxy-id",
        pub.proxy_id,
        "--outbound",
        f"127.0.0.1:{pub.port}",
        # The label makes the control plane send this proxy only its service's routes (a front
        # door, not an open proxy into the mesh); the default host sends any other host to it.
        "--label",
        f"{PUBLISH_LABEL}={pub.service}",
        "--default-host",
        pub.service,
        "--control-plane",
        control_plane,
        "--ready-file",
        str(ready),
        "--state-dir",
        str(state_dir),
        *_proxy_options(ca_bundle, pub.service_account, access_log),
    ]


class Supervisor:
    """Runs one mesh. `start()` returns once everything is ready; `stop()` takes it all down."""

    def __init__(
        self,
        plan: Plan,
        options: RuntimeOptions,
        mux: LogMux,
        apply: Applier,
        converge: ConvergeProbe | None = None,
        mint: Minter | None = None,
    ) -> None:
        self.plan = plan
        self._mint = mint
        self._converge = converge
        self.options = options
        self.state = options.state
        self.mux = mux
        self._apply = apply
        self.stop_event = threading.Event()
        self.phase = "starting"
        # The control plane's one HTTPS listener, for operators and proxies (with their SVIDs).
        self.api: str | None = None
        self.ca_bundle: str | None = None
        self.control_plane: Child | None = None
        self.replicas: list[ReplicaState] = []
        self.publishers: list[PublisherState] = []
        self._lock = threading.RLock()
        self._env = base_env(options.run_id)
        # Per child name: when its current run started, and its failures in a row (backoff).
        self._started_at: dict[str, float] = {}
        self._streak: dict[str, int] = {}
        mux.add_names(plan.process_names())

    # --- start ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start everything and wait until it is ready.

        Raises:
            StartError: a part failed or was not ready in time; whatever started is stopped again.
            Aborted: stop was requested while starting; whatever started is stopped again.
        """
        try:
            self._start()
        except (StartError, Aborted):
            self.stop()
            raise
        except NotReady as exc:
            self.stop()
            raise StartError(f"{exc} (after {self.options.start_timeout:g}s)") from None
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        opts, state = self.options, self.state
        state.create()
        state.pid_path.write_text(f"{os.getpid()}\n")
        self._write_status()
        deadline = opts.clock() + opts.start_timeout
        for note in self.plan.notes:
            self.mux.say(note)

        cp_argv = [
            *opts.gossamer,
            "control-plane",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(state.control_plane),
            "--ready-file",
            str(state.ready_file("control-plane")),
        ]
        if opts.svid_ttl:
            cp_argv += ["--svid-ttl", opts.svid_ttl]
        if self.plan.trust_domain:
            # Names the root made at first start; a later start keeps the root it has.
            cp_argv += ["--trust-domain", self.plan.trust_domain]
        cp = Child(
            "control-plane",
            "control-plane",
            cp_argv,
            self._env,
            state.log_path("control-plane"),
        )
        self.control_plane = cp
        self._launch(cp)
        info = self._wait_file(cp, deadline, "the control plane")
        self.api = str(info["api"])
        self.ca_bundle = str(info["caBundle"]) if info.get("caBundle") else None
        # A restart listens where the proxies (and operators) already look for it.
        pin_flag(cp.argv, "--listen", host_port(self.api))
        self.mux.say(f"control plane ready at {self.api}")
        try:
            self._apply(self.api, self.plan.resources)
        except Exception as exc:
            raise StartError(f"applying {opts.file} to the control plane failed: {exc}") from None

        for rp in self.plan.replicas:
            port = PortReservation()
            sidecar = Child(
                rp.proxy_name,
                "sidecar",
                sidecar_argv(
                    opts.gossamer,
                    rp,
                    port.port,
                    self.api,
                    state.ready_file(rp.proxy_name),
                    state.proxy_dir(rp.name),
                    self.ca_bundle,
                    access_log_path(state.logs, rp.name),
                ),
                self._env,
                state.log_path(rp.proxy_name),
            )
            self.replicas.append(ReplicaState(rp, port, sidecar))
            self._arm(sidecar)
            self._launch(sidecar)
        for rs in self.replicas:
            rs.addresses = self._wait_file(rs.sidecar, deadline, f"sidecar {rs.sidecar.name}")
            self._pin_listeners(rs.sidecar, rs.addresses)

        for rs in self.replicas:
            rp = rs.plan
            rs.workload = Child(
                rp.name,
                "workload",
                list(rp.command),
                workload_env(self._env, rp, rs.app_port.release(), rs.addresses, self.api),
                state.log_path(rp.name),
                cwd=rp.cwd,
            )
            self._launch(rs.workload)

        for pp in self.plan.publishes:
            proxy = Child(
                pp.proxy_id,
                "publish",
                publish_argv(
                    opts.gossamer,
                    pp,
                    self.api,
                    state.ready_file(pp.proxy_id),
                    state.proxy_dir(pp.proxy_id),
                    self.ca_bundle,
                    access_log_path(state.logs, pp.proxy_id),
                ),
                self._env,
                state.log_path(pp.proxy_id),
            )
            self.publishers.append(PublisherState(pp, proxy))
            self._arm(proxy)
            self._launch(proxy)
        for ps in self.publishers:
            ps.addresses = self._wait_file(ps.proxy, deadline, f"published proxy {ps.proxy.name}")
            self._pin_listeners(ps.proxy, ps.addresses)

        for rs in self.replicas:
            self._wait_ready(rs, deadline)
            rs.ready = True
            self._write_status()
        for ps in self.publishers:
            self._wait_http(ps.proxy, ps.addresses, deadline, [ps.proxy])
            ps.ready = True
        if self._converge is not None:
            self._wait_converged(self._converge(self.api), deadline)
        with self._lock:
            self.phase = "ready"
        self._write_status()

    def _identity_of(self, child: Child) -> tuple[str, str] | None:
        """(namespace, service account) of a sidecar or front door; None for other children."""
        for rs in self.replicas:
            if child is rs.sidecar:
                return rs.plan.namespace, rs.plan.service_account or rs.plan.service
        for ps in self.publishers:
            if child is ps.proxy:
                return ps.plan.namespace, ps.plan.service_account or ps.plan.service
        return None

    def _arm(self, child: Child) -> None:
        """Give a proxy a fresh bootstrap token in its environment (tokens are single use, so
        on every start and restart).

        Raises:
            StartError: the control plane would not mint one.
        """
        identity = self._identity_of(child)
        if self._mint is None or identity is None or self.api is None:
            return
        try:
            token = self._mint(self.api, *identity)
        except Exception as exc:
            raise StartError(
                f"cannot get a bootstrap token for {_what(child)} "
                f"(spiffe identity ns/{identity[0]}/sa/{identity[1]}): {exc}"
            ) from None
        child.env = {**self._env, BOOTSTRAP_TOKEN_ENV: token}

    @staticmethod
    def _pin_listeners(proxy: Child, addresses: dict[str, Any]) -> None:
        """Make a restart of `proxy` bind the listeners it has now (its peers know them)."""
        for key in ("inbound", "outbound", "admin"):
            if addresses.get(key):
                pin_flag(proxy.argv, f"--{key}", str(addresses[key]))

    def _launch(self, child: Child) -> None:
        if self.stop_event.is_set():
            raise Aborted(child.name)
        try:
            self._started_at[child.name] = self.options.clock()
            child.start(self.mux, self._on_exit)
        except OSError as exc:
            what = "workload" if child.kind == "workload" else child.kind
            raise StartError(
                f"cannot start {what} {child.name} ({' '.join(child.argv)}): {exc.strerror or exc}"
            ) from None

    def _died(self, child: Child) -> None:
        """Raise a StartError naming `child` if it has exited."""
        if child.alive():
            return
        child._exited.wait(1.0)  # let its last lines reach the tail
        what = "workload" if child.kind == "workload" else child.kind
        lines = self.mux.tail(child.name)[-10:]
        tail = "".join(f"\n    {line}" for line in lines) or "\n    (no output)"
        raise StartError(
            f"{what} {child.name} exited during start-up (exit status {child.returncode}); "
            f"its log: {child.log_path}; last lines:{tail}"
        )

    def _wait_file(self, child: Child, deadline: float, what: str) -> dict[str, Any]:
        path = self.state.ready_file(child.name)
        return wait_for(
            ready_file(path),
            deadline=deadline,
            what=what,
            check=lambda: self._died(child),
            stop=self.stop_event,
            clock=self.options.clock,
        )

    def _wait_http(
        self, child: Child, addresses: dict[str, Any], deadline: float, watch: list[Child]
    ) -> None:
        def check() -> None:
            for c in watch:
                self._died(c)

        self._wait_admin_ready(child, addresses, deadline, check)

    def _wait_admin_ready(
        self,
        child: Child,
        addresses: dict[str, Any],
        deadline: float,
        check: Callable[[], None],
    ) -> None:
        """Wait until the sidecar at `addresses` answers its admin /ready with 200."""
        url = f"http://{addresses['admin']}/ready"
        wait_for(
            lambda: True if http_ok(url) else None,
            deadline=deadline,
            what=f"{child.name} ({url})",
            check=check,
            stop=self.stop_event,
            clock=self.options.clock,
            interval=0.05,
        )

    def _wait_ready(self, rs: ReplicaState, deadline: float) -> None:
        watch = [rs.sidecar] + ([rs.workload] if rs.workload else [])
        self._wait_http(rs.sidecar, rs.addresses, deadline, watch)

    def _wait_converged(
        self, probe: Callable[[Collection[str], Collection[str]], bool], deadline: float
    ) -> None:
        replica_ids = [rs.plan.name for rs in self.replicas]
        proxy_ids = replica_ids + [ps.plan.proxy_id for ps in self.publishers]
        children = [c for c in self._children() if c.proc is not None]

        def check() -> None:
            for child in children:
                self._died(child)

        wait_for(
            lambda: True if probe(replica_ids, proxy_ids) else None,
            deadline=deadline,
            what="the mesh (every replica a ready endpoint, every proxy on the latest config)",
            check=check,
            stop=self.stop_event,
            clock=self.options.clock,
            interval=0.1,
        )

    def _children(self) -> list[Child]:
        out = [self.control_plane] if self.control_plane else []
        for rs in self.replicas:
            out.append(rs.sidecar)
            if rs.workload is not None:
                out.append(rs.workload)
        out += [ps.proxy for ps in self.publishers]
        return out

    # --- running --------------------------------------------------------------------------------

    def _on_exit(self, child: Child) -> None:
        """A child's output ended: after start-up, report it and restart it with backoff."""
        opts = self.options
        with self._lock:
            if child.stopping or self.phase != "ready":
                return  # stopping, or start() reports it
            self._set_ready(child, False)
            ran = opts.clock() - self._started_at.get(child.name, opts.clock())
            if ran >= opts.restart_reset:
                self._streak[child.name] = 0
            delay = self._next_delay(child)
        # Whatever the leader left behind in its group could hold its ports.
        child.signal_group(signal.SIGKILL)
        lines = self.mux.tail(child.name)[-10:]
        self.mux.say(
            f"{_what(child)} exited unexpectedly ({child.exit_reason()}); "
            f"restarting in {delay:g}s (restart {child.restarts + 1}); its log: {child.log_path}"
            + ("; last lines:" if lines else "")
        )
        for line in lines:
            self.mux.say(f"    {line}")
        self._write_status()
        self._restart(child, delay)

    def _next_delay(self, child: Child) -> float:
        opts = self.options
        streak = self._streak.get(child.name, 0)
        self._streak[child.name] = streak + 1
        return float(min(opts.restart_delay * 2 ** min(streak, 30), opts.restart_max_delay))

    def _restart(self, child: Child, delay: float) -> None:
        """Start `child` again after `delay`, retrying with backoff while its addresses are taken.

        Runs in the dead child's log thread; gives up as soon as stopping begins.
        """
        while True:
            if self.stop_event.wait(delay):
                return
            taken = [a for a in self._addresses_of(child) if not address_free(a)]
            error = ""
            with self._lock:
                if child.stopping or self.phase != "ready":
                    return
                if not taken:
                    ready = self._ready_file_of(child)
                    if ready is not None:
                        ready.unlink(missing_ok=True)
                    try:
                        self._arm(child)
                        self._started_at[child.name] = self.options.clock()
                        child.start(self.mux, self._on_exit)
                    except StartError as exc:
                        error = str(exc)
                    except OSError as exc:
                        error = f"cannot start it ({' '.join(child.argv)}): {exc.strerror or exc}"
                    else:
                        child.restarts += 1
                if not error and not taken:
                    break
                delay = self._next_delay(child)
            if taken:
                error = (
                    f"{', '.join(taken)} {'is' if len(taken) == 1 else 'are'} taken by another "
                    "process and it must come back on the same address"
                )
            self.mux.say(
                f"cannot restart {_what(child)}: {error}; retrying in {delay:g}s "
                f"(restart {child.restarts + 1})"
            )
        self.mux.say(f"restarted {_what(child)} (pid {child.pid}, restart {child.restarts})")
        self._write_status()
        self._watch_ready(child, child.proc)

    def _addresses_of(self, child: Child) -> list[str]:
        """Where `child` listens: the addresses a restart must get back."""
        if child is self.control_plane and self.api:
            return [host_port(self.api)]
        for rs in self.replicas:
            if child is rs.workload:
                return [f"127.0.0.1:{rs.app_port.port}"]
            if child is rs.sidecar:
                return [str(rs.addresses[k]) for k in ("inbound", "outbound", "admin")]
        for ps in self.publishers:
            if child is ps.proxy:
                keys = ("inbound", "outbound", "admin")
                return [str(ps.addresses[k]) for k in keys if ps.addresses.get(k)]
        return []

    def _ready_file_of(self, child: Child) -> Path | None:
        return None if child.kind == "workload" else self.state.ready_file(child.name)

    def _set_ready(self, child: Child, ready: bool) -> None:
        for rs in self.replicas:
            if child in (rs.sidecar, rs.workload):
                rs.ready = ready
        for ps in self.publishers:
            if child is ps.proxy:
                ps.ready = ready

    def _watch_ready(self, child: Child, proc: Any) -> None:
        """Wait for a restarted child to be ready again; then say so and mark it ready."""

        def check() -> None:
            if child.proc is not proc or not child.alive():
                raise Aborted(child.name)  # died again: its own exit handler takes over

        deadline = self.options.clock() + self.options.start_timeout
        try:
            if child is self.control_plane:
                info = self._wait_restarted(child, deadline, check)
                api = str(info.get("api"))
                if api != self.api:
                    self.mux.say(f"control plane came back at {api}, not at {self.api}")
                else:
                    self.mux.say(f"control plane back at {api}")
                return
            sidecar = next(
                (rs.sidecar for rs in self.replicas if child in (rs.sidecar, rs.workload)), None
            )
            admin_of = {rs.sidecar.name: rs.addresses for rs in self.replicas}
            admin_of.update({ps.proxy.name: ps.addresses for ps in self.publishers})
            proxy = sidecar or child
            if child.kind != "workload":
                self._wait_restarted(child, deadline, check)
            self._wait_admin_ready(child, admin_of[proxy.name], deadline, check)
        except (Aborted, NotReady):
            return
        with self._lock:
            if self.phase != "ready" or child.proc is not proc:
                return
            for rs in self.replicas:
                if child in (rs.sidecar, rs.workload):
                    rs.ready = rs.sidecar.alive() and bool(rs.workload and rs.workload.alive())
            for ps in self.publishers:
                if child is ps.proxy:
                    ps.ready = True
        self._write_status()

    def _wait_restarted(
        self, child: Child, deadline: float, check: Callable[[], None]
    ) -> dict[str, Any]:
        path = self._ready_file_of(child)
        assert path is not None
        return wait_for(
            ready_file(path),
            deadline=deadline,
            what=child.name,
            check=check,
            stop=self.stop_event,
            clock=self.options.clock,
        )

    def wait(self) -> None:
        """Block until stop is requested (signal handler or `down`)."""
        while not self.stop_event.wait(3600):
            pass

    def request_stop(self) -> None:
        self.stop_event.set()

    # --- stop -----------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything in reverse order of start; idempotent."""
        with self._lock:
            if self.phase in ("stopping", "stopped"):
                return
            self.phase = "stopping"
        for rs in self.replicas:
            rs.app_port.release()
        self.stop_event.set()
        self._write_status()
        opts = self.options
        stages: list[tuple[str, list[Child]]] = [
            ("published proxies", [p.proxy for p in self.publishers]),
            ("workloads", [r.workload for r in self.replicas if r.workload is not None]),
            ("sidecars", [r.sidecar for r in self.replicas]),
            ("control plane", [self.control_plane] if self.control_plane else []),
        ]
        for label, children in stages:
            if not any(c.proc is not None for c in children):
                continue
            self.mux.say(f"stopping {label}")
            hooks = {c.name: self._quit_hook(c) for c in children if c.kind != "workload"}
            killed = stop_all(children, opts.stop_timeout, opts.clock, hooks)
            if killed:
                self.mux.say(f"killed after {opts.stop_timeout:g}s: {', '.join(killed)}")
        with self._lock:
            self.phase = "stopped"
        if self.state.read_pid() == os.getpid():
            self.state.clear_run()
        self.mux.say("stopped")

    def _quit_hook(self, child: Child) -> Callable[[], bool]:
        """Ask a proxy to drain and exit through its admin /quitquitquit; whether it agreed."""
        addresses: dict[str, Any] = {}
        for rs in self.replicas:
            if rs.sidecar is child:
                addresses = rs.addresses
        for ps in self.publishers:
            if ps.proxy is child:
                addresses = ps.addresses
        admin = addresses.get("admin")
        if not admin or not child.alive():
            return lambda: False
        url = f"http://{admin}/quitquitquit"
        return lambda: http_post(url, timeout=0.5)

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The document of `gossamer status --json` (also written to status.json)."""
        with self._lock:
            services: dict[str, list[dict[str, Any]]] = {}
            for rp in self.plan.replicas:
                services.setdefault(rp.service, [])
            for rs in self.replicas:
                wl = rs.workload
                services[rs.plan.service].append(
                    {
                        "replica": rs.plan.name,
                        "subset": rs.plan.subset,
                        "pid": wl.pid if wl is not None else None,
                        "ready": rs.ready,
                        "inbound": rs.addresses.get("inbound"),
                        "outbound": rs.addresses.get("outbound"),
                        "admin": rs.addresses.get("admin"),
                        "app": f"127.0.0.1:{rs.app_port.port}",
                        "proxyId": rs.plan.name,
                        "proxyPid": rs.sidecar.pid,
                        "log": str(wl.log_path) if wl is not None else None,
                        "proxyLog": str(rs.sidecar.log_path),
                        "restarts": wl.restarts if wl is not None else 0,
                        "proxyRestarts": rs.sidecar.restarts,
                    }
                )
            published = {
                ps.plan.service: f"http://{ps.addresses['outbound']}"
                for ps in self.publishers
                if ps.addresses.get("outbound")
            }
            publishers = {
                ps.plan.service: {
                    "proxyId": ps.plan.proxy_id,
                    "pid": ps.proxy.pid,
                    "ready": ps.ready,
                    "outbound": ps.addresses.get("outbound"),
                    "admin": ps.addresses.get("admin"),
                    "log": str(ps.proxy.log_path),
                    "restarts": ps.proxy.restarts,
                }
                for ps in self.publishers
            }
            cp = self.control_plane
            return {
                "controlPlane": self.api,
                # The same URL: kept in status for its readers (proxies use the one listener).
                "controlPlaneInternal": self.api,
                "caBundle": self.ca_bundle,
                "stateDir": str(self.state.root),
                "file": str(self.options.file),
                "state": self.phase,
                "supervisorPid": os.getpid(),
                "runId": self.options.run_id,
                "controlPlanePid": cp.pid if cp is not None else None,
                "controlPlaneRestarts": cp.restarts if cp is not None else 0,
                "logs": str(self.state.logs),
                "published": published,
                "services": services,
                "publishers": publishers,
            }

    def _write_status(self) -> None:
        with self._lock:
            if self.phase == "stopped":
                return
            write_json_atomic(self.state.status_path, self.status())
