"""A stand-in workload: listens on $PORT, records its environment, and can misbehave on request.

--exit N: print "boom" and exit with N at once. --grandchild: leave a child behind that ignores
SIGTERM (the runtime must kill the whole process group).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

name = os.environ.get("GOSSAMER_PROXY_ID", "app")


def event(text: str) -> None:
    path = os.environ.get("FAKE_EVENTS")
    if path:
        with open(path, "a") as f:
            f.write(f"{time.monotonic():.6f} {text}\n")


if "--exit" in sys.argv:
    print("boom: the app cannot start", flush=True)
    sys.exit(int(sys.argv[sys.argv.index("--exit") + 1]))
if "--grandchild" in sys.argv:
    subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "while True: time.sleep(1)",
        ]
    )


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *a: object) -> None:
        pass


def on_term(signum: int, frame: object) -> None:
    event(f"term {name}")
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
env = {
    k: v
    for k, v in os.environ.items()
    if k.startswith(("GOSSAMER_", "PORT", "HTTP", "http", "NO_", "no_", "EXTRA", "LEVEL"))
}
event(f"env {name} {json.dumps(env)}")
server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
event(f"start {name}")
print(f"{name} listening on {os.environ['PORT']}", flush=True)
server.serve_forever()
