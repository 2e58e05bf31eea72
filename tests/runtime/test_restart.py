"""Restarts with fake components: each kind comes back on its addresses, with backoff, counted."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from runtime_fakes import FAKE_APP

from gossamer.runtime.detach import processes_of_run
from gossamer.runtime.readiness import wait_for
from gossamer.runtime.state import pid_alive, read_json

MESH = f"""
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: web}}
spec:
  command: {FAKE_APP}
  publish: 0
"""


def until(what: str, probe: Callable[[], Any], seconds: float = 15.0) -> Any:
    return wait_for(
        lambda: probe() or None, deadline=time.monotonic() + seconds, what=what, interval=0.05
    )


def kill(pid: int) -> float:
    """SIGKILL `pid`; return when it was killed (monotonic, as the fakes' events)."""
    at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    until(f"pid {pid} to die", lambda: not pid_alive(pid))
    return at


def starts(events, name: str) -> list[float]:
    return [
        float(line.split(" ")[0])
        for line in _raw(events)
        if line.split(" ")[1:3] == ["start", name]
    ]


def last_env(events, name: str) -> dict[str, str]:
    envs = [line for line in _raw(events) if line.split(" ")[1:3] == ["env", name]]
    return json.loads(envs[-1].split(" ", 3)[3])


def _raw(events) -> list[str]:
    return events.path.read_text().splitlines() if events.path.exists() else []


def test_each_kind_restarts_on_its_addresses(make_supervisor, events) -> None:
    """Control plane, sidecar, workload and front door: same addresses and state, counted."""
    sup, out, _ = make_supervisor(MESH)
    sup.start()
    status = json.loads(sup.state.status_path.read_text())
    replica, front = status["services"]["web"][0], status["publishers"]["web"]
    assert status["controlPlaneRestarts"] == 0
    assert (replica["restarts"], replica["proxyRestarts"], front["restarts"]) == (0, 0, 0)

    # The control plane: same URL, same (kept) state dir.
    marker = sup.state.control_plane / "store.marker"
    marker.write_text("kept")
    killed_at = kill(status["controlPlanePid"])
    until("the control plane back", lambda: "control plane back at " + sup.api in out.getvalue())
    assert starts(events, "control-plane")[-1] - killed_at >= 0.2
    assert (
        "control plane exited unexpectedly (killed by SIGKILL); restarting in 0.2s (restart 1)"
        in (out.getvalue())
    )
    assert read_json(sup.state.ready_file("control-plane"))["api"] == sup.api
    assert marker.read_text() == "kept"
    now = json.loads(sup.state.status_path.read_text())
    assert now["controlPlanePid"] not in (None, status["controlPlanePid"])
    assert now["controlPlaneRestarts"] == 1
    assert now["controlPlane"] == status["controlPlane"]

    # The sidecar: the same three listeners.
    kill(replica["proxyPid"])
    until(
        "the sidecar back and ready",
        lambda: (s := sup.status()["services"]["web"][0])["proxyRestarts"] == 1 and s["ready"],
    )
    ready = read_json(sup.state.ready_file("web-0.proxy"))
    assert {k: ready[k] for k in ("inbound", "outbound", "admin")} == {
        k: replica[k] for k in ("inbound", "outbound", "admin")
    }

    # The workload: the same PORT and environment.
    env_before = last_env(events, "web-0")
    kill(replica["pid"])
    until("the workload back", lambda: sup.status()["services"]["web"][0]["restarts"] == 1)
    until("the workload listening", lambda: len(starts(events, "web-0")) == 2)
    assert last_env(events, "web-0") == env_before
    until("the replica ready", lambda: sup.status()["services"]["web"][0]["ready"])

    # The front door: the same published address.
    kill(front["pid"])
    until("the front door back", lambda: sup.status()["publishers"]["web"]["restarts"] == 1)
    until("the front door ready", lambda: sup.status()["publishers"]["web"]["ready"])
    assert sup.status()["published"] == status["published"]
    assert read_json(sup.state.ready_file("web-publish"))["outbound"] == front["outbound"]

    final = json.loads(sup.state.status_path.read_text())
    assert final["services"]["web"][0]["pid"] != replica["pid"]
    assert final["publishers"]["web"]["pid"] != front["pid"]
    run = sup.options.run_id
    sup.stop()
    assert processes_of_run(run) == []


def test_backoff_doubles_while_it_keeps_crashing(make_supervisor, events) -> None:
    """A second crash soon after a restart waits twice as long."""
    sup, out, _ = make_supervisor(MESH, restart_delay=0.3)
    sup.start()
    kill(sup.status()["services"]["web"][0]["pid"])
    until("the first restart", lambda: len(starts(events, "web-0")) == 2)
    killed_at = kill(sup.status()["services"]["web"][0]["pid"])
    until("the second restart", lambda: len(starts(events, "web-0")) == 3)
    assert starts(events, "web-0")[-1] - killed_at >= 0.6
    text = out.getvalue()
    assert (
        "workload web-0 exited unexpectedly (killed by SIGKILL); restarting in 0.3s (restart 1)"
        in text
    )
    assert "restarting in 0.6s (restart 2)" in text
    assert sup.status()["services"]["web"][0]["restarts"] == 2


def test_backoff_resets_after_a_long_run(make_supervisor, events) -> None:
    """A child that ran `restart_reset` seconds before dying starts over from the first delay."""
    sup, out, _ = make_supervisor(MESH, restart_delay=0.3, restart_reset=0.0)
    sup.start()
    for n in (2, 3):
        kill(sup.status()["services"]["web"][0]["pid"])
        until(f"restart {n - 1}", lambda n=n: len(starts(events, "web-0")) == n)
    assert "restarting in 0.3s (restart 2)" in out.getvalue()


def test_taken_port_is_reported_and_retried(make_supervisor, events) -> None:
    """If someone else took the workload's port, the log says so and it waits for it to be free."""
    sup, out, _ = make_supervisor(MESH, restart_delay=1.0)
    sup.start()
    replica = sup.status()["services"]["web"][0]
    host, _, port = replica["app"].rpartition(":")
    kill(replica["pid"])
    squatter = socket.socket()
    try:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((host, int(port)))
        squatter.listen()
        until("the report", lambda: "is taken by another process" in out.getvalue())
    finally:
        squatter.close()
    assert (
        f"cannot restart workload web-0: {replica['app']} is taken by another process and it "
        "must come back on the same address; retrying in 2s (restart 1)"
    ) in out.getvalue()
    assert len(starts(events, "web-0")) == 1
    until("the restart once free", lambda: len(starts(events, "web-0")) == 2)
    assert last_env(events, "web-0")["PORT"] == port


def test_nothing_restarts_during_shutdown(make_supervisor, events) -> None:
    """Children exiting because we stop them are not crashes; a pending restart is dropped."""
    sup, out, _ = make_supervisor(MESH, restart_delay=2.0)
    sup.start()
    kill(sup.status()["services"]["web"][0]["pid"])  # a restart is now pending
    until("the crash report", lambda: "restarting in 2s" in out.getvalue())
    run = sup.options.run_id
    sup.stop()
    status = sup.status()
    assert status["controlPlaneRestarts"] == 0
    assert status["services"]["web"][0]["restarts"] == 0
    assert status["services"]["web"][0]["proxyRestarts"] == 0
    assert status["publishers"]["web"]["restarts"] == 0
    assert out.getvalue().count("restarting in") == 1
    assert processes_of_run(run) == []
    for name in ("control-plane", "web-0.proxy", "web-publish"):
        assert len(starts(events, name)) == 1
    assert len(starts(events, "web-0")) == 1


IDENTITY_MESH = f"""
apiVersion: gossamer.dev/v1alpha1
kind: Mesh
metadata: {{name: m}}
spec: {{trustDomain: shop.test}}
---
apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: web}}
spec:
  command: {FAKE_APP}
  serviceAccount: webby
  publish: 0
"""


def tokens_of(events, name: str) -> list[str]:
    return [
        line.split(" ", 3)[3] if len(line.split(" ", 3)) > 3 else ""
        for line in _raw(events)
        if line.split(" ")[1:3] == ["token", name]
    ]


def test_every_proxy_start_gets_a_fresh_bootstrap_token(make_supervisor, events) -> None:
    """The Mesh's trust domain goes to the control plane; each sidecar and front door gets its
    own token (for its Service's account) and --ca-bundle, and a new token at every restart."""
    minted: list[tuple[str, str, str]] = []

    def mint(api: str, namespace: str, account: str) -> str:
        minted.append((api, namespace, account))
        return f"gsb_token{len(minted)}"

    sup, _, _ = make_supervisor(IDENTITY_MESH, mint=mint, restart_delay=0.05)
    sup.start()
    cp_args = events.data("args", "control-plane")
    assert cp_args[cp_args.index("--trust-domain") + 1] == "shop.test"
    assert minted == [(sup.api, "default", "webby"), (sup.api, "default", "webby")]
    assert tokens_of(events, "web-0.proxy") == ["gsb_token1"]
    assert tokens_of(events, "web-publish") == ["gsb_token2"]
    for name in ("web-0.proxy", "web-publish"):
        args = events.data("args", name)
        assert args[args.index("--ca-bundle") + 1] == "/fake/ca-bundle.pem"
        assert args[args.index("--service-account") + 1] == "webby"
        assert args[args.index("--control-plane") + 1] == sup.api
    assert sup.status()["controlPlaneInternal"] == sup.api

    kill(sup.status()["services"]["web"][0]["proxyPid"])
    until("the sidecar restarted", lambda: len(tokens_of(events, "web-0.proxy")) == 2)
    assert tokens_of(events, "web-0.proxy") == ["gsb_token1", "gsb_token3"]
    # Workloads never see a token.
    assert "GOSSAMER_BOOTSTRAP_TOKEN" not in last_env(events, "web-0")
