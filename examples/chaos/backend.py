"""A chaos-scenario backend: says which replica answered, can be slow, and can stay dead.

Standard library only, like the shop's services. Every answer names the replica that served it
(the JSON body's `replica` and the `x-chaos-replica` header), so a load generator in front of the
mesh can count where traffic went.

Environment:
  DELAY_MS   sleep this long before answering (not /healthz): a slow replica.
  CHAOS_DIR  a directory the chaos harness watches over: when `<CHAOS_DIR>/<replica>.dead` exists,
             this replica exits at start, so after a SIGKILL the supervisor's restarts crash-loop
             like a broken deploy and the replica stays dead for the whole scenario.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SERVICE = os.environ.get("GOSSAMER_SERVICE", "backend")
REPLICA = os.environ.get("GOSSAMER_PROXY_ID", SERVICE)
DELAY = float(os.environ.get("DELAY_MS", "0") or 0) / 1000.0
CHAOS_DIR = os.environ.get("CHAOS_DIR", "")


class Backend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"chaos-{SERVICE}"

    def setup(self) -> None:
        super().setup()
        # The head and the body go out in two writes: without this, Nagle's algorithm holds the
        # body until the sidecar's delayed ACK (40 ms a request).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path != "/healthz" and DELAY > 0:
            time.sleep(DELAY)
        self._send(200, {"service": SERVICE, "replica": REPLICA, "path": path})

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-chaos-replica", REPLICA)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # thousands of requests per scenario: the sidecars' metrics count them


def main() -> None:
    if CHAOS_DIR and (Path(CHAOS_DIR) / f"{REPLICA}.dead").exists():
        sys.exit(f"{REPLICA}: marked dead by the chaos harness ({CHAOS_DIR}); exiting")
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8080"))), Backend)
    server.daemon_threads = True
    print(f"{SERVICE} ({REPLICA}) listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
