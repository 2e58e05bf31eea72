"""The mesh CA's operator API: its roots, rotation and import (`gossamer ca`, `gossamer check`)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from gossamer.control.ca_service import CaImportError, RotationConflictError
from gossamer.control.rotation import DEFAULT_PHASE_TIMEOUT

if TYPE_CHECKING:
    from gossamer.control.server import ControlPlane

log = logging.getLogger("gossamer.control.api")

# A PEM CA certificate, key or chain is a few KiB; this bounds what a request makes us parse.
MAX_PEM_CHARS = 64 * 1024


class RotateRequest(BaseModel):
    """`POST /v1/ca/rotate`: no body (or `{}`) rotates to a new generated root; `cert` and `key`
    (and `chain` for an intermediate) rotate to the operator's own CA."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    cert: str | None = Field(default=None, max_length=MAX_PEM_CHARS)
    key: str | None = Field(default=None, max_length=MAX_PEM_CHARS)
    chain: str | None = Field(default=None, max_length=4 * MAX_PEM_CHARS)
    phase_timeout: float = Field(default=DEFAULT_PHASE_TIMEOUT, gt=0, le=7 * 86400)


def ca_router(cp: ControlPlane) -> APIRouter:
    """The `/v1/ca/...` routes bound to `cp` (the bundle itself stays in api.py: it is public)."""
    from gossamer.control.api import ApiError

    router = APIRouter()

    @router.get("/v1/ca")
    async def ca_status() -> dict[str, Any]:
        """The CA certificates (expiry, which one issues), the rotation, each proxy's SVID."""
        return cp.ca.status(cp.registry, cp.distributor)

    @router.post("/v1/ca/rotate")
    async def ca_rotate(request: Request, body: RotateRequest | None = None) -> dict[str, Any]:
        """Start a root rotation (admin, which `_Auth` in api.py enforces): to a new generated
        root, or to an imported CA."""
        operator = getattr(request.state, "operator", None)
        body = body or RotateRequest()
        try:
            rotation, warnings = await cp.ca.start_rotation(
                body.cert, body.key, body.chain, phase_timeout=body.phase_timeout
            )
        except RotationConflictError as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        except CaImportError as exc:
            message = f"the CA cannot be used: {exc}"
            raise ApiError(
                422, "invalid", message, [{"path": _field_of(str(exc)), "message": str(exc)}]
            ) from None
        log.info("%s started root rotation %s", operator.id if operator else "?", rotation.id)
        return {
            "rotation": cp.ca.rotation_view(cp.registry, cp.distributor),
            "bundle": cp.ca.bundle_pem().decode("ascii"),
            "warnings": warnings,
        }

    return router


def _field_of(message: str) -> str:
    """Which field of the request a `CertificateAuthority.load` refusal is about, for details."""
    lowered = message.lower()
    if lowered.startswith(("key:", "ca key", "the ca private key", "the private key")):
        return "key"
    if "ca chain" in lowered or "the chain" in lowered or lowered.startswith("chain"):
        return "chain"
    return "cert"
