"""A small synchronous client of the control plane's operator API, for the CLI (stdlib only)."""

from __future__ import annotations

import json
import os
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_TOKEN = "GOSSAMER_TOKEN"
ENV_CA_BUNDLE = "GOSSAMER_CA_BUNDLE"
# In the control plane's state dir (written by it; see control/ca_service.py, operators.py).
CA_BUNDLE_FILE = "ca-bundle.pem"
ADMIN_TOKEN_FILE = "admin.token"


@dataclass(frozen=True, slots=True)
class Credentials:
    """How to call the operator API: a bearer token and the CA bundle that verifies its HTTPS."""

    token: str | None = None
    ca_bundle: Path | None = None

    @classmethod
    def from_state_dir(cls, control_plane_dir: Path) -> Credentials:
        """The admin token and bundle a control plane wrote to its state dir (when present)."""
        token_file = control_plane_dir / ADMIN_TOKEN_FILE
        bundle = control_plane_dir / CA_BUNDLE_FILE
        try:
            token: str | None = token_file.read_text().strip() or None
        except OSError:
            token = None
        return cls(token, bundle if bundle.is_file() else None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """$GOSSAMER_TOKEN and $GOSSAMER_CA_BUNDLE."""
        env = os.environ if environ is None else environ
        bundle = env.get(ENV_CA_BUNDLE)
        return cls(env.get(ENV_TOKEN) or None, Path(bundle) if bundle else None)

    def __repr__(self) -> str:
        shown = "<hidden>" if self.token else None
        return f"Credentials(token={shown}, ca_bundle={self.ca_bundle!r})"


class ApiError(Exception):
    """The control plane answered with an error, or could not be reached (`status` 0).

    `details` holds the per-field problems: dicts with "path" and "message".
    """

    def __init__(
        self, status: int, code: str, message: str, details: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details: list[dict[str, Any]] = [dict(d) for d in details]

    def __str__(self) -> str:
        lines = [self.message]
        lines.extend(
            f"  {d.get('path')}: {d.get('message')}" if d.get("path") else f"  {d.get('message')}"
            for d in self.details
            if len(self.details) > 1 or str(d.get("message")) not in self.message
        )
        return "\n".join(lines)


class ControlPlaneClient:
    """Calls of the operator API; every method raises `ApiError` on failure."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        credentials: Credentials | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        creds = credentials or Credentials()
        self._token = creds.token
        self.ca_bundle = creds.ca_bundle
        context = None
        if self.base_url.startswith("https:"):
            try:
                # The mesh's own CA only, when given: never the system store for a mesh's API.
                cafile = str(creds.ca_bundle) if creds.ca_bundle else None
                context = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as exc:
                raise ApiError(
                    0, "bad_ca_bundle", f"cannot load the CA bundle {creds.ca_bundle}: {exc}"
                ) from None
        # The control plane is on loopback: never send its API calls through an HTTP_PROXY
        # (which inside a mesh workload points at the sidecar).
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | None] | None = None,
        body: Any = None,
    ) -> Any:
        """Send one request; returns the decoded JSON answer (None for an empty one)."""
        url = self.base_url + path
        params = {k: v for k, v in (query or {}).items() if v is not None}
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("accept", "application/json")
        if self._token:
            req.add_header("authorization", f"Bearer {self._token}")
        if data is not None:
            req.add_header("content-type", "application/json")
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise _from_http_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            if isinstance(reason, ssl.SSLCertVerificationError):
                where = self.ca_bundle or "the system's CAs"
                raise ApiError(
                    0,
                    "untrusted",
                    f"the control plane at {self.base_url} has a certificate that {where} "
                    f"cannot verify ({reason.verify_message}); give the mesh's CA bundle with "
                    f"${ENV_CA_BUNDLE}",
                ) from None
            if isinstance(reason, socket.timeout | TimeoutError):
                reason = f"no answer within {self.timeout:g}s"
            raise ApiError(
                0, "unreachable", f"cannot reach the control plane at {self.base_url}: {reason}"
            ) from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ApiError(
                0, "bad_response", f"the control plane at {self.base_url} sent a non-JSON answer"
            ) from None

    # --- operator calls ---

    def healthz(self) -> dict[str, Any]:
        return _obj(self.request("GET", "/healthz"))

    def apply(
        self, resources: Sequence[Mapping[str, Any]], *, dry_run: bool = False
    ) -> dict[str, Any]:
        """Apply resources (all or nothing); returns {"results": [...], "revision": N}."""
        return _obj(
            self.request(
                "POST",
                "/v1/apply",
                query={"dryRun": "true" if dry_run else "false"},
                body={"resources": list(resources)},
            )
        )

    def list_resources(
        self, kind: str | None = None, namespace: str | None = None
    ) -> dict[str, Any]:
        return _obj(
            self.request("GET", "/v1/resources", query={"kind": kind, "namespace": namespace})
        )

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return _obj(self.request("GET", _resource_path(kind, namespace, name)))

    def delete(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return _obj(self.request("DELETE", _resource_path(kind, namespace, name)))

    def endpoints(self, service: str | None = None) -> list[dict[str, Any]]:
        return list(_obj(self.request("GET", "/v1/endpoints", query={"service": service}))["items"])

    def proxies(self) -> list[dict[str, Any]]:
        return list(_obj(self.request("GET", "/v1/proxies"))["items"])

    def proxy_snapshot(self, proxy_id: str) -> dict[str, Any]:
        """The Snapshot the control plane built for a proxy, as JSON."""
        path = f"/v1/proxies/{urllib.parse.quote(proxy_id, safe='')}/snapshot"
        return _obj(self.request("GET", path))

    # --- tokens and the CA ---

    def create_token(self, role: str, description: str = "") -> dict[str, Any]:
        """A new operator token: {id, token (shown once), role, description, created}."""
        return _obj(
            self.request("POST", "/v1/tokens", body={"role": role, "description": description})
        )

    def list_tokens(self) -> list[dict[str, Any]]:
        return list(_obj(self.request("GET", "/v1/tokens"))["items"])

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return _obj(self.request("DELETE", f"/v1/tokens/{urllib.parse.quote(token_id, safe='')}"))

    def create_bootstrap_token(
        self, service_account: str, namespace: str = "default", ttl: float | None = None
    ) -> dict[str, Any]:
        """A single-use token for a proxy's first SVID: {id, token, spiffeId, expires}.

        `ttl` (seconds): how long it stays usable; None leaves it to the control plane.
        """
        body: dict[str, Any] = {"serviceAccount": service_account, "namespace": namespace}
        if ttl is not None:
            body["ttl"] = ttl
        return _obj(self.request("POST", "/v1/tokens/bootstrap", body=body))

    def ca_status(self) -> dict[str, Any]:
        """`GET /v1/ca`: the CA certificates, the rotation, each proxy's SVID, the bundle."""
        return _obj(self.request("GET", "/v1/ca"))

    def rotate_ca(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Start a root rotation: `{}` for a new root, else cert, key (and chain) of your own CA.
        Returns {rotation, bundle, warnings}."""
        return _obj(self.request("POST", "/v1/ca/rotate", body=dict(body)))


def _resource_path(kind: str, namespace: str, name: str) -> str:
    parts = (urllib.parse.quote(p, safe="") for p in (kind, namespace, name))
    return "/v1/resources/" + "/".join(parts)


def _obj(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ApiError(0, "bad_response", "the control plane sent an unexpected answer")
    return value


def _from_http_error(exc: urllib.error.HTTPError) -> ApiError:
    try:
        raw = exc.read()
    except OSError:
        raw = b""
    try:
        error = json.loads(raw)["error"]
        return ApiError(
            exc.code,
            str(error.get("code", "internal")),
            str(error.get("message", exc.reason)),
            [d for d in error.get("details", []) if isinstance(d, dict)],
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return ApiError(
            exc.code,
            "internal" if exc.code >= 500 else "bad_request",
            f"HTTP {exc.code} {exc.reason}",
        )
