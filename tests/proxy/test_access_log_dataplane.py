"""The access log on real DataPlanes (in-process, uvloop, 127.0.0.1:0) and in `gossamer proxy`.

Sidecars with mTLS come from test_mtls_support.py (a real test CA); each writes its own access log
file, read after `drain` (which writes what is buffered and closes the file). Request lines and
connection lines share the file; `read_log` returns one kind.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_dataplane import (
    Backend,
    Client,
    Seen,
    cluster,
    dead_address,
    echo,
    ok,
    run,
    snapshot,
    start_dataplane,
    vhost,
    wait_until,
)
from test_mtls_support import (
    make_pki,
    open_tls,
    pricing_caller,
    run_tool,
    sidecar,
    spiffe,
    tls_client_context,
)

from gossamer import snapshot as snap
from gossamer.proxy.dataplane import DataPlane

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"traceparent: 00-{TRACE}-00f067aa0ba902b7-01\r\n".encode()


def read_log(path: Path, kind: str = "request") -> list[dict[str, Any]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if r["kind"] == kind]


async def pricing_sidecar(log_file: Path, endpoint: str, **settings: Any) -> tuple[DataPlane, str]:
    """A plaintext sidecar routing host `pricing` to `endpoint`, logging to `log_file`; returns it
    and its outbound address."""
    dp, _, out, _ = await start_dataplane(
        snapshot([vhost("pricing")], [cluster("pricing", [endpoint])]),
        access_log=str(log_file),
        **settings,
    )
    return dp, out


def test_outbound_and_inbound_lines_share_the_request_id_and_carry_mtls_identities(
    tmp_path: Path,
) -> None:
    """frontend -> mTLS -> pricing: the caller's line names the server's verified identity, the
    server's line the caller's; both carry the same requestId and traceId."""

    async def main() -> None:
        pki = make_pki(tmp_path / "pki")
        app = await Backend(echo).start()
        in_log, out_log = tmp_path / "pricing.access.log", tmp_path / "frontend.access.log"
        pricing, pricing_in, _, _ = await sidecar(
            pki, "pricing", "STRICT", app_port=app.port, access_log=str(in_log)
        )
        front, _, out, _ = await pricing_caller(pki, pricing_in, access_log=str(out_log))
        client = await Client.open(out)
        r = await client.request(b"/prices/1?x=%20y", b"pricing", b"POST", b"hello", TRACEPARENT)
        assert r.status == 200
        await front.drain(1.0)
        await pricing.drain(1.0)
        [outbound] = read_log(out_log)
        [inbound] = read_log(in_log)
        seen_rid = r.header(b"x-seen-rid")
        assert seen_rid is not None
        assert outbound["requestId"] == inbound["requestId"] == seen_rid.decode()
        assert outbound["traceId"] == inbound["traceId"] == TRACE
        assert outbound["direction"] == "outbound"
        assert outbound["sourceIdentity"] == spiffe("frontend")
        assert outbound["destinationIdentity"] == spiffe("pricing")
        assert outbound["upstreamCluster"] == "pricing.default"
        assert outbound["upstreamEndpoint"] == pricing_in
        assert inbound["direction"] == "inbound"
        assert inbound["sourceIdentity"] == spiffe("frontend")
        assert inbound["destinationIdentity"] == spiffe("pricing")
        assert inbound["upstreamEndpoint"] == app.address
        for line in (outbound, inbound):
            assert line["method"] == "POST"
            assert line["authority"] == "pricing"
            assert line["path"] == "/prices/1?x=%20y"
            assert line["protocol"] == "HTTP/1.1"
            assert line["status"] == 200
            assert line["flags"] is None
            assert line["attempts"] == 1
            assert line["bytesReceived"] == 5
            assert line["bytesSent"] == 5
            assert line["durationMs"] >= 0.0
            assert line["time"].endswith("Z")
        assert outbound["sourceAddress"].startswith("127.0.0.1:")
        assert outbound["durationMs"] >= inbound["durationMs"]
        # One connection line each: the app's connection to frontend's sidecar (closed by the
        # drain, the client still holding it) and frontend's mTLS connection into pricing.
        [out_conn] = read_log(out_log, "connection")
        [in_conn] = read_log(in_log, "connection")
        assert (out_conn["direction"], out_conn["mtls"], out_conn["end"]) == (
            "outbound",
            False,
            "draining",
        )
        assert out_conn["sourceAddress"] == outbound["sourceAddress"]
        assert (in_conn["direction"], in_conn["mtls"]) == ("inbound", True)
        assert in_conn["end"] in ("client-closed", "draining")  # whichever drain came first
        assert in_conn["sourceIdentity"] == spiffe("frontend")
        assert in_conn["destinationIdentity"] == spiffe("pricing")
        for line in (out_conn, in_conn):
            assert line["requests"] == 1
            # The head and the 5-byte body each way, counted on the wire (after TLS).
            assert line["bytesReceived"] > 5 + len("POST /prices/1?x=%20y HTTP/1.1\r\n")
            assert line["bytesSent"] > 5 + len("HTTP/1.1 200 OK\r\n")
            assert line["durationMs"] >= inbound["durationMs"]
            assert line["error"] is None

    run(main())


def test_local_responses_are_logged_with_their_flag(tmp_path: Path) -> None:
    async def main() -> None:
        log_file = tmp_path / "access.log"
        dp, out = await pricing_sidecar(log_file, dead_address())
        client = await Client.open(out)
        not_found = await client.request(b"/nowhere", b"unknown-host")
        assert not_found.status == 404
        assert (await client.request(b"/", b"pricing")).status == 503
        await dp.drain(1.0)
        no_route, refused = read_log(log_file)
        assert (no_route["status"], no_route["flags"]) == (404, "no-route")
        assert no_route["authority"] == "unknown-host"
        assert no_route["upstreamCluster"] is None
        assert no_route["attempts"] == 0
        assert no_route["bytesSent"] == len(not_found.body) > 0
        assert (refused["status"], refused["flags"]) == (503, "connect-failure")
        assert refused["upstreamCluster"] == "pricing.default"
        assert refused["attempts"] == 1
        assert refused["sourceIdentity"] is None  # no SVID: plaintext, static snapshot
        assert refused["destinationIdentity"] is None

    run(main())


def test_sampling_never_drops_errors_or_flagged_responses(tmp_path: Path) -> None:
    """At 1% sampling, every 5xx and every local response is still logged."""

    def handler(seen: Seen) -> bytes:
        if seen.url.startswith(b"/fail"):
            return b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
        return ok()

    async def main() -> None:
        app = await Backend(handler).start()
        log_file = tmp_path / "access.log"
        dp, out = await pricing_sidecar(log_file, app.address, access_log_sample=0.01)
        client = await Client.open(out)
        for i in range(200):
            r = await client.request(b"/ok", b"pricing")
            assert r.status == 200
            if i % 20 == 0:
                assert (await client.request(b"/fail/%d" % i, b"pricing")).status == 500
                assert (await client.request(b"/", b"nobody")).status == 404
        await dp.drain(1.0)
        records = read_log(log_file)
        failed = [r["path"] for r in records if r["status"] == 500]
        assert failed == [f"/fail/{i}" for i in range(0, 200, 20)]
        assert len([r for r in records if r["flags"] == "no-route"]) == 10
        assert len([r for r in records if r["status"] == 200]) < 20  # ~2 of 200 expected

    run(main())


def test_a_request_the_client_abandons_is_logged(tmp_path: Path) -> None:
    async def main() -> None:
        app = await Backend(lambda seen: None).start()  # never answers
        log_file = tmp_path / "access.log"
        dp, out = await pricing_sidecar(log_file, app.address)
        client = await Client.open(out)
        client.send(b"GET /slow HTTP/1.1\r\nhost: pricing\r\n\r\n")
        for _ in range(400):  # until the request reached the app (5 ms steps, 2 s at most)
            if app.seen:
                break
            await asyncio.sleep(0.005)
        assert app.seen
        # A reset, as from a killed client: a plain close would be a half-close, which still
        # waits for the response.
        sock = client.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        await wait_until(lambda: dp.open_connections() == 0)  # the proxy saw it go
        await dp.drain(1.0)
        [record] = read_log(log_file)
        assert (record["status"], record["flags"]) == (0, "client-disconnected")
        assert record["path"] == "/slow"
        assert record["upstreamEndpoint"] == app.address

    run(main())


def test_connection_lines_say_how_each_connection_ended(tmp_path: Path) -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        log_file = tmp_path / "access.log"
        dp, out = await pricing_sidecar(log_file, app.address, downstream_idle_timeout=0.2)
        closes = await Client.open(out)  # two requests, then closes between requests
        for _ in range(2):
            assert (await closes.request(b"/", b"pricing")).status == 200
        closes.close()
        asks = await Client.open(out)  # asks for `connection: close`
        r = await asks.request(b"/", b"pricing", headers=b"connection: close\r\n")
        assert r.status == 200
        assert await asks.at_eof()
        garbage = await Client.open(out)  # sends no HTTP: answered 400, closed
        garbage.send(b"HELLO\r\n\r\n")
        assert (await garbage.response()).status == 400
        assert await garbage.at_eof()
        idle = await Client.open(out)  # says nothing: cut at the idle timeout
        assert (await idle.request(b"/", b"pricing")).status == 200
        assert await idle.at_eof()
        await wait_until(lambda: dp.open_connections() == 0)
        await dp.drain(1.0)
        ends = sorted((c["end"], c["requests"]) for c in read_log(log_file, "connection"))
        assert ends == [
            ("bad-request", 0),
            ("client-closed", 2),
            ("connection-close", 1),
            ("idle-timeout", 1),
        ]
        assert len(read_log(log_file)) == 5  # the request lines are all there too

    run(main())


@pytest.mark.skipif(not shutil.which("curl"), reason="needs curl")
def test_connections_refused_before_any_request_are_logged_with_why(tmp_path: Path) -> None:
    """A STRICT listener: a client that leaves at once, curl in plaintext (mtls-required) and curl
    over TLS without a client certificate (the handshake fails) leave one connection line each,
    naming why."""

    async def main() -> None:
        pki = make_pki(tmp_path / "pki")
        app = await Backend(echo).start()
        log_file = tmp_path / "pricing.access.log"
        pricing, inbound, _, _ = await sidecar(
            pki, "pricing", "STRICT", app_port=app.port, access_log=str(log_file)
        )
        silent = await Client.open(inbound)  # connects and leaves without a byte
        silent.close()
        rc, out, err = await run_tool("curl", "-sS", "-i", f"http://{inbound}/")
        assert rc == 0, err
        assert out.startswith("HTTP/1.1 400")
        rc, _, _ = await run_tool("curl", "-sS", "-k", f"https://{inbound}/")
        assert rc != 0
        acceptor = pricing.inbound.acceptor
        assert acceptor is not None
        await wait_until(lambda: not acceptor.tasks)  # every connection looked at and handed on
        await pricing.drain(1.0)
        left, plain, tls = read_log(log_file, "connection")
        assert (plain["end"], plain["mtls"], plain["requests"]) == ("mtls-required", False, 0)
        assert plain["error"] == "plaintext on a STRICT mTLS listener"
        assert plain["bytesReceived"] > len("GET / HTTP/1.1\r\n")  # curl's head, read and dropped
        assert plain["bytesSent"] > len("HTTP/1.1 400 Bad Request\r\n")
        assert (tls["end"], tls["mtls"]) == ("tls-handshake-failed", True)
        assert tls["error"].startswith("no-client-cert: ")
        assert (left["end"], left["mtls"], left["error"]) == ("client-closed", False, None)
        for line in (plain, tls, left):
            assert line["sourceAddress"].startswith("127.0.0.1:")
            assert line["destinationIdentity"] == spiffe("pricing")
        assert read_log(log_file) == []  # no request reached the app
        assert app.seen == []

    run(main())


def test_the_drain_timeout_leaves_every_line_even_for_mtls_and_stuck_clients(
    tmp_path: Path,
) -> None:
    """At the drain timeout: an mTLS request still waiting is answered 503 `draining` and both its
    lines are written (TLS delivers connection_lost late); a client that stopped reading a big
    response (closed gently, never emptied) is cut, and logged, rather than left open."""

    big = b"x" * 3_000_000

    def handler(seen: Seen) -> bytes | None:
        if seen.url == b"/big":
            return ok(big)
        return None  # /hang: never answered

    async def main() -> None:
        pki = make_pki(tmp_path / "pki")
        app = await Backend(handler).start()
        log_file = tmp_path / "pricing.access.log"
        pricing, pricing_in, _, _ = await sidecar(
            pki, "pricing", "STRICT", app_port=app.port, access_log=str(log_file)
        )
        front, _, out, _ = await pricing_caller(pki, pricing_in)
        hang = await Client.open(out)
        hang.send(b"GET /hang HTTP/1.1\r\nhost: pricing\r\n\r\n")
        # A caller straight to pricing that asks for a big response and never reads it.
        stuck = await open_tls(pricing_in, tls_client_context(pki.svid("frontend"), pki.bundle_pem))
        stuck.writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.send(b"GET /big HTTP/1.1\r\nhost: pricing\r\nconnection: close\r\n\r\n")
        await wait_until(lambda: len(app.seen) == 2)
        await pricing.drain(0.3)
        assert pricing.open_connections() == 0
        requests = {r["path"]: r for r in read_log(log_file)}
        assert (requests["/hang"]["status"], requests["/hang"]["flags"]) == (503, "draining")
        connections = read_log(log_file, "connection")
        assert len(connections) == 2, connections  # frontend's and the stuck caller's
        assert {c["end"] for c in connections} == {"draining"}
        assert all(c["mtls"] and c["sourceIdentity"] == spiffe("frontend") for c in connections)
        await front.drain(0.3)
        hang.close()
        stuck.close()

    run(main())


def test_durations_are_measured_finer_than_uvloops_millisecond_clock(tmp_path: Path) -> None:
    """uvloop's loop.time() moves in whole milliseconds; the log's durations must not (with it,
    every duration of a fast request would be a whole number of milliseconds)."""

    async def main() -> None:
        app = await Backend(echo).start()
        log_file = tmp_path / "access.log"
        dp, out = await pricing_sidecar(log_file, app.address)
        client = await Client.open(out)
        for _ in range(20):
            assert (await client.request(b"/", b"pricing")).status == 200
        client.close()
        await dp.drain(1.0)
        durations = [r["durationMs"] for r in read_log(log_file)]
        assert len(durations) == 20
        assert any(d % 1.0 for d in durations), durations

    run(main())


def test_many_requests_are_all_in_the_file_after_drain(tmp_path: Path) -> None:
    async def main() -> None:
        app = await Backend(echo).start()
        log_file = tmp_path / "access.log"
        dp, out = await pricing_sidecar(log_file, app.address)
        clients = [await Client.open(out) for _ in range(4)]

        async def load(client: Client, n: int) -> None:
            for i in range(n):
                assert (await client.request(b"/%d" % i, b"pricing")).status == 200

        await asyncio.gather(*(load(c, 250) for c in clients))
        await dp.drain(1.0)
        records = read_log(log_file)
        assert len(records) == 1000
        assert len({r["requestId"] for r in records}) == 1000

    run(main())


def test_gossamer_proxy_with_an_unwritable_access_log_fails_with_one_line(tmp_path: Path) -> None:
    snap_file = tmp_path / "snapshot.json"
    snap_file.write_bytes(snap.encode(snapshot([], [])))
    target = tmp_path / "no-such-dir" / "access.log"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gossamer.cli.main",
            "proxy",
            "--service",
            "web",
            "--proxy-id",
            "web-0",
            "--snapshot",
            str(snap_file),
            "--access-log",
            str(target),
        ],
        capture_output=True,
        timeout=20,
        check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "ERROR" in line]
    assert len(lines) == 1, err
    assert lines[0].endswith(
        f"--access-log {target}: cannot open for writing: No such file or directory"
    )
