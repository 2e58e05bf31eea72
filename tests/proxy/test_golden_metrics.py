"""The golden metrics on real DataPlanes (in-process, uvloop, 127.0.0.1:0): one record per finished
request in each direction, with the labels of docs/metrics.md, and the TCP counts per listener.

Sidecars with mTLS come from test_mtls_support.py (a real test CA), so identities are the ones
the handshakes verified. The expositions are read back with a small parser of the text format.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
from pathlib import Path

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
from test_mtls_support import make_pki, pricing_caller, sidecar, spiffe, with_tls

from gossamer.proxy.golden import BYTE_BUCKETS, identity_services, response_flag
from gossamer.telemetry.metrics import Registry

Labels = frozenset[tuple[str, str]]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(registry: Registry) -> dict[tuple[str, Labels], float]:
    """Every sample of the exposition, by (name, labels)."""
    out: dict[tuple[str, Labels], float] = {}
    for line in registry.render().decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m is not None, f"unparsable sample line {line!r}"
        name, body, value = m.groups()
        labels = frozenset(_PAIR.findall(body or ""))
        out[(name, labels)] = float(value)
    return out


def series(registry: Registry, name: str, **match: str) -> dict[Labels, float]:
    """The samples of `name` whose labels include `match`."""
    want = set(match.items())
    return {
        labels: value
        for (n, labels), value in samples(registry).items()
        if n == name and want <= labels
    }


def one(registry: Registry, name: str, **match: str) -> tuple[dict[str, str], float]:
    found = series(registry, name, **match)
    assert len(found) == 1, f"{name} {match}: expected one series, got {found}"
    [(labels, value)] = found.items()
    return dict(labels), value


def test_mtls_edge_is_counted_on_both_sides_with_services_identities_and_route(
    tmp_path: Path,
) -> None:
    """frontend -> mTLS -> pricing: the outbound side names the server's verified identity, the
    inbound side the caller's, and both name each other's service."""

    async def main() -> None:
        pki = make_pki(tmp_path / "pki")
        app = await Backend(echo).start()
        pricing, pricing_in, _, pricing_reg = await sidecar(
            pki,
            "pricing",
            "STRICT",
            app_port=app.port,
            # pricing can call frontend: its Snapshot says which identity frontend runs as.
            clusters=[cluster("frontend", [dead_address()])],
            identities={"frontend": [spiffe("frontend")]},
        )
        front, _, out, front_reg = await pricing_caller(pki, pricing_in)
        client = await Client.open(out)
        for _ in range(3):
            r = await client.request(b"/prices/1", b"pricing", b"POST", b"hello")
            assert r.status == 200
        labels, value = one(front_reg, "gossamer_requests_total")
        assert value == 3
        assert labels == {
            "direction": "outbound",
            "source_service": "frontend.default",
            "source_identity": spiffe("frontend"),
            "destination_service": "pricing.default",
            "destination_identity": spiffe("pricing"),
            "route": "default",
            "status_code": "200",
            "response_flag": "",
        }
        labels, value = one(pricing_reg, "gossamer_requests_total")
        assert value == 3
        assert labels == {
            "direction": "inbound",
            "source_service": "frontend.default",
            "source_identity": spiffe("frontend"),
            "destination_service": "pricing.default",
            "destination_identity": spiffe("pricing"),
            "route": "",
            "status_code": "200",
            "response_flag": "",
        }
        for reg, direction in ((front_reg, "outbound"), (pricing_reg, "inbound")):
            edge = {
                "direction": direction,
                "source_service": "frontend.default",
                "destination_service": "pricing.default",
            }
            _, count = one(reg, "gossamer_request_duration_seconds_count", **edge)
            assert count == 3
            _, total = one(reg, "gossamer_request_duration_seconds_sum", **edge)
            assert 0.0 <= total < 3 * 5.0  # uvloop's clock ticks in milliseconds
            labels, _ = one(reg, "gossamer_request_duration_seconds_count", **edge)
            assert labels["status_class"] == "2xx"
            assert labels["route"] == ("default" if direction == "outbound" else "")
            # 5-byte bodies both ways: all in the 256-byte bucket, none at 0.
            for family in ("gossamer_request_bytes", "gossamer_response_bytes"):
                _, size = one(reg, f"{family}_sum", **edge)
                assert size == 15
                _, zero = one(reg, f"{family}_bucket", le="0", **edge)
                _, small = one(reg, f"{family}_bucket", le="256", **edge)
                assert (zero, small) == (0, 3)
        await front.drain(1.0)
        await pricing.drain(1.0)

    run(main())


def test_plaintext_caller_is_unknown_and_local_answers_carry_their_flag() -> None:
    """Without mTLS the inbound source is 'unknown' with no identity; no-route is counted with
    an unknown destination, no route and its flag; a peer sidecar's flag shows on the caller's
    side too."""

    async def main() -> None:
        app = await Backend(echo).start()
        pricing, pricing_in, _, pricing_reg = await start_dataplane(
            snapshot([], [], app_port=app.port, service="pricing")
        )
        # billing's sidecar has no app: it answers 503 no-healthy-endpoint itself.
        _, billing_in, _, billing_reg = await start_dataplane(snapshot([], [], service="billing"))
        front, _, out, front_reg = await start_dataplane(
            snapshot(
                [vhost("pricing"), vhost("billing")],
                [cluster("pricing", [pricing_in]), cluster("billing", [billing_in])],
            )
        )
        client = await Client.open(out)
        assert (await client.request(b"/", b"pricing")).status == 200
        assert (await client.request(b"/x", b"nowhere")).status == 404
        r = await client.request(b"/", b"billing")
        assert r.status == 503
        assert r.header(b"x-gossamer-flags") == b"no-healthy-endpoint"
        labels, value = one(pricing_reg, "gossamer_requests_total")
        assert value == 1
        assert labels["source_service"] == "unknown"
        assert labels["source_identity"] == ""
        assert labels["destination_service"] == "pricing.default"
        assert labels["destination_identity"] == ""  # no SVID: static snapshot, plaintext
        labels, _ = one(front_reg, "gossamer_requests_total", status_code="404")
        assert labels["destination_service"] == "unknown"
        assert labels["route"] == ""
        assert labels["response_flag"] == "no-route"
        labels, _ = one(front_reg, "gossamer_requests_total", status_code="503")
        assert labels["destination_service"] == "billing.default"
        assert labels["response_flag"] == "no-healthy-endpoint"
        labels, _ = one(billing_reg, "gossamer_requests_total")
        assert labels["direction"] == "inbound"
        assert labels["response_flag"] == "no-healthy-endpoint"
        assert labels["status_code"] == "503"
        _, seconds = one(front_reg, "gossamer_request_duration_seconds_count", status_class="4xx")
        assert seconds == 1
        await front.drain(1.0)
        await pricing.drain(1.0)

    run(main())


def test_connect_failure_and_client_disconnect_are_recorded_once() -> None:
    """A request the mesh fails (connect-failure) and one the client abandons are each one
    record, with their flag; the abandoned one has status 0."""

    async def never(seen: Seen) -> bytes | None:
        return None

    async def main() -> None:
        slow = await Backend(lambda seen: never(seen)).start()
        front, _, out, reg = await start_dataplane(
            snapshot(
                [vhost("gone"), vhost("slow")],
                [cluster("gone", [dead_address()]), cluster("slow", [slow.address])],
            )
        )
        client = await Client.open(out)
        r = await client.request(b"/", b"gone")
        assert r.status == 503
        labels, value = one(reg, "gossamer_requests_total", destination_service="gone.default")
        assert (labels["status_code"], labels["response_flag"], value) == (
            "503",
            "connect-failure",
            1,
        )
        leaving = await Client.open(out)
        leaving.send(b"GET / HTTP/1.1\r\nhost: slow\r\n\r\n")
        await wait_until(lambda: len(slow.seen) == 1)
        # A reset, as from a killed client (a plain close is a half-close: the proxy would
        # still wait for the response).
        sock = leaving.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        leaving.close()
        await wait_until(
            lambda: bool(series(reg, "gossamer_requests_total", destination_service="slow.default"))
        )
        labels, value = one(reg, "gossamer_requests_total", destination_service="slow.default")
        assert (labels["status_code"], labels["response_flag"], value) == (
            "0",
            "client-disconnected",
            1,
        )
        await front.drain(1.0)

    run(main())


def test_tcp_counts_are_the_bytes_on_the_wire() -> None:
    """Opened/closed connections and received/sent bytes per listener match what the client
    wrote and read, framing included (a chunked response's chunk lines too)."""

    def chunked(seen: Seen) -> bytes:
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"

    async def main() -> None:
        app = await Backend(chunked).start()
        front, _, out, reg = await start_dataplane(
            snapshot([vhost("pricing")], [cluster("pricing", [app.address])])
        )
        host, port = out.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        request = b"GET / HTTP/1.1\r\nhost: pricing\r\nconnection: close\r\n\r\n"
        writer.write(request)
        received = await asyncio.wait_for(reader.read(), 5.0)  # until the proxy closes
        writer.close()
        assert received.startswith(b"HTTP/1.1 200")
        assert received.endswith(b"0\r\n\r\n")
        out_only = {"direction": "outbound"}
        await wait_until(
            lambda: one(reg, "gossamer_tcp_connections_closed_total", **out_only)[1] == 1
        )
        assert one(reg, "gossamer_tcp_connections_opened_total", **out_only)[1] == 1
        assert one(reg, "gossamer_tcp_received_bytes_total", **out_only)[1] == len(request)
        assert one(reg, "gossamer_tcp_sent_bytes_total", **out_only)[1] == len(received)
        assert one(reg, "gossamer_tcp_connections_opened_total", direction="inbound")[1] == 0
        _, body = one(reg, "gossamer_response_bytes_sum", direction="outbound")
        assert body == 3  # the body only, not its chunk framing
        await front.drain(1.0)

    run(main())


def test_labels_follow_a_new_snapshot() -> None:
    """Names resolved for one Snapshot are forgotten when the next one renames the service."""

    async def main() -> None:
        app = await Backend(lambda seen: ok()).start()
        dp, inbound, _, reg = await start_dataplane(
            snapshot([], [], app_port=app.port, service="pricing")
        )
        client = await Client.open(inbound)
        assert (await client.request(b"/", b"pricing")).status == 200
        dp.apply(snapshot([], [], app_port=app.port, service="prices"))
        assert (await client.request(b"/", b"pricing")).status == 200
        for name in ("pricing.default", "prices.default"):
            _, value = one(reg, "gossamer_requests_total", destination_service=name)
            assert value == 1
        await dp.drain(1.0)

    run(main())


def test_identity_services_and_response_flag_are_bounded() -> None:
    """Unit: a shared or wildcard identity names no service; an unknown flag becomes ''."""
    base = snapshot([], [cluster("a", []), cluster("b", []), cluster("c", [])])
    snap_ = with_tls(
        base,
        "STRICT",
        "",
        a=[spiffe("a")],
        b=[spiffe("shared"), "spiffe://gossamer.local/ns/default/sa/*"],
        c=[spiffe("shared")],
    )
    assert identity_services(snap_) == {spiffe("a"): "a.default", spiffe("shared"): "unknown"}
    assert response_flag(b"HTTP/1.1 503 x\r\nX-Gossamer-Flags: overflow\r\n\r\n") == "overflow"
    assert response_flag(b"HTTP/1.1 200 OK\r\nx-gossamer-flags: fallback,timeout\r\n\r\n") == (
        "fallback"
    )
    assert response_flag(b"HTTP/1.1 500 x\r\nx-gossamer-flags: /etc/passwd\r\n\r\n") == ""
    assert response_flag(b"HTTP/1.1 500 x\r\ncontent-length: 0\r\n\r\n") is None
    assert BYTE_BUCKETS[0] == 0.0
