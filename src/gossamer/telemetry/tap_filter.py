"""Which requests a tap wants: the filter of `gossamer tap`, read from query parameters.

Shared by the sidecar's admin tap (proxy/tap.py) and the control plane's fan-in
(control/api_tap.py), which checks a filter before it opens any proxy's tap.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

MAX_PATH_PREFIX = 1024
DIRECTIONS = ("inbound", "outbound")


class Record(Protocol):
    """What a filter reads of an access-log record (proxy/accesslog.py's AccessRecord)."""

    @property
    def direction(self) -> str: ...
    @property
    def method(self) -> str | None: ...
    @property
    def status(self) -> int: ...
    @property
    def path(self) -> str | None: ...


class TapFilterError(ValueError):
    """A tap filter that cannot be used; the message names the parameter and why."""


@dataclass(frozen=True, slots=True)
class TapFilter:
    """Which records a tap wants; None matches everything."""

    path: str | None = None  # a prefix of the path (query included) as received
    method: str | None = None  # upper case
    status: int | None = None  # an exact status ...
    status_class: int | None = None  # ... or its hundreds digit (5 for "5xx")
    direction: str | None = None

    def matches(self, record: Record) -> bool:
        if self.direction is not None and record.direction != self.direction:
            return False
        if self.method is not None and record.method != self.method:
            return False
        if self.status is not None and record.status != self.status:
            return False
        if self.status_class is not None and record.status // 100 != self.status_class:
            return False
        return self.path is None or (record.path or "").startswith(self.path)

    def query(self) -> dict[str, str]:
        """The filter as query parameters (what `parse_filter` reads back)."""
        out: dict[str, str] = {}
        if self.path is not None:
            out["path"] = self.path
        if self.method is not None:
            out["method"] = self.method
        if self.status is not None:
            out["status"] = str(self.status)
        elif self.status_class is not None:
            out["status"] = f"{self.status_class}xx"
        if self.direction is not None:
            out["direction"] = self.direction
        return out


def parse_filter(params: Mapping[str, str | None]) -> TapFilter:
    """A TapFilter from query parameters (path, method, status, direction; empty means any).

    Raises:
        TapFilterError: a value is not usable, or a parameter is unknown (the message says which).
    """
    unknown = sorted(k for k in params if k not in ("path", "method", "status", "direction"))
    if unknown:
        raise TapFilterError(
            f"unknown tap parameter {unknown[0]!r}; use path, method, status, direction"
        )
    path = params.get("path") or None
    if path is not None:
        if not path.startswith("/"):
            raise TapFilterError(f"path {path!r} must start with '/' (a prefix of request paths)")
        if len(path) > MAX_PATH_PREFIX:
            raise TapFilterError(f"path is longer than {MAX_PATH_PREFIX} characters")
    method = params.get("method") or None
    if method is not None:
        if not method.isascii() or not method.isalpha() or len(method) > 32:
            raise TapFilterError(f"method {method!r} is not an HTTP method (letters only)")
        method = method.upper()
    status: int | None = None
    status_class: int | None = None
    text = (params.get("status") or "").strip().lower()
    if text:
        if len(text) == 3 and text[0] in "12345" and text[1:] == "xx":
            status_class = int(text[0])
        elif text.isdigit() and len(text) == 3 and 100 <= int(text) <= 599:
            status = int(text)
        else:
            raise TapFilterError(
                f"status {text!r} is neither a status code (100-599) nor a class like 5xx"
            )
    direction = params.get("direction") or None
    if direction is not None and direction not in DIRECTIONS:
        raise TapFilterError(f"direction {direction!r} is neither inbound nor outbound")
    return TapFilter(path, method, status, status_class, direction)
