"""The control plane's own Prometheus metrics (`GET /metrics` on its API) and the API's counting."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gossamer.telemetry.metrics import Registry

if TYPE_CHECKING:
    from gossamer.control.distribute import Distributor

# Apply to ACK: the debounce, translation, the long poll's wake-up and the proxy's apply.
PUSH_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
UNMATCHED = "unmatched"


class ControlPlaneMetrics:
    """The families of docs/metrics.md "Control plane metrics", in one registry."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.proxies_connected = r.gauge(
            "gossamer_controlplane_proxies_connected",
            "Registered proxies in contact with the control plane (not STALE).",
        )
        self.push_latency = r.histogram(
            "gossamer_controlplane_push_latency_seconds",
            "From a proxy's new Snapshot version being built to the proxy's ACK or NACK of it.",
            buckets=PUSH_LATENCY_BUCKETS,
        )
        self.nacks = r.counter(
            "gossamer_controlplane_nacks_total", "Snapshots proxies rejected (NACKs received)."
        )
        self.store_revision = r.gauge(
            "gossamer_controlplane_store_revision", "The store's current revision."
        )
        self.api_requests = r.counter(
            "gossamer_controlplane_api_requests_total",
            "API requests answered, by method, route (the path template) and status code.",
            ("method", "route", "code"),
        )

    def watch(self, distributor: Distributor) -> None:
        """Count the distributor's answers, and its connected proxies at each scrape."""
        distributor.on_answer = self.answer
        self.registry.add_collector(
            lambda: self.proxies_connected.set(
                sum(state != "STALE" for _, _, state in distributor.statuses())
            )
        )

    def answer(self, ok: bool, latency: float | None) -> None:
        """A proxy answered a Snapshot: `latency` seconds after it was built (None: not the
        proxy's current version, or answered before)."""
        if not ok:
            self.nacks.inc()
        if latency is not None:
            self.push_latency.observe(max(latency, 0.0))


def route_template(routes: list[BaseRoute], scope: Scope) -> str:
    """The path template the request matched (`/v1/proxies/{proxy_id}/ack`), never the raw path:
    the label stays bounded however many ids there are."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    # Refused before routing (authentication, body limits): find the route it was meant for.
    probe = {**scope, "type": "http"}
    for candidate in routes:
        match, _ = candidate.matches(probe)
        if match is Match.FULL:
            found = getattr(candidate, "path", None)
            return found if isinstance(found, str) else UNMATCHED
    return UNMATCHED


class ApiRequestCounter:
    """ASGI middleware, outermost: counts every answered request by method, template and code."""

    def __init__(
        self, app: ASGIApp, metrics: ControlPlaneMetrics, routes: Callable[[], list[BaseRoute]]
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def tracked(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.api_requests.labels(
                method, route_template(self.routes(), scope), str(status or 500)
            ).inc()


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
