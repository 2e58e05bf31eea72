"""What every shop service shares: a threaded HTTP server with JSON routes and a mesh-aware client.

Standard library only. Outgoing calls use urllib's default opener, which honours HTTP_PROXY: the
runtime points that at the replica's sidecar, so `get_json("http://pricing/price/1")` goes through
the mesh (routing, retries, load balancing) without the service knowing about it.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Handler = Callable[[re.Match[str]], "tuple[int, Any]"]
SERVICE = os.environ.get("GOSSAMER_SERVICE", "shop")
REPLICA = os.environ.get("GOSSAMER_PROXY_ID", SERVICE)


class CallError(Exception):
    """A call to another service failed; the message says which and how."""


# The mesh traces every hop, but only the app knows which outgoing call belongs to which incoming
# request: like with Istio or Linkerd, an app copies these headers from the request it serves to
# the calls it makes, and the trace stays one.
PROPAGATED = (
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-request-id",
)
_incoming: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "incoming", default=None
)


def get_json(url: str, timeout: float = 3.0) -> tuple[Any, dict[str, str]]:
    """GET `url` (with the trace headers of the request being served) and return its JSON body
    and response headers."""
    try:
        request = urllib.request.Request(url, headers=_incoming.get() or {})
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.loads(resp.read()), dict(resp.headers.items())
    except urllib.error.HTTPError as exc:
        body = exc.read()[:200].decode("utf-8", "replace")
        flags = exc.headers.get("x-gossamer-flags") if exc.headers else None
        detail = f" [{flags}]" if flags else ""
        raise CallError(f"GET {url}: HTTP {exc.code}{detail} {body}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CallError(f"GET {url}: {exc}") from None


def serve(routes: dict[str, Handler], html: Callable[[], str] | None = None) -> None:
    """Serve GET routes (regex -> handler returning (status, JSON or str)) on $PORT until killed."""
    compiled = [(re.compile(f"^{pattern}$"), fn) for pattern, fn in routes.items()]

    class Shop(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = f"shop-{SERVICE}"
        # Head and body go out in two writes: without TCP_NODELAY the body waits ~40 ms for the
        # peer's delayed ACK, on every keep-alive request.
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            _incoming.set({k: v for k in PROPAGATED if (v := self.headers.get(k)) is not None})
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, {"status": "ok", "replica": REPLICA})
                return
            if path == "/" and html is not None:
                self._send(200, html())
                return
            for pattern, fn in compiled:
                match = pattern.match(path)
                if match:
                    try:
                        status, body = fn(match)
                    except Exception as exc:  # a demo service answers 500 rather than hang up
                        status, body = 500, {"error": f"{type(exc).__name__}: {exc}"}
                    self._send(status, body)
                    return
            self._send(404, {"error": f"no route for {path}"})

        def _send(self, status: int, body: Any) -> None:
            if isinstance(body, str):
                data, ctype = body.encode(), "text/html; charset=utf-8"
            else:
                data, ctype = json.dumps(body).encode(), "application/json"
            self.send_response(status)
            self.send_header("content-type", ctype)
            self.send_header("content-length", str(len(data)))
            self.send_header("x-shop-replica", REPLICA)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"{format % args}\n")

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            if not self.path.startswith("/healthz"):
                sys.stderr.write(f"{self.command} {self.path} {code}\n")

    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Shop)
    server.daemon_threads = True
    print(f"{SERVICE} ({REPLICA}) listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
