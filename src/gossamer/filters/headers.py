"""RequestHeaderModifier / ResponseHeaderModifier: set, add and remove headers on a head.

`compile(modifier)` turns a `snapshot.HeaderModifier` into a `HeaderModifierFilter` once, when a
Snapshot is applied; per request the filter rewrites the header list in one pass. Names are matched
case-insensitively (heads keep names lower-cased), values are bytes. The order is Envoy's: remove,
then set (replaces every value, keeping the first position), then add (appends).
"""

from __future__ import annotations

from gossamer.http import syntax
from gossamer.http.message import Headers, RequestHead, ResponseHead
from gossamer.snapshot import HeaderModifier


def encode_name(name: str, where: str) -> bytes:
    """A header name lower-cased as bytes; ValueError naming `where` when it is not a token."""
    try:
        return syntax.encode_header_name(name)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def encode_value(value: str, where: str) -> bytes:
    """A header value as latin-1 bytes; ValueError when it holds CR, LF, NUL or non-latin-1."""
    try:
        return syntax.encode_header_value(value)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


class HeaderModifierFilter:
    """A compiled header modifier; the same object serves requests and responses."""

    __slots__ = ("add", "drop", "remove", "set")

    def __init__(
        self,
        set_: dict[bytes, bytes],
        add: tuple[tuple[bytes, bytes], ...],
        remove: frozenset[bytes],
    ) -> None:
        self.set = set_
        self.add = add
        self.remove = remove
        # Names whose current values all go away before set/add are applied.
        self.drop = remove | frozenset(set_)

    def apply(self, headers: Headers) -> None:
        """Rewrite `headers` in place."""
        if self.drop:
            drop = self.drop
            new_values = self.set
            out: Headers = []
            placed: set[bytes] = set()
            for k, v in headers:
                if k in drop:
                    if k in new_values and k not in placed:
                        out.append((k, new_values[k]))
                        placed.add(k)
                    continue
                out.append((k, v))
            if len(placed) != len(new_values):
                out.extend((k, v) for k, v in new_values.items() if k not in placed)
            headers[:] = out
        if self.add:
            headers.extend(self.add)

    def apply_request(self, head: RequestHead) -> None:
        """Modify a request's headers; a `host` that is set also becomes the head's authority."""
        self.apply(head.headers)
        host = self.set.get(b"host")
        if host is not None:
            head.host = host

    def apply_response(self, head: ResponseHead) -> None:
        """Modify a response's headers."""
        self.apply(head.headers)

    def __repr__(self) -> str:
        return f"HeaderModifierFilter(set={self.set!r}, add={self.add!r}, remove={self.remove!r})"


def compile(modifier: HeaderModifier, where: str = "header modifier") -> HeaderModifierFilter:
    """Compile a header modifier.

    Args:
        modifier: the Snapshot's `HeaderModifier`.
        where: names the filter in error messages (e.g. "virtual host pricing.default, rule #0").

    Raises:
        ValueError: a name is not a token, a value holds CR/LF/NUL, or a name is set twice.
    """
    set_: dict[bytes, bytes] = {}
    for h in modifier.set:
        name = encode_name(h.name, where)
        if name in set_:
            raise ValueError(f"{where}: header {h.name!r} is set twice")
        set_[name] = encode_value(h.value, where)
    add = tuple((encode_name(h.name, where), encode_value(h.value, where)) for h in modifier.add)
    remove = frozenset(encode_name(n, where) for n in modifier.remove)
    return HeaderModifierFilter(set_, add, remove)
