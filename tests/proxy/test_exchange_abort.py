"""A downstream connection cut mid-response gives back everything its exchange held.

Real sockets on 127.0.0.1 (helpers from test_dataplane.py): clients that stop reading a big
response and then send garbage make the proxy cut their connections (a protocol error while the
response streams). The exchange must still end: its cluster request slot (max_requests) and its
upstream connection are given back, or a few clients could take the cluster down for good.
"""

from __future__ import annotations

import asyncio
import socket

from test_dataplane import Backend, cluster, ok, run, snapshot, start_dataplane, vhost, wait_until

from gossamer import snapshot as snap

BIG = ok(b"x" * (4 << 20))  # far more than the socket buffers hold: the response stalls


async def stalled_client(out: str) -> socket.socket:
    """A client that asks for the big response, reads its first bytes (the head went out) and
    then stops reading."""
    loop = asyncio.get_running_loop()
    host, port = out.rsplit(":", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (host, int(port)))
    await loop.sock_sendall(sock, b"GET /big HTTP/1.1\r\nhost: pricing\r\n\r\n")
    async with asyncio.timeout(5.0):
        first = await loop.sock_recv(sock, 16)
    assert first.startswith(b"HTTP/1.1 200")
    return sock


def test_a_protocol_error_mid_response_releases_the_slot_and_the_upstream() -> None:
    async def main() -> None:
        app = await Backend(lambda _seen: BIG).start()
        pool = snap.ConnectionPool(max_requests=3)
        dp, _, out, _ = await start_dataplane(
            snapshot([vhost("pricing")], [cluster("pricing", [app.address], pool=pool)])
        )
        runtime = dp.tables.clusters["pricing.default"]
        loop = asyncio.get_running_loop()
        socks = [await stalled_client(out) for _ in range(3)]
        try:
            assert runtime.active_requests == 3  # every slot of max_requests is taken
            for sock in socks:
                await loop.sock_sendall(sock, b"\x00garbage\r\n\r\n")  # a bad next request
            await wait_until(lambda: runtime.active_requests == 0 and runtime.connections == 0)
        finally:
            for sock in socks:
                sock.close()
        # The cluster serves again: the slots really came back.
        small = await Backend(lambda _seen: ok(b"fine")).start()
        dp.apply(snapshot([vhost("pricing")], [cluster("pricing", [small.address], pool=pool)]))
        reader, writer = await asyncio.open_connection(*out.rsplit(":", 1))
        writer.write(b"GET /after HTTP/1.1\r\nhost: pricing\r\n\r\n")
        async with asyncio.timeout(5.0):
            head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        writer.close()

    run(main())
