"""Syntax rules for the strings config hands to the proxy: header names and values, hosts, paths.

One place for them so the config models refuse exactly what the proxy's router would refuse when
compiling a Snapshot (a NACK freezes config for the whole mesh). Every check raises ValueError with
a message that names the value; callers put "where" in front.
"""

from __future__ import annotations

import re
from urllib.parse import quote

# RFC 9110 token characters: a header name (and a method) must be one.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A hostname a filter may set (Host header, redirect Location): letters, digits, '.', '-', or an
# IPv6 literal in brackets.
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")
# One RFC 1123 label.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?")
# Characters a path may keep as they are: RFC 3986 pchar plus "/" and "%" (existing escapes).
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_DOMAIN_FORBIDDEN = " \t\r\n/"


def check_token(value: str, what: str = "header name") -> None:
    """An RFC 9110 token (header name, method)."""
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: use letters, digits and !#$%&'*+-.^_`|~ only")


def check_header_name(value: str) -> None:
    check_token(value, "header name")


def encode_header_name(value: str) -> bytes:
    """A header name lower-cased as bytes (heads keep names lower-cased)."""
    check_header_name(value)
    return value.lower().encode("ascii")


def encode_header_value(value: str) -> bytes:
    """A header value as the proxy sends it: spaces and tabs around it dropped, latin-1 bytes.

    Raises:
        ValueError: it holds CR, LF or NUL (it would end the header on the wire) or a character
            outside latin-1.
    """
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"header value {value!r} contains CR, LF or NUL")
    try:
        return value.strip(" \t").encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"header value {value!r} is not latin-1") from None


def check_header_value(value: str) -> None:
    encode_header_value(value)


def encode_hostname(value: str) -> bytes:
    """A hostname a filter sets (URLRewrite, RequestRedirect), lower-cased, as bytes."""
    if not _HOSTNAME.fullmatch(value):
        raise ValueError(
            f"invalid hostname {value!r}: use letters, digits, '.' and '-' (or [IPv6]), no port"
        )
    return value.lower().encode("ascii")


def check_hostname(value: str) -> None:
    encode_hostname(value)


def encode_host(host: str) -> bytes:
    """A host as bytes: ASCII as is, anything else IDNA-encoded."""
    try:
        return host.encode("ascii") if host.isascii() else host.encode("idna")
    except UnicodeError:
        raise ValueError(f"invalid host {host!r}") from None


def encode_domain(domain: str) -> bytes:
    """A virtual host domain ("name", "name:port", "*.suffix") as the router looks it up:
    lower-cased, a trailing dot dropped, as bytes."""
    d = domain.strip().lower().rstrip(".")
    if not d or any(c in d for c in _DOMAIN_FORBIDDEN):
        raise ValueError(f"invalid domain {domain!r}")
    return encode_host(d)


def check_route_hostname(value: str) -> None:
    """An HTTPRoute hostname (Gateway API): RFC 1123 labels, optionally "*." first, no port.

    Stricter than `encode_domain`, which the router applies to the domains made from it.
    """
    name = value[2:] if value.startswith("*.") else value
    labels = name.split(".")
    if not name or len(value) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(
            f"invalid hostname {value!r}: use DNS labels of letters, digits and '-' separated by "
            "'.', optionally starting with '*.' (no port, no spaces)"
        )
    encode_domain(value)


def encode_path(value: str) -> bytes:
    """A configured path as the bytes a request would carry (non-ASCII and spaces
    percent-encoded).

    Raises:
        ValueError: the path does not start with "/" or holds "?", "#" or control characters.
    """
    if not value.startswith("/"):
        raise ValueError(f"path {value!r} must start with '/'")
    if any(c in "?#" or ord(c) < 0x20 or c == "\x7f" for c in value):
        raise ValueError(f"path {value!r} must not contain '?', '#' or control characters")
    return quote(value, safe=_PATH_SAFE).encode("ascii")


def check_path(value: str) -> None:
    encode_path(value)


def check_prefix_replacement(value: str) -> None:
    """A ReplacePrefixMatch value: "" or "/" (drop the prefix) or a path."""
    if value not in ("", "/"):
        encode_path(value)


def compile_regex(pattern: str) -> re.Pattern[bytes]:
    """A regular expression as the router matches with it: Python `re`, on UTF-8 bytes."""
    try:
        return re.compile(pattern.encode("utf-8"))
    except re.error as e:
        raise ValueError(f"invalid regular expression {pattern!r}: {e}") from None
    except UnicodeEncodeError:
        raise ValueError(f"invalid regular expression {pattern!r}: not valid UTF-8") from None
