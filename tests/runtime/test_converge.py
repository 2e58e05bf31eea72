"""Convergence: every replica a ready, healthy endpoint and every proxy on the latest config."""

from __future__ import annotations

from gossamer.runtime.converge import converged


def endpoint(proxy_id: str, ready: bool = True, healthy: bool = True) -> dict[str, object]:
    return {"proxyId": proxy_id, "ready": ready, "healthy": healthy}


def proxy(proxy_id: str, state: str = "ACK", acked: str = "v2", current: str = "v2") -> dict:
    return {"proxyId": proxy_id, "state": state, "ackedVersion": acked, "currentVersion": current}


def test_converged_when_all_ready_and_acked() -> None:
    eps = [endpoint("web-0"), endpoint("web-publish")]
    assert converged(
        eps, [proxy("web-0"), proxy("web-publish")], ["web-0"], ["web-0", "web-publish"]
    )


def test_not_converged_while_a_replica_is_not_a_ready_endpoint() -> None:
    proxies = [proxy("web-0"), proxy("api-0")]
    ids = ["web-0", "api-0"]
    assert not converged([endpoint("web-0")], proxies, ids, ids)
    assert not converged([endpoint("web-0"), endpoint("api-0", ready=False)], proxies, ids, ids)
    assert not converged([endpoint("web-0"), endpoint("api-0", healthy=False)], proxies, ids, ids)


def test_not_converged_until_every_proxy_acked_the_current_version() -> None:
    eps = [endpoint("web-0")]
    assert not converged(eps, [proxy("web-0", acked="v1")], ["web-0"], ["web-0"])
    assert not converged(eps, [proxy("web-0", state="NACK")], ["web-0"], ["web-0"])
    assert not converged(eps, [], ["web-0"], ["web-0"])
