"""The web dashboard: static files (topology, golden signals, routes, tap, proxies) the control
plane serves, each with a strict Content-Security-Policy and the other security headers."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent / "static"

# The page runs only its own files: no inline script or style, no eval (ECharts 6 needs neither: its
# one `new Function` parses a GeoJSON string only where JSON.parse is missing, and its tooltips are
# drawn on the canvas, `renderMode: "richText"`, instead of HTML with inline style attributes).
# `data:` images: ECharts' "save as image" and the page's empty favicon. API calls are same-origin.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    )
)
# The file names carry no version, so the browser revalidates each (ETag / Last-Modified make that
# a 304): an upgraded control plane never runs with a stale app.js from the cache.
STATIC_CACHE_CONTROL = "no-cache"
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",  # frame-ancestors, for browsers that predate it
}


def with_security_headers(response: Response, cache_control: str) -> Response:
    """`response` with the dashboard's security headers and `cache_control` set."""
    response.headers.update(SECURITY_HEADERS)
    response.headers["cache-control"] = cache_control
    return response


class DashboardFiles(StaticFiles):
    """StaticFiles whose every file (and 304) carries the dashboard's security headers."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        return with_security_headers(response, STATIC_CACHE_CONTROL)


def mount_dashboard(app: FastAPI, prefix: str = "/dashboard") -> None:
    """Serve the dashboard's files under `prefix`/ (index.html at `prefix`/) on `app`."""

    @app.get(prefix, include_in_schema=False)
    async def _dashboard_root() -> Response:
        # Relative URLs in index.html resolve against the directory, so it needs the slash.
        redirect = RedirectResponse(prefix + "/", status_code=307)
        return with_security_headers(redirect, "no-store")

    app.mount(prefix, DashboardFiles(directory=STATIC_DIR, html=True), name="dashboard")
