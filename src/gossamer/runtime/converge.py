"""Whether the mesh has converged: every replica a ready endpoint, every proxy on the latest config.

A sidecar's /ready says its app answers; the mesh can route to it only once the control plane has
that readiness in its registry and every proxy has ACKed the Snapshot that includes it. `gossamer
up` waits for this too, so that the first request to a published URL does not meet an empty
cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any


def converged(
    endpoints: list[dict[str, Any]],
    proxies: list[dict[str, Any]],
    replica_ids: Collection[str],
    proxy_ids: Collection[str],
) -> bool:
    """Every replica is a ready, healthy endpoint; every proxy ACKed the control plane's version."""
    ready = {e.get("proxyId") for e in endpoints if e.get("ready") and e.get("healthy")}
    if not set(replica_ids) <= ready:
        return False
    by_id = {p.get("proxyId"): p for p in proxies}
    for proxy_id in proxy_ids:
        p = by_id.get(proxy_id)
        if p is None or p.get("state") != "ACK":
            return False
        current = p.get("currentVersion")
        if current is not None and p.get("ackedVersion") != current:
            return False
    return True


def api_probe(
    api: str, credentials_dir: Path | None = None
) -> Callable[[Collection[str], Collection[str]], bool]:
    """A convergence check against the control plane at `api` (operator API).

    `credentials_dir`: the control plane's state dir, holding its admin token and CA bundle.
    """
    from gossamer.control.client import ApiError, ControlPlaneClient, Credentials

    creds = Credentials.from_state_dir(credentials_dir) if credentials_dir else None
    client = ControlPlaneClient(api, timeout=2.0, credentials=creds)

    def probe(replica_ids: Collection[str], proxy_ids: Collection[str]) -> bool:
        try:
            return converged(client.endpoints(), client.proxies(), replica_ids, proxy_ids)
        except ApiError:
            return False

    return probe
