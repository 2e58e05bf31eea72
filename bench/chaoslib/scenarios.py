"""The four chaos scenarios of issue 4, each on its own mesh from examples/chaos, each bounded.

A scenario starts its mesh, drives closed-loop load through the mesh's published front door (a
sidecar like any caller's, with the routes, retries, outlier detection and fallbacks of the
YAML), breaks something, and measures what callers saw. Its bounds come from the issue's words
and from the scenario's YAML (e.g. "within one ejection interval" reads the interval there), never
from what the code happens to do. See docs/chaos.md.
"""

from __future__ import annotations

import http.client
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaoslib.load import Load, Sample, percentile
from chaoslib.mesh import (
    EXAMPLES,
    ChaosError,
    Mesh,
    NotYet,
    metric_sum,
    metrics,
    snapshot_of,
    validate,
)
from chaoslib.redis import RedisError, RedisServer
from gossamer import snapshot
from gossamer.config import models
from gossamer.config.loader import load_files

# A scenario must finish (mesh up, load, mesh down) within this many seconds.
TIME_LIMIT = 60.0
WORKERS = 8
# Requests measured at least, after the event: one failure in 2000 is 0.05%, under the 0.1% bound.
MIN_SAMPLES = 2000


@dataclass(frozen=True)
class Check:
    """One bound of a scenario and what was measured against it."""

    bound: str
    measured: str
    passed: bool


@dataclass
class Result:
    name: str
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    error: str = ""  # the scenario could not be run to its end (nothing measured is trusted)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.error and bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def bound(self) -> str:
        return "; ".join(c.bound for c in self.checks) if self.checks else "-"

    @property
    def measured(self) -> str:
        if self.error:
            return self.error
        return "; ".join(c.measured for c in self.checks)

    def check(self, bound: str, measured: str, passed: bool) -> None:
        self.checks.append(Check(bound, measured, passed))

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.name,
            "passed": self.passed,
            "seconds": round(self.seconds, 1),
            "error": self.error or None,
            "checks": [c.__dict__ for c in self.checks],
            "details": self.details,
        }


@dataclass(frozen=True)
class Scenario:
    name: str
    yaml: str
    about: str
    body: Callable[[Mesh, Result, dict[str, Any]], None]
    needs_redis: bool = False


# --- helpers -------------------------------------------------------------------------------------


def resources(mesh: Mesh) -> list[models.AnyResource]:
    return [loaded.resource for loaded in load_files([mesh.file])]


def policy_of(mesh: Mesh, service: str) -> models.DestinationPolicySpec:
    for r in resources(mesh):
        if isinstance(r, models.DestinationPolicy) and r.spec.target_ref.name == service:
            return r.spec
    raise ChaosError(f"{mesh.file.name} has no DestinationPolicy for {service}")


def ejection_interval(mesh: Mesh, service: str) -> float:
    outlier = policy_of(mesh, service).outlier_detection
    if outlier is None:
        raise ChaosError(f"{mesh.file.name}: the DestinationPolicy of {service} has no outlier")
    return float(outlier.interval)


def cluster_of(admin: str, service: str) -> snapshot.Cluster:
    """The cluster of `service` (no subset) in the Snapshot of the proxy at `admin`."""
    for cluster in snapshot_of(admin).clusters:
        if cluster.service == service and cluster.subset is None:
            return cluster
    raise ChaosError(f"the proxy at {admin} has no cluster for {service}")


def require(present: object, feature: str) -> None:
    """Fail the scenario as "not yet: <feature>" when what it exercises is not in the Snapshot."""
    if not present:
        raise NotYet(feature)


def pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.3f}%" if whole else "n/a"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def failures_text(samples: list[Sample], limit: int = 3) -> str:
    kinds = Counter(f"{s.status or s.error}[{s.flags}]" for s in samples if not s.ok)
    return ", ".join(f"{k} x{n}" for k, n in kinds.most_common(limit))


class CounterWatch:
    """Polls a counter on a proxy's admin /metrics and records when it last grew."""

    def __init__(self, admin: str, name: str, every: float = 0.025, **labels: str) -> None:
        self.admin, self.name, self.every, self.labels = admin, name, every, labels
        self.points: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="counter-watch", daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                value = metric_sum(metrics(self.admin, timeout=1.0), self.name, **self.labels)
            except (OSError, http.client.HTTPException, ValueError, ChaosError):
                value = None  # a dead proxy serves no traffic either; keep polling
            if value is not None:
                self.points.append((time.monotonic(), value))
            self._stop.wait(self.every)

    @contextmanager
    def running(self) -> Iterator[CounterWatch]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=5)

    def last_growth(self, after: float) -> float | None:
        """The time of the last poll after `after` that saw the counter higher than the poll
        before it (None: it never grew after `after`)."""
        last = None
        prev = None
        for t, v in self.points:
            if prev is not None and v > prev and t > after:
                last = t
            prev = v
        return last


def at_least(load: Load, n: int, since: float) -> None:
    """Keep the load on until `n` requests started after `since`, so that a share of 0.1% is
    measurable on a slow machine too (a bounded wait: at most 20 s more)."""
    load.wait(f"{n} answers", lambda: len(load.samples(since)) >= n, 20)


def served_by_all(load: Load, replicas: list[dict[str, Any]]) -> Callable[[], bool]:
    names = {r["replica"] for r in replicas}
    return lambda: names <= {s.replica for s in load.samples()}


# --- kill one replica ----------------------------------------------------------------------------


def kill_replica(mesh: Mesh, result: Result, _: dict[str, Any]) -> None:
    """SIGKILL one of three replicas' app under load and keep it dead (its restarts crash)."""
    interval = ejection_interval(mesh, "backend")
    window = max(3 * interval, 4.0)
    front, caller_admin = mesh.front_door("backend")
    outlier = cluster_of(caller_admin, "backend").outlier_detection
    require(outlier is not None and outlier.interval == interval, "outlier detection in Snapshots")
    replicas = mesh.replicas("backend")
    victim = replicas[0]
    # The front door calls nothing but backend: every ejection or retry it counts is backend's.
    before = metrics(caller_admin)
    ejections_before = metric_sum(before, "gossamer_proxy_outlier_ejections_total")
    retries_before = metric_sum(before, "gossamer_proxy_retries_total")
    watch = CounterWatch(victim["admin"], "gossamer_proxy_requests_total", direction="inbound")
    with Load(front, "backend", ["/work"], WORKERS, max_seconds=window + 20) as load:
        load.wait("answers from every replica", served_by_all(load, replicas), 10)
        load.run_for(1.0)
        with watch.running():
            load.run_for(0.2)
            t_kill = time.monotonic()
            mesh.kill_for_good(victim)
            load.run_for(window)
            at_least(load, MIN_SAMPLES, t_kill)
            t_end = time.monotonic()
    after = load.samples(t_kill, t_end)
    failed = [s for s in after if not s.ok]
    result.check(
        "failed < 0.1% after the kill",
        f"{len(failed)}/{len(after)} failed ({pct(len(failed), len(after))})"
        + (f": {failures_text(failed)}" if failed else ""),
        len(after) >= MIN_SAMPLES and len(failed) * 1000 < len(after),
    )
    last = watch.last_growth(t_kill)
    left = 0.0 if last is None else last - t_kill
    polled = [t for t, _ in watch.points if t > t_kill]
    result.check(
        f"traffic leaves the dead replica within one ejection interval ({interval:g} s)",
        f"its sidecar's last inbound request {ms(left)} after the kill "
        f"(polled every 25 ms for {window:g} s)",
        bool(polled) and polled[-1] - t_kill >= window * 0.9 and left <= interval,
    )
    end = metrics(caller_admin)
    retries = metric_sum(end, "gossamer_proxy_retries_total") - retries_before
    ejections = metric_sum(end, "gossamer_proxy_outlier_ejections_total") - ejections_before
    result.check(
        "with retries and ejection: the caller retried and ejected",
        f"{retries:g} retries, {ejections:g} outlier ejection(s) (its /metrics)",
        retries >= 1 and ejections >= 1,
    )
    result.details.update(
        victim=victim["replica"],
        requests_after_kill=len(after),
        failed=len(failed),
        left_ms=round(left * 1000, 1),
        served_after_kill=dict(Counter(s.replica for s in after)),
    )


# --- one slow replica ----------------------------------------------------------------------------


def slow_replica(mesh: Mesh, result: Result, _: dict[str, Any]) -> None:
    """One replica of three answers 100 ms late; PEAK_EWMA should send it little traffic."""
    policy = policy_of(mesh, "backend").load_balancer
    if policy is None or policy.policy != "PEAK_EWMA":
        raise ChaosError(f"{mesh.file.name}: the backend's DestinationPolicy is not PEAK_EWMA")
    front, caller_admin = mesh.front_door("backend")
    balancer = cluster_of(caller_admin, "backend").load_balancer
    require(balancer.policy == "PEAK_EWMA", "DestinationPolicy PEAK_EWMA in Snapshots")
    replicas = mesh.replicas("backend")
    slow = {r["replica"] for r in replicas if r["subset"] == "slow"}
    if len(slow) != 1 or len(replicas) != 3:
        raise ChaosError(f"expected 3 replicas, 1 of them slow; got {len(replicas)}, {slow}")
    with Load(front, "backend", ["/work"], WORKERS, max_seconds=30) as load:
        load.wait("answers from every replica", served_by_all(load, replicas), 10)
        load.run_for(1.0)  # the EWMA's first samples; not measured
        t0 = time.monotonic()
        load.run_for(5.0)
        at_least(load, MIN_SAMPLES, t0)
        t1 = time.monotonic()
    measured = load.samples(t0, t1)
    to_slow = sum(1 for s in measured if s.replica in slow)
    failed = [s for s in measured if not s.ok]
    fair = 1 / len(replicas)
    result.check(
        f"slow replica's share < {100 * fair / 2:.1f}% (under half its even {100 * fair:.1f}%)",
        f"{to_slow}/{len(measured)} requests ({pct(to_slow, len(measured))})",
        len(measured) >= MIN_SAMPLES and to_slow < len(measured) * fair / 2,
    )
    result.check(
        "no failed request",
        f"{len(failed)} failed" + (f": {failures_text(failed)}" if failed else ""),
        not failed,
    )
    result.details.update(
        requests=len(measured),
        served=dict(Counter(s.replica for s in measured)),
        p50_ms=round(percentile([s.latency for s in measured], 50) * 1000, 2),
    )


# --- a dependency down ---------------------------------------------------------------------------

# Fallback causes that mean no endpoint was tried at all: the circuit is open.
CIRCUIT_OPEN = ("no-healthy-endpoint", "overflow")


def circuit_open(s: Sample) -> bool:
    flags = [f.strip() for f in s.flags.split(",")]
    return bool(flags) and flags[0] == "fallback" and any(c in flags for c in CIRCUIT_OPEN)


def dependency_down(mesh: Mesh, result: Result, _: dict[str, Any]) -> None:
    """Every replica of catalog dies under load: the circuit opens, the fallback answers."""
    interval = ejection_interval(mesh, "catalog")
    window = max(3 * interval, 4.0)
    front, caller_admin = mesh.front_door("catalog")
    outlier = cluster_of(caller_admin, "catalog").outlier_detection
    require(outlier is not None, "outlier detection in Snapshots")
    fallbacks = [
        rule.fallback
        for vhost in snapshot_of(caller_admin).virtual_hosts
        for rule in vhost.rules
        if rule.fallback is not None and rule.fallback.response is not None
    ]
    require(fallbacks, "HTTPRoute fallback (static response) in Snapshots")
    replicas = mesh.replicas("catalog")
    with Load(front, "catalog", ["/items"], WORKERS, max_seconds=window + 25) as load:
        load.wait("answers from every replica", served_by_all(load, replicas), 10)
        load.run_for(0.5)
        t_h0 = time.monotonic()
        load.run_for(2.0)
        t_kill = time.monotonic()
        for replica in replicas:
            mesh.kill_for_good(replica)
        load.run_for(window)
        at_least(load, MIN_SAMPLES, t_kill)
        t_end = time.monotonic()
    healthy = load.samples(t_h0, t_kill)
    outage = load.samples(t_kill, t_end)
    bad = [s for s in outage if not s.ok]
    result.check(
        ">= 99.9% of answers ok or fallback during the outage",
        f"{len(outage) - len(bad)}/{len(outage)} ({pct(len(outage) - len(bad), len(outage))})"
        + (f": {failures_text(bad)}" if bad else ""),
        len(outage) >= MIN_SAMPLES and len(bad) * 1000 <= len(outage),
    )
    tried = [s for s in outage if not circuit_open(s)]
    opened = max((s.start for s in tried), default=t_kill) - t_kill
    open_share = 1 - len(tried) / len(outage) if outage else 0.0
    result.check(
        f"circuit open (fallback without a try) within one ejection interval ({interval:g} s)",
        f"last request that tried catalog {ms(opened)} after the kill; "
        f"{100 * open_share:.1f}% answered with the circuit open",
        bool(outage) and len(tried) < len(outage) and opened <= interval,
    )
    if not healthy:
        raise ChaosError("no healthy answers before the outage")
    p99_healthy = percentile([s.latency for s in healthy], 99)
    p99_outage = percentile([s.latency for s in outage], 99) if outage else float("inf")
    limit = 2 * p99_healthy + 0.005
    result.check(
        "latency flat: outage p99 <= 2 x healthy p99 + 5 ms",
        f"p99 {ms(p99_outage)} vs healthy {ms(p99_healthy)} (limit {ms(limit)})",
        p99_outage <= limit,
    )
    first_open = min((s.start for s in outage if circuit_open(s)), default=None)
    result.details.update(
        first_open_ms=None if first_open is None else round((first_open - t_kill) * 1000, 1),
        last_tried_ms=round(opened * 1000, 1),
        healthy_requests=len(healthy),
        outage_requests=len(outage),
        flags=dict(Counter(s.flags for s in outage).most_common(6)),
    )


# --- Redis down under a global rate limit --------------------------------------------------------


def limit_of(mesh: Mesh, name: str) -> models.RateLimitSpec:
    for r in resources(mesh):
        if isinstance(r, models.RateLimitPolicy):
            for limit in r.spec.limits:
                if limit.name == name:
                    return limit
    raise ChaosError(f"{mesh.file.name} has no rate limit named {name!r}")


def redis_down(mesh: Mesh, result: Result, ctx: dict[str, Any]) -> None:
    """A global limit per failure mode, both far exceeded; then Redis is killed."""
    redis: RedisServer = ctx["redis"]
    front, _admin = mesh.front_door("backend")
    replicas = len(mesh.replicas("backend"))
    limits = {path: limit_of(mesh, path.strip("/")) for path in ("/open", "/closed")}
    for replica in mesh.replicas("backend"):
        rate_limits = snapshot_of(replica["admin"]).rate_limits
        rules = rate_limits.inbound if rate_limits is not None else []
        modes = {r.failure_mode for r in rules if r.scope == "Global"}
        require(
            rate_limits is not None and rate_limits.redis is not None and len(modes) == 2,
            "Global RateLimitPolicy (both failure modes, Redis) in the sidecars' Snapshots",
        )
    grace = 1.0
    with Load(front, "backend", list(limits), WORKERS, max_seconds=30) as load:
        load.wait(
            "429s on both paths (the limits in force)",
            lambda: {s.path for s in load.samples() if s.status == 429} == set(limits),
            10,
        )
        t0 = time.monotonic()
        load.run_for(3.0)
        t_stop = time.monotonic()
        redis.stop()
        load.run_for(grace + 3.0)
        t_end = time.monotonic()
    for path, limit in limits.items():
        before = [s for s in load.samples(t0, t_stop) if s.path == path]
        allowed = sum(1 for s in before if s.ok)
        seconds = t_stop - t0
        bucket = limit.requests + limit.burst + limit.requests * seconds / limit.per
        result.check(
            f"{path} with Redis: global limit holds (0.5x..1.25x of {bucket:.0f} "
            f"over {seconds:.1f} s; {replicas} replicas)",
            f"{allowed} allowed of {len(before)}",
            0.5 * limit.requests * seconds / limit.per <= allowed <= 1.25 * bucket,
        )
    after = load.samples(t_stop + grace, t_end)
    opened = [s for s in after if s.path == "/open"]
    passed = sum(1 for s in opened if s.ok)
    result.check(
        f"/open {limits['/open'].failure_mode} after Redis stopped (+{grace:g} s): >= 99.9% pass",
        f"{passed}/{len(opened)} passed ({pct(passed, len(opened))})",
        len(opened) >= 100 and passed * 1000 >= len(opened) * 999,
    )
    closed = [s for s in after if s.path == "/closed"]
    refused = sum(1 for s in closed if s.status == 429 and "rate-limited" in s.flags)
    result.check(
        f"/closed {limits['/closed'].failure_mode} after Redis stopped (+{grace:g} s): "
        ">= 99.9% 429 rate-limited",
        f"{refused}/{len(closed)} refused ({pct(refused, len(closed))})",
        len(closed) >= 100 and refused * 1000 >= len(closed) * 999,
    )
    broken = [s for s in load.samples() if s.status not in (200, 429)]
    result.check(
        "no 5xx or transport error at any time",
        f"{len(broken)}" + (f": {failures_text(broken)}" if broken else ""),
        not broken,
    )
    result.details.update(
        modes={p: lim.failure_mode for p, lim in limits.items()},
        statuses_after={
            p: dict(Counter(f"{s.status}[{s.flags}]" for s in after if s.path == p)) for p in limits
        },
    )


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "kill-replica",
            "kill-replica.yaml",
            "one of 3 replicas SIGKILLed under load (and kept dead)",
            kill_replica,
        ),
        Scenario(
            "slow-replica",
            "slow-replica.yaml",
            "one of 3 replicas 100 ms slow, PEAK_EWMA",
            slow_replica,
        ),
        Scenario(
            "dependency-down",
            "dependency-down.yaml",
            "every replica of a dependency killed; route fallback",
            dependency_down,
        ),
        Scenario(
            "redis-down",
            "redis-down.yaml",
            "Redis killed under a Global RateLimitPolicy (FailOpen and FailClosed)",
            redis_down,
            needs_redis=True,
        ),
    )
}


def run(name: str, work: Path) -> Result:
    """Run one scenario in `work` (a fresh directory); never raises for a scenario's failure."""
    scenario = SCENARIOS[name]
    result = Result(name)
    started = time.monotonic()
    redis: RedisServer | None = None
    mesh: Mesh | None = None
    try:
        replace = {}
        if scenario.needs_redis:
            redis = RedisServer.start(work)
            replace["127.0.0.1:6379"] = redis.address
        mesh = Mesh(work, scenario.yaml, replace)
        problem = validate(mesh.file)
        if problem is not None:
            # The YAML is the product's: a field gossamer does not know is a missing feature.
            problem = problem.replace(str(work) + "/", "examples/chaos/")
            missing = "unknown field" in problem
            result.error = f"not yet: {problem}" if missing else f"gossamer validate: {problem}"
            return result
        mesh.up()
        scenario.body(mesh, result, {"redis": redis})
    except NotYet as exc:
        result.error = f"not yet: {exc}"
    except (ChaosError, RedisError, TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a harness bug must still leave a row and stop the mesh
        result.error = f"harness error: {exc!r}"
        result.details["traceback"] = traceback.format_exc()
    finally:
        if mesh is not None:
            if not result.passed:
                result.details["logs"] = mesh.logs_tail(8)
            mesh.down()
        if redis is not None:
            redis.stop()
        result.seconds = time.monotonic() - started
    if result.seconds > TIME_LIMIT and not result.error:
        result.error = f"took {result.seconds:.0f} s, over the scenario limit of {TIME_LIMIT:g} s"
    return result


__all__ = ["EXAMPLES", "SCENARIOS", "Result", "Scenario", "run"]
