"""`gossamer up`, `down` and `status`: run a mesh from a file on this machine, stop it, see it."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from gossamer.cli.main import CommandError

DEFAULT_TIMEOUT = 60.0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    up = subparsers.add_parser(
        "up",
        help="run a mesh from a file: control plane, sidecars and workloads",
        description="Run the control plane, then per replica its sidecar and workload, in the "
        "foreground with prefixed logs (Ctrl-C stops everything), or detached with -d.",
    )
    up.add_argument("file", help="the mesh file (YAML with Mesh, Service, HTTPRoute, ...)")
    up.add_argument(
        "-d", "--detach", action="store_true", help="return once ready; stop with gossamer down"
    )
    _state_dir_arg(up)
    up.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds to wait for everything to be ready (default {DEFAULT_TIMEOUT:g})",
    )
    up.add_argument(
        "--svid-ttl",
        metavar="DURATION",
        help="lifetime of the sidecars' SVIDs, passed to the control plane (default 24h; a short "
        "one such as 30s exercises renewals)",
    )
    up.add_argument("--supervise", action="store_true", help=argparse.SUPPRESS)
    up.set_defaults(func=cmd_up)

    down = subparsers.add_parser("down", help="stop a mesh started with gossamer up")
    _state_dir_arg(down)
    down.add_argument(
        "--timeout", type=float, default=20.0, help="seconds to wait for it to stop (default 20)"
    )
    down.set_defaults(func=cmd_down)

    status = subparsers.add_parser(
        "status", help="services, replicas, sidecars, readiness and published URLs"
    )
    _state_dir_arg(status)
    status.add_argument("--json", action="store_true", help="machine-readable (stable shape)")
    status.set_defaults(func=cmd_status)


def _state_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        help="the running mesh's state (default $GOSSAMER_STATE_DIR, else ./.gossamer)",
    )


# --- up -------------------------------------------------------------------------------------------


def load_plan(file: str) -> Any:
    """Load and check the mesh file, then plan its processes.

    Raises:
        CommandError: the file has problems (all of them, one per line, with file:line:column).
    """
    from gossamer.config.errors import ConfigError
    from gossamer.config.validate import load_and_check
    from gossamer.runtime.plan import build_plan

    path = Path(file)
    if not path.is_file():
        raise CommandError(f"{file}: no such file")
    try:
        loaded = load_and_check([path])
    except ConfigError as exc:
        raise CommandError(f"{file} has problems:\n{exc}") from None
    return build_plan([item.resource for item in loaded], path.resolve().parent)


def apply_resources(
    api: str, resources: list[dict[str, Any]], credentials_dir: Path | None = None
) -> None:
    """Apply the file's resources to the control plane at `api` (all or nothing).

    `credentials_dir`: the control plane's state dir, holding its admin token and CA bundle.
    """
    from gossamer.control.client import ApiError, ControlPlaneClient, Credentials

    creds = Credentials.from_state_dir(credentials_dir) if credentials_dir else None
    try:
        ControlPlaneClient(api, credentials=creds).apply(resources)
    except ApiError as exc:
        raise RuntimeError(_api_error_text(exc)) from None


BOOTSTRAP_TOKEN_TTL = 600.0


def mint_bootstrap_token(
    api: str, namespace: str, service_account: str, credentials_dir: Path
) -> str:
    """A single-use, 10-minute bootstrap token for one sidecar's identity (admin token).

    Raises:
        RuntimeError: the control plane refused or could not be reached, with its message.
    """
    from gossamer.control.client import ApiError, ControlPlaneClient, Credentials

    client = ControlPlaneClient(api, credentials=Credentials.from_state_dir(credentials_dir))
    try:
        answer = client.create_bootstrap_token(service_account, namespace, BOOTSTRAP_TOKEN_TTL)
    except ApiError as exc:
        raise RuntimeError(_api_error_text(exc)) from None
    return str(answer["token"])


def _api_error_text(exc: Any) -> str:
    from gossamer.cli.resources import api_error_text

    return api_error_text(exc)


def cmd_up(args: argparse.Namespace) -> int:
    from gossamer.runtime.detach import (
        DetachError,
        clean_up_run,
        start_detached,
        supervise_argv,
        supervisor_gone,
    )
    from gossamer.runtime.state import StateDir, pid_alive, resolve_state_dir

    state = StateDir(resolve_state_dir(args.state_dir))
    running = state.read_pid()
    if running is not None and running != os.getpid() and pid_alive(running):
        raise CommandError(
            f"a mesh is already running from {state.root} (supervisor pid {running}); "
            f"stop it first: gossamer down{_state_flag(args)}"
        )
    plan = load_plan(args.file)
    if args.svid_ttl is not None:
        from gossamer.cli.control_plane import parse_svid_ttl

        parse_svid_ttl(args.svid_ttl)  # a usage error now, not a control plane that exits
    gone = supervisor_gone(state)
    stale = state.read_status()
    if gone is not None and stale is not None and not args.supervise:
        # The last mesh's supervisor was killed outright: whatever it left would hold ports and
        # answer beside the new mesh, so it goes first (what `gossamer down` would do).
        left = clean_up_run(stale)
        print(f"{_gone_text(state.root, gone)}; {_stopped_text(left)}; starting a new one")
    if args.detach and not args.supervise:
        try:
            status = start_detached(
                supervise_argv(Path(args.file).resolve(), state, args.timeout, args.svid_ttl),
                state,
                args.timeout + 10.0,
            )
        except DetachError as exc:
            raise CommandError(f"the mesh did not start: {exc}") from None
        print(format_summary(status))
        print(f"\nlogs: {state.logs}/   stop with: gossamer down{_state_flag(args)}")
        return 0
    return _run_foreground(plan, state, args)


def _state_flag(args: argparse.Namespace) -> str:
    return f" --state-dir {args.state_dir}" if args.state_dir else ""


def _run_foreground(plan: Any, state: Any, args: argparse.Namespace) -> int:
    from gossamer.runtime.converge import api_probe
    from gossamer.runtime.logs import LogMux
    from gossamer.runtime.readiness import Aborted
    from gossamer.runtime.supervisor import RuntimeOptions, StartError, Supervisor

    mux = LogMux(sys.stdout)
    options = RuntimeOptions(
        state=state,
        file=Path(args.file).resolve(),
        start_timeout=args.timeout,
        svid_ttl=args.svid_ttl,
    )

    def apply(api: str, resources: list[dict[str, Any]]) -> None:
        apply_resources(api, resources, state.control_plane)

    def probe(api: str) -> Callable[[Collection[str], Collection[str]], bool]:
        return api_probe(api, state.control_plane)

    def mint(api: str, namespace: str, service_account: str) -> str:
        return mint_bootstrap_token(api, namespace, service_account, state.control_plane)

    sup = Supervisor(plan, options, mux, apply, probe, mint)
    signals = 0

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            mux.say(f"got {signal.Signals(signum).name}: stopping (again to kill at once)")
        else:
            options.stop_timeout = 0.0
        sup.request_stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            sup.start()
        except Aborted:
            return 130
        except StartError as exc:
            raise CommandError(str(exc)) from None
        mux.say(format_summary(sup.status()))
        if not args.supervise:
            mux.say("press Ctrl-C to stop")
        sup.wait()
        sup.stop()
        return 0
    finally:
        sup.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- down -----------------------------------------------------------------------------------------


def cmd_down(args: argparse.Namespace) -> int:
    from gossamer.runtime.detach import stop_mesh
    from gossamer.runtime.state import StateDir, resolve_state_dir

    state = StateDir(resolve_state_dir(args.state_dir))
    stopped = stop_mesh(state, args.timeout)
    if stopped.running:
        print(f"stopped the mesh running from {state.root}")
    elif stopped.gone:
        gone = _gone_text(state.root, stopped.supervisor_pid or 0)
        print(f"{gone}; {_stopped_text(stopped.leftovers)}")
    else:
        print(f"no mesh running from {state.root}")
    return 0


def _gone_text(root: Path, pid: int) -> str:
    return f"the supervisor of the mesh in {root} was gone" + (f" (pid {pid})" if pid else "")


def _stopped_text(leftovers: int) -> str:
    if not leftovers:
        return "none of its processes were still running"
    return f"stopped {leftovers} leftover process{'' if leftovers == 1 else 'es'}"


# --- status ---------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from gossamer.runtime.detach import supervisor_gone
    from gossamer.runtime.state import StateDir, pid_alive, resolve_state_dir

    state = StateDir(resolve_state_dir(args.state_dir))
    gone = supervisor_gone(state)
    if gone is not None:
        raise CommandError(
            f"the supervisor of the mesh in {state.root} is gone"
            + (f" (pid {gone})" if gone else "")
            + f"; processes may be left: run `gossamer down --state-dir {state.root}` to clean up"
        )
    status = state.read_status()
    pid = status.get("supervisorPid") if status else None
    if status is None or not isinstance(pid, int) or not pid_alive(pid):
        raise CommandError(
            f"no mesh running from {state.root} (start one with: gossamer up -d FILE"
            f"{_state_flag(args)})"
        )
    refresh(status)
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status))
    return 0


def refresh(status: dict[str, Any]) -> None:
    """Replace the recorded readiness with what each sidecar's /ready and process say now."""
    from gossamer.runtime.readiness import http_ok
    from gossamer.runtime.state import pid_alive

    entries: list[dict[str, Any]] = [r for rs in status.get("services", {}).values() for r in rs]
    entries += list(status.get("publishers", {}).values())

    def live(entry: dict[str, Any]) -> bool:
        pid = entry.get("pid")
        if isinstance(pid, int) and not pid_alive(pid):
            return False
        admin = entry.get("admin")
        return bool(admin) and http_ok(f"http://{admin}/ready", timeout=1.0)

    if entries:
        with ThreadPoolExecutor(max_workers=min(8, len(entries))) as pool:
            for entry, ok in zip(entries, pool.map(live, entries), strict=True):
                entry["ready"] = ok


def format_summary(status: dict[str, Any]) -> str:
    """Where everything is, printed once the mesh is ready."""
    lines = [f"mesh ready: {status.get('file')}"]
    lines.append(f"  control plane   {status.get('controlPlane')}")
    published: dict[str, str] = status.get("published") or {}
    services: dict[str, list[dict[str, Any]]] = status.get("services") or {}
    # One line per service: its replicas, then its published URL if it has one.
    rows = [
        (name, ", ".join(r["replica"] for r in services.get(name, [])) or "(no replicas)")
        for name in sorted({*services, *published})
    ]
    width = max((len(replicas) for name, replicas in rows if name in published), default=0)
    for name, replicas in rows:
        if name in published:
            lines.append(f"  {name:<15} {replicas:<{width}}    {published[name]} (published)")
        else:
            lines.append(f"  {name:<15} {replicas}")
    return "\n".join(lines)


def format_status(status: dict[str, Any]) -> str:
    """`gossamer status` as a table, one row per replica."""
    from gossamer.cli.resources import render_table

    restarts = status.get("controlPlaneRestarts", 0)
    out = [
        f"control plane: {status.get('controlPlane')} (restarts: {restarts})   "
        f"state dir: {status.get('stateDir')}"
    ]
    for name, url in sorted(status.get("published", {}).items()):
        out.append(f"published: {name} -> {url}")
    rows = []
    for name, replicas in sorted(status.get("services", {}).items()):
        if not replicas:
            rows.append([name, "-", "-", "-", "-", "-", "-", "-", "-", "-"])
        for r in replicas:
            rows.append(
                [
                    name,
                    r.get("replica", ""),
                    r.get("subset") or "-",
                    "yes" if r.get("ready") else "no",
                    str(r.get("pid") or "-"),
                    r.get("app") or "-",
                    r.get("inbound") or "-",
                    r.get("outbound") or "-",
                    r.get("admin") or "-",
                    # The workload's restarts, then its sidecar's.
                    f"{r.get('restarts', 0)}/{r.get('proxyRestarts', 0)}",
                ]
            )
    out.append("")
    out.append(
        render_table(
            [
                "SERVICE",
                "REPLICA",
                "SUBSET",
                "READY",
                "PID",
                "APP",
                "INBOUND",
                "OUTBOUND",
                "ADMIN",
                "RESTARTS",
            ],
            rows,
        )
    )
    return "\n".join(out)
