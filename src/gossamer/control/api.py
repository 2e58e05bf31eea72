"""The control plane's HTTP API (FastAPI): operator resources, the registry, proxy distribution."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gossamer import __version__
from gossamer import snapshot as snap
from gossamer.config.errors import ConfigError, Problem, did_you_mean
from gossamer.config.models import KINDS
from gossamer.config.validate import validate_apply
from gossamer.control.api_ca import ca_router
from gossamer.control.api_stats import stats_router
from gossamer.control.api_tap import tap_router
from gossamer.control.distribute import UnknownProxyError
from gossamer.control.metrics import ApiRequestCounter
from gossamer.control.registry import Registration, RegistrationLimitError, SvidStatus
from gossamer.control.resources import (
    RESOURCES_PREFIX,
    apply_resources,
    load_resources,
    resource_key,
    service_users,
)
from gossamer.control.tls_peer import PEER_ERROR_KEY, PEER_KEY, PEER_SVID_KEY, LeafFacts
from gossamer.dashboard import mount_dashboard
from gossamer.security.ca import CaError, CsrError
from gossamer.security.spiffe import CONTROL_PLANE_NAMESPACE, SpiffeId, SpiffeIdError
from gossamer.security.tokens import Action, Role, TokenError, role_allows

if TYPE_CHECKING:
    from gossamer.control.server import ControlPlane

log = logging.getLogger("gossamer.control.api")

REQUEST_SOURCE = "request"
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    429: "too_many",
}

# Bounds on one request, so one client cannot stall the control plane (and with it every proxy's
# heartbeats): the body, the resources in one apply, and the problems listed in one error answer.
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_APPLY_RESOURCES = 5000
MAX_DETAILS = 100
_STOCK_PARSE_ERROR = "There was an error parsing the body"
# The latest time a certificate can name (9999-12-31T23:59:59Z, X.509's GeneralizedTime limit):
# a reported time past it, or nan/inf, would break every reader that turns it into a date.
MAX_UNIX_TIME = 253402300799.0
# A bootstrap token is a bearer secret for a first SVID: it lives minutes, an hour at most.
MAX_BOOTSTRAP_TTL = 3600.0


class ApiError(Exception):
    """An error answered in the API's one error shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Sequence[dict[str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = list(details)


def error_body(code: str, message: str, details: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": cap_details(details)}}


def cap_details(
    details: Sequence[dict[str, str]], limit: int = MAX_DETAILS
) -> list[dict[str, str]]:
    """At most `limit` details, then one "... and N more problems" entry."""
    if len(details) <= limit:
        return list(details)
    rest = len(details) - limit
    more = "problem" if rest == 1 else "problems"
    return [*details[:limit], {"path": "", "message": f"... and {rest} more {more}"}]


def _too_large_message(limit: int) -> str:
    mib = limit / (1024 * 1024)
    size = f"{mib:g} MiB" if mib >= 1 else f"{limit} bytes"
    return f"request body is larger than the limit of {size}"


def _error_response(
    status: int, code: str, message: str, details: Sequence[dict[str, str]] = ()
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status)


def invalid(problems: Sequence[Problem], what: str = "the request") -> ApiError:
    first = problems[0]
    where = f"{first.path}: " if first.path else ""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ApiError(
        422,
        "invalid",
        f"{what} is invalid: {where}{first.message}{more}",
        [{"path": p.path, "message": p.message} for p in problems],
    )


def _not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def _unknown_proxy(proxy_id: str) -> ApiError:
    return _not_found(f"proxy {proxy_id!r} is not registered; register it first")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        hint = did_you_mean(kind, KINDS) or f"; known kinds: {', '.join(KINDS)}"
        raise ApiError(400, "bad_request", f"unknown kind {kind!r}{hint}")


# --- request bodies -------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class ApplyRequest(_Body):
    model_config = ConfigDict(extra="forbid")
    resources: list[Any]


class RegisterRequest(_Body):
    service: str = Field(min_length=1)
    namespace: str = "default"
    subset: str | None = None
    labels: dict[str, str] = {}
    zone: str | None = None
    inbound: str
    outbound: str = ""
    admin: str = ""
    app_port: int = Field(0, ge=0, le=65535)
    ready: bool = False
    svid: SvidReport | None = None

    @field_validator("inbound")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"must be host:port, got {v!r}")
        return v


class SvidRequest(_Body):
    csr: str = Field(min_length=1, description="the PEM CSR asking for the caller's SPIFFE ID")
    token: str | None = Field(None, description="a bootstrap token bound to that SPIFFE ID")


class BootstrapTokenRequest(_Body):
    service_account: str = Field(min_length=1)
    namespace: str = "default"
    ttl: float = Field(
        600.0,
        gt=0,
        le=MAX_BOOTSTRAP_TTL,
        allow_inf_nan=False,
        description="seconds until the token expires (at most an hour)",
    )


class OperatorTokenRequest(_Body):
    role: Role
    description: str = Field("", max_length=200)


class SvidReport(_Body):
    """The SVID a proxy serves with (its heartbeat reports it)."""

    spiffe_id: str = Field(min_length=1, max_length=2048)
    serial: str = Field(min_length=1, max_length=64, description="hex")
    not_after: float = Field(
        ge=0, le=MAX_UNIX_TIME, allow_inf_nan=False, description="unix seconds"
    )
    signer: str = Field(
        "", max_length=128, description="SHA-256 fingerprint (hex) of the issuing CA certificate"
    )

    def status(self) -> SvidStatus:
        return SvidStatus(
            spiffe_id=self.spiffe_id,
            serial=self.serial,
            not_after=self.not_after,
            signer=self.signer,
        )


class HeartbeatRequest(_Body):
    ready: bool | None = None
    svid: SvidReport | None = None


class AckRequest(_Body):
    version: str
    status: Literal["ACK", "NACK"]
    error: str | None = None


# --- errors and logging as ASGI middleware --------------------------------------------------------


def _loggable(path: str) -> str:
    """The decoded path with control characters escaped: a `%0A` must not forge a log line."""
    if path.isprintable():
        return path
    return path.encode("unicode_escape").decode("ascii")


async def _send_error(
    send: Send, status: int, code: str, message: str, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Answer from ASGI middleware, before FastAPI, in the documented error shape."""
    body = json.dumps(error_body(code, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Guard:
    """Turns any exception into the error shape (no traceback to clients), bounds request bodies
    and logs writes."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        status = 500
        limit = self.max_body_bytes
        for name, value in scope.get("headers", ()):
            if name != b"content-length":
                continue
            # Refused before a byte of the body is read.
            if not value.isdigit():
                await _send_error(send, 400, "bad_request", "Content-Length is not a number")
                return
            if int(value) > limit:
                await _send_error(send, 413, "too_large", _too_large_message(limit))
                log.info("%s %s %d", scope["method"], _loggable(scope["path"]), 413)
                return
        received = 0

        async def bounded() -> Message:
            # A body without a Content-Length (chunked) is counted as it arrives.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, _too_large_message(limit))
            return message

        async def tracked(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, bounded, tracked)
        except Exception:
            log.exception("error serving %s %s", scope["method"], _loggable(scope["path"]))
            if not started:
                await _send_error(
                    send, 500, "internal", "internal error in the control plane; see its log"
                )
                status = 500
        method = scope["method"]
        # Heartbeats and ACKs come every second from every proxy: too many to log.
        path: str = scope["path"]
        if method != "GET" and not path.endswith(("/heartbeat", "/ack")):
            log.info("%s %s %d", method, _loggable(path), status)


# The proxies' calls: authenticated by the proxy's SVID (a TLS client certificate), never a token.
_PROXY_PROTOCOL = re.compile(r"/v1/proxies/[^/]+(/(register|heartbeat|snapshot|ack))?")
# Public: the trust bundle, and SVID issuance (which checks its own bootstrap token).
_PUBLIC = frozenset({("GET", "/v1/ca/bundle"), ("POST", "/v1/svid")})
# The dashboard's static files hold no data (the page calls the API with the operator's token).
DASHBOARD_PREFIX = "/dashboard"
_NEEDS = {"read": "any role", "write": "the editor or admin role", "admin": "the admin role"}


def required_action(method: str, path: str) -> Action | None:
    """What an operator's role must allow for this call on the HTTPS listener (None: public)."""
    if (method, path) in _PUBLIC:
        return None
    if method in ("GET", "HEAD") and (
        path == DASHBOARD_PREFIX or path.startswith(DASHBOARD_PREFIX + "/")
    ):
        return None
    if path == "/v1/tokens/bootstrap":
        return "write"
    if path == "/v1/tokens" or path.startswith("/v1/tokens/"):
        return "admin"
    if path == "/v1/ca/rotate":
        return "admin"
    return "read" if method in ("GET", "HEAD") else "write"


@dataclass(frozen=True, slots=True)
class _Refusal:
    status: int
    code: str
    message: str


def peer_refusal(scope: Scope, what: str) -> str:
    """Why a call that needs a client SVID has none: no certificate, or a refused one."""
    error = scope.get(PEER_ERROR_KEY)
    if error:
        return f"{what} needs a valid SVID, and this client's certificate is refused: {error}"
    return (
        f"{what} needs the proxy's SVID as a TLS client certificate (mTLS); "
        "bearer tokens are not accepted for it"
    )


class _Auth:
    """Proxy calls: a verified client SVID (the handlers check which one). Everything else but
    the public calls: `Authorization: Bearer <operator token>` checked against the role."""

    def __init__(self, app: ASGIApp, cp: ControlPlane) -> None:
        self.app = app
        self.cp = cp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._check(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        headers = [(b"www-authenticate", b"Bearer")] if refusal.status == 401 else []
        await _send_error(send, refusal.status, refusal.code, refusal.message, headers)

    def _check(self, scope: Scope) -> _Refusal | None:
        method: str = scope["method"]
        path: str = scope["path"]
        proxy_call = _PROXY_PROTOCOL.fullmatch(path)
        if proxy_call:
            if scope.get(PEER_KEY):
                return None
            # Operators may read the snapshot built for a proxy (`gossamer` shows it) and remove
            # a registration (a squatted or stale proxy id, with the write role); every other
            # proxy call is the proxy's own.
            operator_call = _bearer(scope) is not None and (
                (method == "GET" and path.endswith("/snapshot"))
                or (method == "DELETE" and proxy_call.group(1) is None)
            )
            if not operator_call:
                return _Refusal(401, "unauthenticated", peer_refusal(scope, f"{method} {path}"))
        needed = required_action(method, path)
        if needed is None:
            return None
        token = _bearer(scope)
        if token is None:
            return _Refusal(
                401, "unauthenticated", "this call needs an Authorization: Bearer <token> header"
            )
        try:
            operator = self.cp.tokens.tokens.authenticate(token)
        except TokenError as exc:
            return _Refusal(401, "unauthenticated", str(exc))
        if not role_allows(operator.role, needed):
            return _Refusal(
                403,
                "forbidden",
                f"token {operator.id} has the {operator.role} role; {method} {path} needs "
                f"{_NEEDS[needed]}",
            )
        scope.setdefault("state", {})["operator"] = operator
        return None


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            text = bytes(value).decode("latin-1")
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


def _loc_path(loc: Sequence[int | str]) -> str:
    where, *rest = loc if loc else ("body",)
    path = str(where) if where != "body" else ""
    for part in rest:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path or "body"


def _validation_response(exc: RequestValidationError) -> JSONResponse:
    details: list[dict[str, str]] = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            loc = tuple(err.get("loc", ()))
            reason = str((err.get("ctx") or {}).get("error", "JSON decode error"))
            where = f" at character {loc[1]}" if len(loc) > 1 else ""
            message = f"request body is not valid JSON: {reason}{where}"
            return _error_response(
                400, "bad_request", message, [{"path": "body", "message": message}]
            )
        message = str(err.get("msg", "invalid"))
        if tuple(err.get("loc", ())) == ("body",) and err.get("type") in (
            "model_attributes_type",
            "dict_type",
        ):
            message = "the request body must be a JSON object (Content-Type: application/json)"
        details.append({"path": _loc_path(err.get("loc", ())), "message": message})
    first = details[0] if details else {"path": "body", "message": "invalid request"}
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return _error_response(
        422, "invalid", f"invalid request: {first['path']}: {first['message']}{more}", details
    )


# --- the app --------------------------------------------------------------------------------------


def create_app(
    cp: ControlPlane,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    max_apply_resources: int = MAX_APPLY_RESOURCES,
) -> FastAPI:
    """The API bound to one running control plane.

    Operators authenticate with bearer tokens; the proxies' calls with their client SVID, which
    `control/tls_peer.py` puts in the scope (served by `server.api_config`).

    Args:
        max_body_bytes: larger request bodies get 413 `too_large`.
        max_apply_resources: an apply with more resources gets 422 `invalid`.
    """
    app = FastAPI(
        title="Gossamer control plane",
        version=__version__,
        description="Resources in, one Snapshot per proxy out. Errors: "
        '`{"error": {"code", "message", "details": [{"path", "message"}]}}`.',
    )
    store = cp.store
    registry = cp.registry
    distributor = cp.distributor

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.code, exc.message, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        elif exc.status_code == 400 and exc.detail == _STOCK_PARSE_ERROR:
            # FastAPI's words for a body json could not parse without a JSONDecodeError.
            cause = exc.__cause__
            if isinstance(cause, RecursionError):
                message = "request body is not valid JSON: nested too deeply"
            elif isinstance(cause, UnicodeDecodeError):
                message = f"request body is not valid JSON: not UTF-8 ({cause.reason})"
            else:
                message = "request body is not valid JSON: it could not be parsed"
        else:
            message = str(exc.detail)
        code = _STATUS_CODES.get(
            exc.status_code, "bad_request" if exc.status_code < 500 else "internal"
        )
        return _error_response(exc.status_code, code, message)

    # Added first, so it runs inside the guard: refusals are logged (never the token) like the rest.
    app.add_middleware(_Auth, cp=cp)
    app.add_middleware(_Guard, max_body_bytes=max_body_bytes)
    # Outermost: counts every answer, refusals and the guard's included.
    app.add_middleware(ApiRequestCounter, metrics=cp.metrics, routes=lambda: app.routes)

    # --- operator API ---

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "revision": await store.revision()}

    @app.post("/v1/apply")
    async def apply(
        body: ApplyRequest, dry_run: bool = Query(False, alias="dryRun")
    ) -> dict[str, Any]:
        """Create or update resources, all or nothing; `dryRun=true` only validates."""
        count = len(body.resources)
        if count > max_apply_resources:
            message = (
                f"too many resources in one apply: {count}, the limit is {max_apply_resources}; "
                "apply them in smaller batches"
            )
            raise ApiError(422, "invalid", message, [{"path": "resources", "message": message}])
        async with cp.apply_lock:
            # Read under the lock so that two applies cannot both check against a stale set.
            current, _ = await load_resources(store)
            try:
                # Off the event loop: a big batch takes a while to validate, and heartbeats and
                # snapshot polls must still be answered meanwhile. The lock is held throughout,
                # so the apply stays all or nothing.
                loaded = await asyncio.to_thread(
                    validate_apply, body.resources, list(current.values()), REQUEST_SOURCE
                )
            except ConfigError as exc:
                raise invalid(exc.problems) from None
            _check_trust_domain([item.resource for item in loaded], cp.ca.trust_domain)
            result = await apply_resources(
                store, current, [item.resource for item in loaded], dry_run=dry_run
            )
        return {
            "results": [{"key": key, "action": action} for key, action in result.results],
            "revision": result.revision,
            "dryRun": dry_run,
        }

    @app.get("/v1/resources")
    async def list_resources(
        kind: str | None = None, namespace: str | None = None
    ) -> dict[str, Any]:
        prefix = RESOURCES_PREFIX
        if kind is not None:
            _check_kind(kind)
            prefix += f"{kind}/"
            if namespace is not None:
                prefix += f"{namespace}/"
        items, revision = await store.list(prefix)
        out = []
        for kv in items:
            _, ns, _ = kv.key.removeprefix(RESOURCES_PREFIX).split("/", 2)
            if namespace is None or ns == namespace:
                out.append(json.loads(kv.value))
        return {"items": out, "revision": revision}

    @app.get("/v1/resources/{kind}/{namespace}/{name}")
    async def get_resource(kind: str, namespace: str, name: str) -> dict[str, Any]:
        _check_kind(kind)
        kv = await store.get(resource_key(kind, namespace, name))
        if kv is None:
            raise _not_found(f"{kind}/{namespace}/{name} not found")
        out: dict[str, Any] = json.loads(kv.value)
        return out

    @app.delete("/v1/resources/{kind}/{namespace}/{name}")
    async def delete_resource(kind: str, namespace: str, name: str) -> dict[str, Any]:
        _check_kind(kind)
        async with cp.apply_lock:
            if kind == "Service":
                # Routes and policies may be deleted freely; a Service they still name may not,
                # or the store would hold what apply refuses (and proxies a route to nowhere).
                current, _ = await load_resources(store)
                users = service_users(current.values(), namespace, name)
                if users and f"{kind}/{namespace}/{name}" in current:
                    listed = ", ".join(dict.fromkeys(key.replace("/", " ", 1) for key, _ in users))
                    raise ApiError(
                        409,
                        "conflict",
                        f"Service {namespace}/{name} is used by {listed}; "
                        "delete or change those first",
                        [{"path": key, "message": f"{path} names it"} for key, path in users],
                    )
            revision = await store.delete(resource_key(kind, namespace, name))
        if revision is None:
            raise _not_found(f"{kind}/{namespace}/{name} not found")
        return {"key": f"{kind}/{namespace}/{name}", "revision": revision}

    @app.get("/v1/endpoints")
    async def endpoints(service: str | None = None) -> dict[str, Any]:
        return {"items": [endpoint_item(reg) for reg in registry.app_endpoints(service)]}

    @app.get("/v1/proxies")
    async def proxies() -> dict[str, Any]:
        items = []
        for reg, status, state in distributor.statuses():
            items.append(
                {
                    "proxyId": reg.proxy_id,
                    "service": reg.service,
                    "namespace": reg.namespace,
                    "subset": reg.subset,
                    "admin": reg.admin,
                    "sentVersion": status.sent_version,
                    "ackedVersion": status.acked_version,
                    "currentVersion": status.snapshot.version if status.snapshot else None,
                    "state": state,
                    "error": status.error,
                    "lastContact": status.last_contact,
                    "svid": svid_item(reg.svid),
                }
            )
        return {"items": items}

    # --- the mesh CA and tokens ---

    @app.get("/v1/ca/bundle")
    async def ca_bundle() -> Response:
        """The trust bundle (the mesh's root certificates) as PEM; public."""
        return Response(cp.ca.bundle_pem(), media_type="application/x-pem-file")

    @app.post("/v1/svid")
    async def issue_svid(body: SvidRequest, request: Request) -> dict[str, Any]:
        """Sign a workload's CSR: a first SVID for the identity a bootstrap token is bound to,
        or, without a token, a renewal of the identity of the client SVID (mTLS)."""
        try:
            if body.token:
                svid = cp.tokens.redeem_bootstrap_for(
                    body.token, lambda spiffe_id: cp.ca.sign_svid(body.csr, spiffe_id)
                )
            else:
                svid = cp.ca.sign_svid(body.csr, _renewing(request.scope))
        except TokenError as exc:
            raise ApiError(401, "unauthenticated", str(exc)) from None
        except CsrError as exc:
            message = str(exc)
            if message.startswith("CSR asks for "):
                raise ApiError(403, "forbidden", message) from None
            raise ApiError(
                422, "invalid", f"csr: {message}", [{"path": "csr", "message": message}]
            ) from None
        except CaError as exc:
            raise ApiError(500, "internal", f"the mesh CA cannot sign: {exc}") from None
        if body.token:
            await cp.tokens.flush()
        log.info(
            "%s an SVID for %s (serial %x)",
            "issued" if body.token else "renewed",
            svid.spiffe_id,
            svid.serial,
        )
        return {
            "spiffeId": str(svid.spiffe_id),
            "chain": (svid.cert_pem + svid.chain_pem).decode("ascii"),
            "notAfter": svid.not_after.isoformat(),
            # The CA that signed it, recorded by the signing call: a rotation's switch of
            # issuer may run while the token's use is written above.
            "signer": svid.signer,
            "bundle": cp.ca.bundle_pem().decode("ascii"),
        }

    def _renewing(scope: Scope) -> SpiffeId:
        peer = scope.get(PEER_KEY)
        if not peer:
            if scope.get(PEER_ERROR_KEY):
                raise ApiError(401, "unauthenticated", peer_refusal(scope, "renewing an SVID"))
            raise ApiError(
                401,
                "unauthenticated",
                "a bootstrap token (first SVID) or the current SVID as a TLS client certificate "
                "(renewal) is required",
            )
        spiffe_id = SpiffeId.parse(peer)
        if spiffe_id.namespace == CONTROL_PLANE_NAMESPACE:
            raise ApiError(
                403,
                "forbidden",
                f"{spiffe_id} is one of the mesh's own identities: it cannot be renewed here",
            )
        return spiffe_id

    @app.post("/v1/tokens/bootstrap")
    async def create_bootstrap_token(body: BootstrapTokenRequest) -> dict[str, Any]:
        """A single-use token that lets one proxy get its first SVID for one service account."""
        try:
            spiffe_id = SpiffeId.workload(cp.ca.trust_domain, body.namespace, body.service_account)
            if (spiffe_id.namespace, spiffe_id.service_account) != (
                body.namespace,
                body.service_account,
            ):
                raise SpiffeIdError(
                    "namespace and serviceAccount must each be one path segment "
                    "(letters, digits, '.', '-' and '_')"
                )
        except SpiffeIdError as exc:
            raise ApiError(
                422, "invalid", f"invalid request: {exc}", [{"path": "body", "message": str(exc)}]
            ) from None
        if body.namespace == CONTROL_PLANE_NAMESPACE:
            # Identities there are the mesh's own (the control plane's serving identity): an
            # SVID for one would let its holder impersonate the control plane to every proxy.
            raise ApiError(
                403,
                "forbidden",
                f"namespace {CONTROL_PLANE_NAMESPACE!r} is reserved for the mesh's own identities",
            )
        issued = cp.tokens.tokens.create_bootstrap(spiffe_id, ttl=body.ttl)
        await cp.tokens.flush()
        info = cp.tokens.info(issued.id)
        return {
            "id": issued.id,
            "token": issued.secret,
            "spiffeId": str(spiffe_id),
            "expires": info.expires if info else None,
        }

    @app.post("/v1/tokens")
    async def create_operator_token(body: OperatorTokenRequest) -> dict[str, Any]:
        """A new operator token; its secret is in this answer only."""
        issued = cp.tokens.tokens.create_operator(body.role, body.description)
        await cp.tokens.flush()
        info = cp.tokens.info(issued.id)
        return {
            "id": issued.id,
            "token": issued.secret,
            "role": body.role,
            "description": body.description,
            "created": info.created if info else None,
        }

    @app.get("/v1/tokens")
    async def list_tokens() -> dict[str, Any]:
        """The operator tokens (never their secrets or hashes)."""
        return {
            "items": [
                {
                    "id": t.id,
                    "role": t.role,
                    "description": t.description,
                    "created": t.created,
                    "expires": t.expires,
                }
                for t in cp.tokens.tokens.list("operator")
            ]
        }

    @app.delete("/v1/tokens/{token_id}")
    async def revoke_token(token_id: str) -> dict[str, Any]:
        info = cp.tokens.info(token_id)
        if info is None:
            raise _not_found(f"no token {token_id!r}")
        admins = [t for t in cp.tokens.tokens.list("operator") if t.role == "admin"]
        if info.role == "admin" and len(admins) == 1:
            raise ApiError(
                409,
                "conflict",
                f"token {token_id} is the last admin token; create another admin token first",
            )
        cp.tokens.tokens.revoke(token_id)
        await cp.tokens.flush()
        return {"id": token_id}

    # --- proxy <-> control plane ---

    def expected_identity(service: str, namespace: str) -> str:
        """The SPIFFE ID a proxy of `namespace/service` runs as: the Service's serviceAccount
        (default: the service's name; for a service not applied yet, its name)."""
        found = cp.cache.resources.get(f"Service/{namespace}/{service}")
        account = getattr(getattr(found, "spec", None), "service_account", None) or service
        try:
            return str(SpiffeId.workload(cp.ca.trust_domain, namespace, account))
        except SpiffeIdError as exc:
            raise ApiError(
                422, "invalid", f"service {namespace}/{service} cannot have an identity: {exc}"
            ) from None

    async def caller(request: Request, proxy_id: str) -> str | None:
        """The proxy's verified SPIFFE ID, checked against the one that registered `proxy_id`.

        The identity the service runs as NOW may take over a registration made by another one
        (the Service's serviceAccount changed since). None: an operator (only the snapshot read
        and the removal of a registration let one through `_Auth`).
        """
        peer: str | None = request.scope.get(PEER_KEY)
        if not peer:
            return None
        reg = registry.get(proxy_id)
        if reg is not None:
            owner = reg.identity or expected_identity(reg.service, reg.namespace)
            if peer != owner:
                expected = expected_identity(reg.service, reg.namespace)
                if owner == expected or peer != expected:
                    raise ApiError(
                        403,
                        "forbidden",
                        f"proxy {proxy_id!r} is registered by {owner}; this client is {peer} "
                        "(an operator can remove the registration: DELETE "
                        f"/v1/proxies/{proxy_id})",
                    )
                log.info(
                    "proxy %r: taken over by %s, the identity of service %s/%s now (was %s)",
                    proxy_id,
                    peer,
                    reg.namespace,
                    reg.service,
                    owner,
                )
                try:
                    await registry.register(msgspec.structs.replace(reg, identity=peer))
                except RegistrationLimitError as exc:
                    raise ApiError(429, "too_many", str(exc)) from None
        return peer

    def reported_svid(
        request: Request, report: SvidReport | None, peer: str | None
    ) -> SvidStatus | None:
        """The SVID the proxy connects with: read from its verified client certificate. The
        body's report is only used without one (an in-process test client, no TLS)."""
        facts = request.scope.get(PEER_SVID_KEY)
        if isinstance(facts, LeafFacts):
            return SvidStatus(
                spiffe_id=facts.spiffe_id,
                serial=facts.serial,
                not_after=facts.not_after,
                signer=facts.signer,
            )
        if report is None:
            return None
        if report.spiffe_id != peer:
            raise ApiError(
                403,
                "forbidden",
                f"the proxy reports an SVID for {report.spiffe_id} but connects as {peer}",
            )
        return report.status()

    @app.post("/v1/proxies/{proxy_id}/register")
    async def register(proxy_id: str, body: RegisterRequest, request: Request) -> dict[str, Any]:
        peer = await caller(request, proxy_id)
        expected = expected_identity(body.service, body.namespace)
        if peer != expected:
            raise ApiError(
                403,
                "forbidden",
                f"this client's SVID is {peer}, but a proxy of service {body.namespace}/"
                f"{body.service} must run as {expected}",
            )
        try:
            await registry.register(
                Registration(
                    proxy_id=proxy_id,
                    service=body.service,
                    namespace=body.namespace,
                    subset=body.subset,
                    labels=dict(body.labels),
                    zone=body.zone,
                    inbound=body.inbound,
                    outbound=body.outbound,
                    admin=body.admin,
                    app_port=body.app_port,
                    ready=body.ready,
                    svid=reported_svid(request, body.svid, peer),
                    identity=expected,
                )
            )
        except RegistrationLimitError as exc:
            raise ApiError(429, "too_many", str(exc)) from None
        distributor.touch(proxy_id)
        return {"heartbeatInterval": cp.heartbeat_interval}

    @app.post("/v1/proxies/{proxy_id}/heartbeat")
    async def heartbeat(
        proxy_id: str, request: Request, body: HeartbeatRequest | None = None
    ) -> dict[str, Any]:
        peer = await caller(request, proxy_id)
        ready = body.ready if body is not None else None
        svid = reported_svid(request, body.svid if body is not None else None, peer)
        if not await registry.heartbeat(proxy_id, ready, svid):
            raise _unknown_proxy(proxy_id)
        distributor.touch(proxy_id)
        return {"heartbeatInterval": cp.heartbeat_interval}

    @app.get("/v1/proxies/{proxy_id}/snapshot")
    async def get_snapshot(
        proxy_id: str,
        request: Request,
        version: str | None = None,
        wait: float | None = Query(None, ge=0, le=300, description="long-poll seconds"),
    ) -> Response:
        """The proxy's Snapshot when its version differs from `version`, else 304 after `wait`."""
        await caller(request, proxy_id)
        try:
            found = await distributor.poll(proxy_id, version or None, wait or 0.0)
        except UnknownProxyError:
            raise _unknown_proxy(proxy_id) from None
        if found is None:
            return Response(status_code=304)
        return Response(snap.encode(found), media_type="application/json")

    @app.post("/v1/proxies/{proxy_id}/ack")
    async def ack(proxy_id: str, body: AckRequest, request: Request) -> dict[str, Any]:
        await caller(request, proxy_id)
        try:
            distributor.ack(proxy_id, body.version, body.status == "ACK", body.error)
        except UnknownProxyError:
            raise _unknown_proxy(proxy_id) from None
        return {}

    @app.delete("/v1/proxies/{proxy_id}")
    async def deregister(proxy_id: str, request: Request) -> dict[str, Any]:
        """Remove a registration: the proxy's own (its SVID), or any (an operator's token with
        the write role, which `_Auth` checked: a squatted or stale id)."""
        peer = await caller(request, proxy_id)
        operator = getattr(request.state, "operator", None)
        if peer is None and operator is None:
            raise ApiError(401, "unauthenticated", peer_refusal(request.scope, "DELETE"))
        if not await registry.deregister(proxy_id):
            raise _unknown_proxy(proxy_id)
        if operator is not None and peer is None:
            log.info("token %s removed the registration of proxy %r", operator.id, proxy_id)
        return {"proxyId": proxy_id}

    app.include_router(ca_router(cp))
    app.include_router(stats_router(cp))
    app.include_router(tap_router(cp))
    mount_dashboard(app, DASHBOARD_PREFIX)
    return app


def svid_item(svid: SvidStatus | None) -> dict[str, Any] | None:
    if svid is None:
        return None
    return {
        "spiffeId": svid.spiffe_id,
        "serial": svid.serial,
        # A stored value from before reports were bounded must not break the whole listing.
        "notAfter": svid.not_after if math.isfinite(svid.not_after) else None,
        "signer": svid.signer,
    }


def _check_trust_domain(resources: Sequence[Any], trust_domain: str) -> None:
    """A Mesh must name the CA's trust domain: SVIDs and the translator's identities must agree."""
    for index, resource in enumerate(resources):
        if getattr(resource, "kind", None) != "Mesh":
            continue
        wanted = resource.spec.trust_domain
        if wanted != trust_domain:
            message = (
                f"Mesh {resource.metadata.name} names trust domain {wanted!r} but the mesh CA's "
                f"root is for {trust_domain!r}; apply it with trustDomain: {trust_domain} (or "
                "start a new control plane with --trust-domain)"
            )
            raise ApiError(
                422,
                "invalid",
                message,
                [{"path": f"resources[{index}].spec.trustDomain", "message": message}],
            )


def endpoint_item(reg: Registration) -> dict[str, Any]:
    return {
        "proxyId": reg.proxy_id,
        "service": reg.service,
        "namespace": reg.namespace,
        "subset": reg.subset,
        "labels": dict(reg.labels),
        "zone": reg.zone,
        "address": reg.inbound,
        "ready": reg.ready,
        "healthy": reg.healthy,
        "lastHeartbeat": reg.last_heartbeat,
    }
