"""The control plane's observability API: `GET /v1/stats` (the rolling window), `GET /metrics`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast, get_args

from fastapi import APIRouter
from fastapi.responses import Response

from gossamer.config.models import parse_duration
from gossamer.control.telemetry_window import By
from gossamer.telemetry.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from gossamer.control.server import ControlPlane

DEFAULT_WINDOW = "1m"


def stats_router(cp: ControlPlane) -> APIRouter:
    """`/v1/stats` and `/metrics` bound to `cp` (operator tokens, any role, like other reads)."""
    from gossamer.control.api import ApiError

    router = APIRouter()
    window_data = cp.telemetry

    def bad(param: str, message: str) -> ApiError:
        return ApiError(
            400, "bad_request", f"{param}: {message}", [{"path": param, "message": message}]
        )

    @router.get("/v1/stats")
    async def stats(
        by: str = "service", window: str = DEFAULT_WINDOW, service: str | None = None
    ) -> dict[str, Any]:
        """Requests per second, success rate and p50/p95/p99 per service, route or edge over
        `window`, from the control plane's rolling window of the proxies' golden metrics."""
        kinds = get_args(By)
        if by not in kinds:
            raise bad("by", f"must be one of {', '.join(kinds)}, got {by!r}")
        try:
            seconds = parse_duration(window)
        except ValueError as exc:
            raise bad("window", str(exc)) from None
        if seconds < window_data.interval:
            raise bad(
                "window",
                f"{window} is shorter than the scrape interval ({window_data.interval:g}s); "
                f"use at least {2 * window_data.interval:g}s",
            )
        if seconds > window_data.retention:
            raise bad(
                "window",
                f"{window} is longer than the {window_data.retention:g}s the control plane keeps",
            )
        kind = cast(By, by)
        known = sorted({f"{r.service}.{r.namespace}" for r in cp.registry.app_endpoints()})
        rows = window_data.stats(kind, seconds, service=service or None, known_services=known)
        return {
            "by": by,
            "window": seconds,
            "interval": window_data.interval,
            "retention": window_data.retention,
            "items": [row.to_json(kind) for row in rows],
            "failing": [
                {"proxyId": pid, "error": error} for pid, error in window_data.failing().items()
            ],
        }

    @router.get("/metrics")
    async def metrics() -> Response:
        """The control plane's own metrics, Prometheus text format 0.0.4."""
        cp.metrics.store_revision.set(await cp.store.revision())
        return Response(cp.metrics.registry.render(), media_type=CONTENT_TYPE)

    return router
