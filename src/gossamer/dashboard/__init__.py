"""The web dashboard: static files (topology, golden signals, proxies) the control plane serves."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import RedirectResponse
from starlette.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"


def mount_dashboard(app: FastAPI, prefix: str = "/dashboard") -> None:
    """Serve the dashboard's files under `prefix`/ (index.html at `prefix`/) on `app`."""

    @app.get(prefix, include_in_schema=False)
    async def _dashboard_root() -> RedirectResponse:
        # Relative URLs in index.html resolve against the directory, so it needs the slash.
        return RedirectResponse(prefix + "/", status_code=307)

    app.mount(prefix, StaticFiles(directory=STATIC_DIR, html=True), name="dashboard")
