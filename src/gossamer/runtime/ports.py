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


class PortReservation:
    """A port from the OS, kept bound (not listening) until its user is about to bind it.

    Between choosing a workload's port and starting the workload, the sidecars start and each
    binds three ports at :0; a port already closed could be handed to one of them. Holding the
    socket until just before the workload starts closes that window.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._sock: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self.port: int = self._sock.getsockname()[1]

    def release(self) -> int:
        """Let the port go (idempotent) and return it for its user to bind."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        return self.port


def split_address(address: str) -> tuple[str, int]:
    """Split "host:port" into its parts.

    Raises:
        ValueError: when `address` has no numeric port.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{address!r} is not a host:port address")
    return host, int(port)


def address_free(address: str) -> bool:
    """Whether a server could listen on `address` ("host:port") now.

    SO_REUSEADDR as servers set it: a port held only by connections in TIME_WAIT counts as free,
    one another process listens on does not.
    """
    host, port = split_address(address)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
