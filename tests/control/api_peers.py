"""Test helpers for the proxies' mTLS: an ASGI wrapper standing in for the TLS layer in the
in-process (ASGITransport) API tests, and a real HTTPS control plane on 127.0.0.1:0. No tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gossamer.control.server import ControlPlane, api_config
from gossamer.control.tls_peer import PEER_KEY
from gossamer.security.csr import generate_key, make_csr, private_key_pem
from gossamer.security.spiffe import SpiffeId

TD = "gossamer.local"
DEADLINE = 10.0
PEER_HEADER = b"x-test-peer"


def workload(account: str, namespace: str = "default") -> SpiffeId:
    return SpiffeId.workload(TD, namespace, account)


class ActAsProxy:
    """What `tls_peer` does after a real mTLS handshake, for ASGITransport tests: each proxy call
    carries the SVID its proxy should have (register: the account of the service in its body;
    later calls: the identity that registered it). The `x-test-peer` header overrides it
    (empty: no client certificate)."""

    def __init__(self, app: ASGIApp, cp: ControlPlane) -> None:
        self.app = app
        self.cp = cp

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/proxies/"):
            await self.app(scope, receive, send)
            return
        override = dict(scope["headers"]).get(PEER_HEADER)
        if override is not None:
            scope[PEER_KEY] = override.decode() or None
            await self.app(scope, receive, send)
            return
        proxy_id = scope["path"].split("/")[3]
        reg = self.cp.registry.get(proxy_id)
        if reg is not None and reg.identity:
            scope[PEER_KEY] = reg.identity
            await self.app(scope, receive, send)
            return
        body = b""
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            doc = json.loads(body) if body else {}
            service = doc.get("service") if isinstance(doc, dict) else None
            namespace = doc.get("namespace", "default") if isinstance(doc, dict) else "default"
        except (ValueError, RecursionError):
            service, namespace = None, "default"
        # A body without a usable service: a proxy with some SVID, so the body's own problem
        # is what the test sees.
        if not isinstance(service, str) or not isinstance(namespace, str):
            service, namespace = "a", "default"
        scope[PEER_KEY] = str(workload(service, namespace))

        async def replay() -> Message:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        await self.app(scope, replay, send)


@dataclass
class Svid:
    """A workload's SVID as files, for a TLS client."""

    spiffe_id: SpiffeId
    chain: Path
    key: Path
    answer: dict[str, Any]


@dataclass
class LiveControlPlane:
    cp: ControlPlane
    url: str
    state: Path
    server_context: ssl.SSLContext

    @property
    def admin(self) -> str:
        return self.cp.admin_token_file.read_text().strip()

    def context(self, svid: Svid | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.cp.ca.bundle_path))
        if svid is not None:
            ctx.load_cert_chain(svid.chain, svid.key)
        return ctx

    def client(self, svid: Svid | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, verify=self.context(svid), timeout=DEADLINE)

    async def bootstrap_token(
        self, account: str, namespace: str = "default", ttl: float = 600
    ) -> str:
        async with self.client() as c:
            resp = await c.post(
                "/v1/tokens/bootstrap",
                headers={"authorization": f"Bearer {self.admin}"},
                json={"serviceAccount": account, "namespace": namespace, "ttl": ttl},
            )
        assert resp.status_code == 200, resp.text
        token: str = resp.json()["token"]
        return token

    async def svid(self, account: str, where: Path, namespace: str = "default") -> Svid:
        """A first SVID for `account`, the way a proxy gets it (bootstrap token + CSR)."""
        spiffe_id = workload(account, namespace)
        token = await self.bootstrap_token(account, namespace)
        key = generate_key()
        async with self.client() as c:
            resp = await c.post(
                "/v1/svid", json={"csr": make_csr(key, spiffe_id).decode(), "token": token}
            )
        assert resp.status_code == 200, resp.text
        return write_svid_files(where, spiffe_id, resp.json()["chain"], key, resp.json())


def write_svid_files(
    where: Path, spiffe_id: SpiffeId, chain_pem: str, key: Any, answer: dict[str, Any]
) -> Svid:
    where.mkdir(parents=True, exist_ok=True)
    chain, key_file = where / "svid.pem", where / "svid-key.pem"
    chain.write_text(chain_pem)
    key_file.write_bytes(private_key_pem(key))
    key_file.chmod(0o600)
    return Svid(spiffe_id, chain, key_file, answer)


async def eventually(check: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not check():
        if loop.time() > end:
            raise AssertionError(f"{what} did not happen within {deadline}s")
        await asyncio.sleep(0.01)


class _QuietServer(uvicorn.Server):
    """uvicorn without its signal handlers (they would take the test runner's SIGINT)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@asynccontextmanager
async def live_control_plane(state: Path, **options: Any) -> AsyncIterator[LiveControlPlane]:
    """The real control plane: ControlPlane + uvicorn with the mTLS listener, on 127.0.0.1:0."""
    cp = await ControlPlane.open(state, clock=time.time, debounce=0.01, **options)
    await cp.start()
    config = api_config(cp, "127.0.0.1", 0)
    assert config.ssl is not None
    server = _QuietServer(config)
    task = asyncio.create_task(server.serve())
    try:
        await eventually(lambda: server.started or task.done(), "the control plane listening")
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield LiveControlPlane(cp, f"https://127.0.0.1:{port}", state, config.ssl)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, DEADLINE)
        await cp.close()
