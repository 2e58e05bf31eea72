"""One request through a real mesh (`gossamer up -d`) yields one connected trace.

Three services in a chain, front -> middle -> back, each an app that passes the trace on the way
real apps do: front copies only W3C `traceparent`, middle only B3 (`x-b3-*`), so the trace stays
whole only if the sidecars translate between the two. The Mesh samples 100% and exports over OTLP
gRPC to a real receiver in this process (tests/proxy/test_tracing_receiver.py).
"""

from __future__ import annotations

import http.client
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshlib import Mesh, split, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "proxy"))
from test_tracing_receiver import CLIENT, SERVER, Receiver, start_receiver

pytestmark = pytest.mark.integration

TRACE = "5af7183fb1d4cf5f5af7183fb1d4cf5f"
CALLER_SPAN = "7a085853722dc6d2"

APP = '''\
"""A service of the tracing test: answers GET /, first calling $NEXT (through the sidecar, by
HTTP_PROXY) with the trace fields named in $PROPAGATE copied from its own request."""
import json, os, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ["GOSSAMER_SERVICE"]
NEXT = os.environ.get("NEXT", "")
FIELDS = os.environ.get("PROPAGATE", "").split(",")


class App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        chain = [NAME]
        if NEXT and self.path != "/healthz":
            carry = {f: self.headers[f] for f in FIELDS if f and self.headers.get(f)}
            request = urllib.request.Request(NEXT, headers=carry)
            with urllib.request.urlopen(request, timeout=5) as resp:
                chain += json.loads(resp.read())["chain"]
        body = json.dumps({"chain": chain}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), App).serve_forever()
'''


def mesh_yaml(app: Path, collector: str) -> str:
    def service(name: str, extra: str, env: str) -> str:
        return f"""apiVersion: gossamer.dev/v1alpha1
kind: Service
metadata: {{name: {name}}}
spec:
  command: [{sys.executable}, {app}]
  readinessProbe: {{path: /healthz}}
  env: {env}
{extra}"""

    return "---\n".join(
        [
            f"""apiVersion: gossamer.dev/v1alpha1
kind: Mesh
metadata: {{name: traced}}
spec:
  tracing:
    samplingPercentage: 100
    otlp: {{protocol: grpc, endpoint: "{collector}", timeout: 5s}}
""",
            service("front", "  publish: 0\n", '{NEXT: "http://middle/", PROPAGATE: traceparent}'),
            service(
                "middle",
                "",
                '{NEXT: "http://back/", PROPAGATE: "x-b3-traceid,x-b3-spanid,x-b3-sampled"}',
            ),
            service("back", "", "{}"),
        ]
    )


@pytest.fixture(scope="module")
def traced_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, Receiver]]:
    root = tmp_path_factory.mktemp("tracing")
    app = root / "app.py"
    app.write_text(APP)
    receiver = start_receiver("grpc")
    file = root / "mesh.yaml"
    file.write_text(mesh_yaml(app, receiver.endpoint))
    m = Mesh(root, file)
    try:
        m.up()
        yield m, receiver
    finally:
        m.down()
        m.kill_all()
        receiver.close()


def test_one_request_yields_one_connected_trace_across_every_hop(
    traced_mesh: tuple[Mesh, Receiver],
) -> None:
    """front's published port -> front -> middle -> back: six spans (a CLIENT and a SERVER per
    hop) in the caller's trace, each the child of the one before, each from its own proxy."""
    mesh, receiver = traced_mesh
    published = mesh.status()["published"]["front"].removeprefix("http://")
    conn = http.client.HTTPConnection(*split(published), timeout=10)
    try:
        conn.request("GET", "/", headers={"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01"})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200, body
    assert b'"chain": ["front", "middle", "back"]' in body

    # Other traffic (readiness probes) makes traces of its own: wait for this trace's six.
    wait_for(
        "the request's six spans",
        lambda: len([s for s in receiver.spans if s.trace_id == TRACE]) >= 6,
        deadline=20.0,
    )
    spans = [s for s in receiver.spans if s.trace_id == TRACE]
    assert len(spans) == 6, spans
    by_parent = {s.parent_id: s for s in spans}
    assert len(by_parent) == 6, "every span has its own parent: one chain, no siblings"
    chain = []
    parent = CALLER_SPAN
    while parent in by_parent:
        span = by_parent[parent]
        chain.append((span.resource["service.name"], span.kind))
        parent = span.span_id
    assert chain == [
        ("front", CLIENT),  # the published front door's outbound
        ("front", SERVER),
        ("front", CLIENT),
        ("middle", SERVER),
        ("middle", CLIENT),
        ("back", SERVER),
    ]
    client_spans = [s for s in spans if s.kind == CLIENT]
    assert {s.attributes["gossamer.upstream_cluster"] for s in client_spans} == {
        "front.default",
        "middle.default",
        "back.default",
    }
    assert all(s.attributes["http.response.status_code"] == 200 for s in spans)
    # mTLS between sidecars: each CLIENT span names the identity its server proved.
    hop = next(
        s for s in client_spans if s.attributes["gossamer.upstream_cluster"] == "back.default"
    )
    assert hop.attributes["gossamer.destination_identity"].endswith("/sa/back")
    assert hop.attributes["gossamer.source_identity"].endswith("/sa/middle")
