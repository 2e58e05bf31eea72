"""A stand-in for `gossamer control-plane` and `gossamer proxy` in the runtime's unit tests.

It speaks the runtime's side of the seams (flags, ready files, admin /ready and /quitquitquit) and
nothing else, and appends what happens to $FAKE_EVENTS so the tests can check the order.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def event(text: str) -> None:
    path = os.environ.get("FAKE_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{time.monotonic():.6f} {text}\n")


def write_ready(path: str, doc: dict[str, object]) -> None:
    tmp = path + ".tmp"
    Path(tmp).write_text(json.dumps(doc))
    os.replace(tmp, path)


def app_ready(port: int | None) -> bool:
    if port is None:
        return True
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def serve(handler_cls: type[BaseHTTPRequestHandler], host: str = "127.0.0.1", port: int = 0):
    server = ThreadingHTTPServer((host, port), handler_cls)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def addr(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    return f"{host}:{port}"


def main() -> int:
    cmd = sys.argv[1]
    p = argparse.ArgumentParser()
    p.add_argument("--ready-file", required=True)
    p.add_argument("--state-dir")
    if cmd == "control-plane":
        p.add_argument("--listen")
        p.add_argument("--trust-domain")
        p.add_argument("--svid-ttl")
        args = p.parse_args(sys.argv[2:])

        class Api(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a: object) -> None:
                pass

        host, _, port = (args.listen or "127.0.0.1:0").rpartition(":")
        name = "control-plane"
        try:
            server = serve(Api, host, int(port))
        except OSError as exc:
            print(f"{name}: cannot serve on {args.listen}: {exc.strerror}", flush=True)
            return 1
        ready = {
            "api": f"http://{addr(server)}",
            "caBundle": "/fake/ca-bundle.pem",
            "pid": os.getpid(),
        }
        event(f"args {name} {json.dumps(sys.argv[2:])}")
    else:
        for flag in ("--service", "--namespace", "--proxy-id", "--control-plane", "--subset"):
            p.add_argument(flag)
        p.add_argument("--ca-bundle")
        p.add_argument("--service-account")
        p.add_argument("--app-port", type=int)
        p.add_argument("--label", action="append", default=[])
        p.add_argument("--readiness-path")
        for flag in ("--inbound", "--outbound", "--admin"):
            p.add_argument(flag, default="127.0.0.1:0")
        p.add_argument("--default-host")
        p.add_argument("--access-log")  # the real proxy's; the fake logs no requests
        args = p.parse_args(sys.argv[2:])
        # Named like the runtime's log prefixes: "web-0.proxy" beside app "web-0".
        name = args.proxy_id + (".proxy" if args.app_port is not None else "")
        if args.proxy_id in os.environ.get("FAKE_FAIL", "").split(","):
            print(f"{name}: cannot start (told to fail)", flush=True)
            return 2
        quit_event = threading.Event()

        class Admin(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                ok = self.path == "/ready" and app_ready(args.app_port)
                self.send_response(200 if ok else 503)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                self.send_response(200 if self.path == "/quitquitquit" else 404)
                self.send_header("content-length", "0")
                self.end_headers()
                if self.path == "/quitquitquit":
                    event(f"quit {name}")
                    quit_event.set()

            def log_message(self, *a: object) -> None:
                pass

        def bind(address: str) -> ThreadingHTTPServer:
            host, _, port = address.rpartition(":")
            return serve(Admin, host, int(port))

        try:
            inbound = bind(args.inbound)  # stands in for the inbound listener: its address matters
            outbound = bind(args.outbound)
            admin = bind(args.admin)
        except OSError as exc:
            print(f"{name}: cannot bind: {exc.strerror}", flush=True)
            return 1
        ready = {
            "proxyId": name,
            "inbound": addr(inbound),
            "outbound": addr(outbound),
            "admin": addr(admin),
            "pid": os.getpid(),
        }
        event(f"args {name} {json.dumps(sys.argv[2:])}")
        event(f"token {name} {os.environ.get('GOSSAMER_BOOTSTRAP_TOKEN', '')}")
        threading.Thread(
            target=lambda: (quit_event.wait(), os.kill(os.getpid(), signal.SIGTERM)), daemon=True
        ).start()

    def on_term(signum: int, frame: object) -> None:
        event(f"term {name}")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    event(f"start {name}")
    print(f"{name} up", flush=True)
    write_ready(args.ready_file, ready)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
