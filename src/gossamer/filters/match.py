"""Compiled request conditions: path, headers, query, method, as HTTPRoute matches them.

The one home of request matching, shared by the router (proxy/router.py: which rule a request
takes), rate limits (filters/ratelimit.py: which requests a rule counts) and faults
(filters/fault.py: which requests a fault may hit). `compile_condition(match, where)` turns a
`snapshot.RouteMatch` into a `Condition` once per Snapshot, raising ValueError naming `where`;
per request, `condition.matches(head)` says whether all of its conditions hold.

Semantics (the Gateway API's HTTPRoute match): a match's conditions are AND-ed. Paths compare as
received (percent-encoding untouched); PathPrefix is segment-aware ("/foo" matches "/foo",
"/foo/", "/foo/bar" but not "/foobar"; a trailing "/" in the prefix is ignored, and "/" matches
every path); regexes must match the whole value. Header names are case-insensitive and the first
value counts. Query parameters are percent-decoded ("+" as a space) and the first occurrence of a
name counts.

The data layout is the router's hot path's (it inlines `Condition.matches` to parse the query at
most once per request): plain attributes, tuples of `(name, exact value or None, regex or None)`,
bytes and precompiled regexes. Nothing here allocates per request except the parsed query.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from urllib.parse import unquote_to_bytes

from gossamer import snapshot as snap
from gossamer.filters import headers as header_filter
from gossamer.filters.rewrite import encode_path, strip_prefix
from gossamer.http import syntax
from gossamer.http.message import RequestHead

# Condition.path_kind: no path condition, Exact, segment-aware PathPrefix, RegularExpression.
ANY, EXACT, PREFIX, REGEX = 0, 1, 2, 3

ValueCond = tuple[bytes, bytes | None, "re.Pattern[bytes] | None"]
"""A header or query parameter condition: (name, exact value or None, regex or None)."""


class Condition:
    """One compiled snapshot.RouteMatch: all its conditions must hold.

    Attributes:
        method: the method asked for, or None.
        path_kind: ANY, EXACT, PREFIX or REGEX.
        path: the Exact path, or the PathPrefix without its trailing "/".
        path_slash: `path` + b"/" for a PathPrefix (what a longer path must start with).
        path_re: the RegularExpression path, compiled.
        headers / query: header and query parameter conditions.
        prefix: the PathPrefix as written (b"/" for a match without a path), None for Exact and
            RegularExpression paths: what a redirect or rewrite replaces.
    """

    __slots__ = (
        "headers",
        "method",
        "path",
        "path_kind",
        "path_re",
        "path_slash",
        "prefix",
        "query",
    )

    def __init__(self) -> None:
        self.method: bytes | None = None
        self.path_kind = ANY
        self.path = b""
        self.path_slash = b""
        self.path_re: re.Pattern[bytes] | None = None
        self.headers: tuple[ValueCond, ...] = ()
        self.query: tuple[ValueCond, ...] = ()
        self.prefix: bytes | None = b"/"

    @property
    def is_any(self) -> bool:
        """True when it holds for every request (no method, path, header or query condition)."""
        return self.path_kind == ANY and not (self.method or self.headers or self.query)

    def matches(self, head: RequestHead) -> bool:
        """Whether `head` meets every condition.

        RouteTable.match inlines this (one call less per rule, the query parsed once for all
        rules): change both together.
        """
        if self.method is not None and head.method != self.method:
            return False
        kind = self.path_kind
        if kind == PREFIX:
            path = head.path
            if path != self.path and not path.startswith(self.path_slash):
                return False
        elif kind == EXACT:
            if head.path != self.path:
                return False
        elif kind == REGEX:
            assert self.path_re is not None
            if self.path_re.fullmatch(head.path) is None:
                return False
        if self.headers and not headers_match(self.headers, head.headers):
            return False
        return not self.query or query_match(self.query, parse_query(head.query))

    def __repr__(self) -> str:
        return f"Condition(method={self.method!r}, path_kind={self.path_kind}, path={self.path!r})"


def compile_regex(pattern: str, where: str) -> re.Pattern[bytes]:
    """A whole-value regex over bytes; ValueError naming `where` when it does not compile."""
    try:
        return syntax.compile_regex(pattern)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None


def _utf8(value: str, where: str) -> bytes:
    return value.encode("utf-8")


def compile_headers(
    matches: Sequence[snap.HeaderMatch],
    where: str,
    *,
    field: str = "header match",
    encode_value: Callable[[str, str], bytes] = _utf8,
) -> tuple[ValueCond, ...]:
    """Compile header conditions.

    Args:
        matches: the Snapshot's HeaderMatches.
        where: names the match (or filter) in error messages.
        field: names the list in error messages about a name or an exact value.
        encode_value: `(value, where) -> bytes` for an Exact value; the default takes it as
            UTF-8, as route matches do (a Fault passes `headers.encode_value`: checked,
            stripped, latin-1).

    Raises:
        ValueError: a name that is not a token, a regex that does not compile, or what
            `encode_value` refuses; the message names `where`.
    """
    out: list[ValueCond] = []
    for h in matches:
        name = header_filter.encode_name(h.name, f"{where}, {field}")
        if h.type == "RegularExpression":
            out.append((name, None, compile_regex(h.value, f"{where}, header {h.name!r}")))
        else:
            out.append((name, encode_value(h.value, f"{where}, {field}"), None))
    return tuple(out)


def compile_condition(m: snap.RouteMatch, where: str) -> Condition:
    """Compile one RouteMatch.

    Raises:
        ValueError: an invalid method, path, header name, regex or a nameless query parameter;
            the message names `where`.
    """
    cond = Condition()
    if m.method is not None:
        try:
            syntax.check_token(m.method, "method")
        except ValueError:
            raise ValueError(f"{where}: invalid method {m.method!r}") from None
        cond.method = m.method.encode("ascii")
    if m.path is not None:
        p = m.path
        if p.type == "RegularExpression":
            cond.path_kind = REGEX
            cond.path_re = compile_regex(p.value, f"{where}, path")
            cond.prefix = None
        else:
            value = encode_path(p.value, f"{where}, path")
            if p.type == "Exact":
                cond.path_kind = EXACT
                cond.path = value
                cond.prefix = None
            else:
                stripped = strip_prefix(value)
                cond.prefix = value
                if stripped:
                    cond.path_kind = PREFIX
                    cond.path = stripped
                    cond.path_slash = stripped + b"/"
    cond.headers = compile_headers(m.headers, where)
    query: list[ValueCond] = []
    for q in m.query_params:
        if not q.name:
            raise ValueError(f"{where}: query parameter match without a name")
        name = q.name.encode("utf-8")
        if q.type == "RegularExpression":
            regex = compile_regex(q.value, f"{where}, query parameter {q.name!r}")
            query.append((name, None, regex))
        else:
            query.append((name, q.value.encode("utf-8"), None))
    cond.query = tuple(query)
    return cond


def first_value(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header `name` (lower-case bytes), or None."""
    for k, v in headers:
        if k == name:
            return v
    return None


def headers_match(conds: tuple[ValueCond, ...], headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether every header condition holds for the first value of its header."""
    for name, exact, regex in conds:
        # first_value inlined: this runs per request, per rule with header conditions.
        for k, v in headers:
            if k == name:
                value = v
                break
        else:
            return False
        if exact is not None:
            if value != exact:
                return False
        elif regex is not None and regex.fullmatch(value) is None:
            return False
    return True


def query_match(conds: tuple[ValueCond, ...], query: dict[bytes, bytes]) -> bool:
    """Whether every query condition holds for `query` (as `parse_query` returns it)."""
    for name, exact, regex in conds:
        value = query.get(name)
        if value is None:
            return False
        if exact is not None:
            if value != exact:
                return False
        elif regex is not None and regex.fullmatch(value) is None:
            return False
    return True


def parse_query(query: bytes) -> dict[bytes, bytes]:
    """Parse a query string into {name: first value}, percent-decoded with "+" as a space."""
    out: dict[bytes, bytes] = {}
    for part in query.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        if b"%" in name or b"+" in name:
            name = unquote_to_bytes(name.replace(b"+", b" "))
        if b"%" in value or b"+" in value:
            value = unquote_to_bytes(value.replace(b"+", b" "))
        out.setdefault(name, value)
    return out
