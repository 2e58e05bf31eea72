"""The mesh CA's operator API: its roots, rotation and import (`gossamer ca`, `gossamer check`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter

if TYPE_CHECKING:
    from gossamer.control.server import ControlPlane


def ca_router(cp: ControlPlane) -> APIRouter:
    """The `/v1/ca/...` routes bound to `cp` (the bundle itself stays in api.py: it is public)."""
    router = APIRouter()
    return router
