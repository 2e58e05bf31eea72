"""Tests for the control-plane client against a fake control plane on 127.0.0.1."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from test_agent_fakes import FakeControlPlane, FakeDataPlane, make_snapshot

from gossamer import snapshot as snapshot_mod
from gossamer.proxy.agent import (
    Agent,
    AgentMetrics,
    ControlPlaneError,
    Registration,
    SnapshotHolder,
    backoff_delay,
    http_request,
    parse_base_url,
)
from gossamer.proxy.cache import SnapshotCache
from gossamer.telemetry.metrics import Registry

PROXY = "web-0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Rig:
    """An agent wired to a fake data plane and a cache, pointed at `url`."""

    def __init__(self, url: str, state_dir: Path) -> None:
        self.dataplane = FakeDataPlane()
        self.registry = Registry()
        self.cache = SnapshotCache(state_dir)
        self.holder = SnapshotHolder(self.dataplane.apply, AgentMetrics(self.registry), self.cache)
        self.ready = False
        self.agent = Agent(
            url,
            Registration(
                proxy_id=PROXY,
                service="web",
                inbound="127.0.0.1:1001",
                outbound="127.0.0.1:1002",
                admin="127.0.0.1:1003",
                app_port=8080,
                subset="v1",
                labels={"team": "a"},
            ),
            self.holder,
            is_ready=lambda: self.ready,
            poll_wait=1.0,
            request_timeout=1.0,
            backoff_cap=0.1,
            rand=random.Random(7),
        )


@pytest.fixture
async def cp() -> AsyncIterator[FakeControlPlane]:
    plane = FakeControlPlane()
    await plane.start()
    yield plane
    if plane.server is not None:
        await plane.stop()


@pytest.fixture
async def rig(cp: FakeControlPlane, tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(cp.url, tmp_path)
    r.agent.start()
    yield r
    await r.agent.stop(deregister=False)


async def test_registers_with_bound_addresses(cp: FakeControlPlane, rig: Rig) -> None:
    """The register body carries the documented camelCase fields and the bound addresses."""
    await cp.wait_for(lambda: bool(cp.registrations), "registration")
    proxy_id, body = cp.registrations[0]
    assert proxy_id == PROXY
    assert body == {
        "service": "web",
        "namespace": "default",
        "subset": "v1",
        "labels": {"team": "a"},
        "zone": None,
        "inbound": "127.0.0.1:1001",
        "outbound": "127.0.0.1:1002",
        "admin": "127.0.0.1:1003",
        "appPort": 8080,
        "ready": False,
    }


async def test_snapshot_applied_acked_and_cached(cp: FakeControlPlane, rig: Rig) -> None:
    """A new snapshot is applied once, ACKed with its version, and written to the cache."""
    s1 = make_snapshot(PROXY)
    await cp.set_snapshot(snapshot_mod.encode(s1), s1.version)
    await cp.wait_for(lambda: any(a["version"] == s1.version for a in cp.acks), "ack s1")
    assert cp.acks[-1] == {"version": s1.version, "status": "ACK", "error": ""}
    assert rig.dataplane.applied == [s1]
    assert rig.holder.snapshot == s1
    assert rig.holder.source == "control-plane"
    assert rig.cache.load() == s1

    s2 = make_snapshot(PROXY, cluster="checkout.default")
    await cp.set_snapshot(snapshot_mod.encode(s2), s2.version)
    await cp.wait_for(lambda: any(a["version"] == s2.version for a in cp.acks), "ack s2")
    assert rig.dataplane.applied == [s1, s2]
    assert rig.cache.load() == s2
    # Once ACKed, the next long-poll names the version it runs, so the control plane can hold it.
    await cp.wait_for(lambda: cp.polls[-1] == s2.version, "poll with s2's version")
    metrics = rig.registry.render().decode()
    assert 'gossamer_proxy_snapshot_applies_total{result="ack"} 2' in metrics
    assert f'gossamer_proxy_snapshot_info{{version="{s2.version}",source="control-plane"}} 1' in (
        metrics
    )


async def test_bad_snapshot_is_nacked_and_old_one_kept(cp: FakeControlPlane, rig: Rig) -> None:
    """A snapshot the data plane refuses is NACKed with its reason; the old one keeps running."""
    good = make_snapshot(PROXY)
    await cp.set_snapshot(snapshot_mod.encode(good), good.version)
    await cp.wait_for(lambda: any(a["version"] == good.version for a in cp.acks), "ack good")

    bad = make_snapshot(PROXY, cluster="bad.default")
    await cp.set_snapshot(snapshot_mod.encode(bad), bad.version)
    await cp.wait_for(lambda: any(a["version"] == bad.version for a in cp.acks), "nack bad")
    nack = next(a for a in cp.acks if a["version"] == bad.version)
    assert nack == {
        "version": bad.version,
        "status": "NACK",
        "error": "cluster bad.default: load balancer cannot be built",
    }
    assert rig.holder.snapshot == good
    assert rig.dataplane.applied == [good]
    assert rig.cache.load() == good
    # It does not ask for the refused one again and again: it polls with the refused version.
    await cp.wait_for(lambda: cp.polls[-1] == bad.version, "poll past the refused version")
    assert sum(1 for a in cp.acks if a["version"] == bad.version) == 1


async def test_undecodable_snapshot_is_nacked_with_path(cp: FakeControlPlane, rig: Rig) -> None:
    """A body that is not a valid Snapshot is NACKed with msgspec's message naming the field."""
    body = msgspec.json.encode({"version": "v-broken", "proxy": {"proxyId": 5, "service": "web"}})
    await cp.set_snapshot(body, "v-broken")
    await cp.wait_for(lambda: any(a["version"] == "v-broken" for a in cp.acks), "nack")
    nack = next(a for a in cp.acks if a["version"] == "v-broken")
    assert nack["status"] == "NACK"
    assert nack["error"].startswith("invalid snapshot: ")
    assert "$.proxy.proxyId" in nack["error"]
    assert rig.holder.snapshot is None
    assert rig.dataplane.applied == []


async def test_snapshot_for_another_proxy_is_nacked(cp: FakeControlPlane, rig: Rig) -> None:
    """A snapshot built for a different proxy id is refused."""
    other = make_snapshot("someone-else")
    await cp.set_snapshot(snapshot_mod.encode(other), other.version)
    await cp.wait_for(lambda: any(a["version"] == other.version for a in cp.acks), "nack")
    assert cp.acks[-1]["status"] == "NACK"
    assert "someone-else" in cp.acks[-1]["error"]
    assert rig.dataplane.applied == []


async def test_readiness_changes_are_heartbeated(cp: FakeControlPlane, rig: Rig) -> None:
    """Heartbeats carry readiness; a change is sent at once."""
    await cp.wait_for(lambda: any(not b["ready"] for _, b in cp.heartbeats), "not-ready beat")
    rig.ready = True
    rig.agent.readiness_changed()
    await cp.wait_for(lambda: any(b["ready"] for _, b in cp.heartbeats), "ready beat")


async def test_forgotten_proxy_registers_again(cp: FakeControlPlane, rig: Rig) -> None:
    """A heartbeat answered 404 makes the proxy register again."""
    await cp.wait_for(lambda: len(cp.registrations) == 1 and bool(cp.heartbeats), "first beat")
    cp.forget()
    await cp.wait_for(lambda: len(cp.registrations) == 2, "second registration")
    beats = len(cp.heartbeats)
    # A heartbeat after the new registration: the agent has taken the registration in.
    await cp.wait_for(lambda: len(cp.heartbeats) > beats, "heartbeat after re-registering")
    assert rig.agent.session == 2
    assert rig.registry.get("gossamer_proxy_registrations_total") is not None
    assert "gossamer_proxy_registrations_total 2" in rig.registry.render().decode()


async def test_control_plane_restart(cp: FakeControlPlane, tmp_path: Path) -> None:
    """A control plane that goes away and comes back on the same port (with no memory) gets a
    registration again and an ACK for the version the proxy already runs, without a re-apply."""
    rig = Rig(cp.url, tmp_path)
    s1 = make_snapshot(PROXY)
    await cp.set_snapshot(snapshot_mod.encode(s1), s1.version)
    rig.agent.start()
    try:
        await cp.wait_for(lambda: bool(cp.acks), "first ack")
        port = cp.port
        await cp.stop()

        again = FakeControlPlane()
        await again.set_snapshot(snapshot_mod.encode(s1), s1.version)
        await again.start(port)
        try:
            await again.wait_for(lambda: bool(again.registrations), "re-registration")
            await again.wait_for(lambda: bool(again.acks), "ack after restart")
            assert again.acks[0] == {"version": s1.version, "status": "ACK", "error": ""}
            assert rig.dataplane.applied == [s1]
            assert rig.agent.connected
        finally:
            await rig.agent.stop(deregister=True)
            assert again.deregistered == [PROXY]
            await again.stop()
    finally:
        await rig.agent.stop(deregister=False)


async def test_unreachable_control_plane_never_crashes(tmp_path: Path) -> None:
    """With nothing listening, the loops keep retrying (with backoff) and report disconnected."""
    rig = Rig(f"http://127.0.0.1:{free_port()}", tmp_path)
    rig.agent.start()
    try:
        plane = FakeControlPlane()
        # Let it fail a few times, then bring a control plane up on that port: it must connect.
        await plane.start(parse_base_url(rig.agent.url)[1])
        try:
            await plane.wait_for(lambda: bool(plane.registrations), "late registration")
        finally:
            await rig.agent.stop(deregister=False)
            await plane.stop()
        assert all(not t.done() or t.cancelled() for t in rig.agent._tasks)
    finally:
        await rig.agent.stop(deregister=False)


async def test_http_request_errors_name_the_target() -> None:
    """Connect failures become ControlPlaneError naming host and port, never OSError."""
    port = free_port()
    with pytest.raises(ControlPlaneError, match=f"127.0.0.1:{port}"):
        await http_request("127.0.0.1", port, "GET", "/", time_limit=1.0)


def test_parse_base_url() -> None:
    """https:// URLs with a host; http:// only where plaintext is allowed (in-process fakes)."""
    assert parse_base_url("https://127.0.0.1:7000") == ("127.0.0.1", 7000, "")
    assert parse_base_url("https://cp/prefix/") == ("cp", 443, "/prefix")
    assert parse_base_url("http://cp/prefix/") == ("cp", 80, "/prefix")
    with pytest.raises(ValueError, match="must start with https://"):
        parse_base_url("http://cp", plaintext=False)
    with pytest.raises(ValueError, match="must start with https://"):
        parse_base_url("ftp://cp")
    with pytest.raises(ValueError, match="no host"):
        parse_base_url("https://:80")


def test_backoff_is_jittered_and_capped() -> None:
    """Delays grow exponentially, stay within [d/2, d], and never exceed the cap."""
    rand = random.Random(1)
    for attempt in range(30):
        d = min(2.0, 0.1 * 2**attempt)
        delay = backoff_delay(attempt, rand)
        assert d / 2 <= delay <= d <= 2.0
