"""Errors of the HTTP codecs: who was wrong and which status answers it."""

from __future__ import annotations


class ProtocolError(Exception):
    """The peer sent bytes that are not acceptable HTTP/1.1.

    `status` is what a server answers (400 malformed, 431 header block too large, 501 for an
    unsupported transfer coding); for a response parser it is 502, the proxy's answer to a broken
    upstream. `reason` is one line naming what was wrong.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class ResponseHeadTooLarge(ProtocolError):
    """An upstream's response head is over the header limit (502; flag
    `upstream-headers-too-large`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(502, f"upstream response head exceeds the {limit}-byte header limit")
