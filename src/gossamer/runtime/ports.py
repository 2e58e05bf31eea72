"""Ports for the local runtime, always chosen by the OS (bind port 0), never from a fixed list."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """Bind `host:0`, read the port the OS chose, close the socket and return the port.

    The port can in principle be taken by someone else before its user binds it; on loopback, with
    the kernel handing out ephemeral ports in sequence, that window is small enough for a dev tool.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def split_address(address: str) -> tuple[str, int]:
    """Split "host:port" into its parts.

    Raises:
        ValueError: when `address` has no numeric port.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not a host:port address")
    return host, int(port)
