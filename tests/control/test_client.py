"""The CLI's client turns every failure into one ApiError with the server's code and details."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gossamer.control.client import ApiError, ControlPlaneClient


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/v1/resources/"):
            body = json.dumps(
                {
                    "error": {
                        "code": "not_found",
                        "message": "Service/default/x not found",
                        "details": [],
                    }
                }
            ).encode()
            self.send_response(404)
        elif self.path == "/healthz":
            body = b"<html>bad gateway</html>"
            self.send_response(502)
        else:
            body = json.dumps({"items": [], "path": self.path}).encode()
            self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", "0"))
        sent = json.loads(self.rfile.read(length))
        details = [
            {"path": f"resources[{i}].kind", "message": "unknown kind"}
            for i, _ in enumerate(sent["resources"])
        ]
        body = json.dumps(
            {"error": {"code": "invalid", "message": "the request is invalid", "details": details}}
        ).encode()
        self.send_response(422)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def test_error_shape_is_parsed(server: str) -> None:
    client = ControlPlaneClient(server, timeout=5)
    with pytest.raises(ApiError) as caught:
        client.get("Service", "default", "x")
    assert (caught.value.status, caught.value.code) == (404, "not_found")
    assert str(caught.value) == "Service/default/x not found"


def test_details_are_listed(server: str) -> None:
    client = ControlPlaneClient(server, timeout=5)
    with pytest.raises(ApiError) as caught:
        client.apply([{"kind": "A"}, {"kind": "B"}], dry_run=True)
    err = caught.value
    assert err.status == 422
    assert len(err.details) == 2
    assert str(err).splitlines() == [
        "the request is invalid",
        "  resources[0].kind: unknown kind",
        "  resources[1].kind: unknown kind",
    ]


def test_non_json_error_and_query(server: str) -> None:
    client = ControlPlaneClient(server + "/", timeout=5)
    with pytest.raises(ApiError) as caught:
        client.healthz()
    assert (caught.value.status, caught.value.code) == (502, "internal")
    assert client.endpoints("pricing") == []
    assert client.list_resources(kind="Service")["path"] == "/v1/resources?kind=Service"


def test_unreachable() -> None:
    # A port that was just free: bind, note it, close.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = ControlPlaneClient(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(ApiError) as caught:
        client.proxies()
    assert (caught.value.status, caught.value.code) == (0, "unreachable")
    assert f"127.0.0.1:{port}" in caught.value.message
