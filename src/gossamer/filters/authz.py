"""Authorization: decide whether an inbound request may reach the app (Istio's AuthorizationPolicy).

`compile(snapshot.authz)` builds an `AuthzEngine` once per Snapshot; `engine.check(principal,
method, path, port)` returns a `Decision` and never raises. The inbound listener calls it for
every request and answers a denied one itself (flag `denied`, 403, with `decision.reason`).

Evaluation, as in Istio: a matching DENY policy denies; else, when any ALLOW policy selects the
workload, the request must match one of their rules or it is denied (default deny); else it is
allowed. AUDIT policies never change the decision: the ones that match are listed in
`Decision.audit` for logs and metrics. A policy with no rules: ALLOW allows nothing (so it denies
everything), DENY and AUDIT match nothing.

Matching: a rule is `from` AND `to`, the entries of each OR-ed (empty: no condition); in one source
or operation the fields are AND-ed and the values of a field OR-ed; a `not...` field holds when none
of its values matches. The principal is the peer's verified SPIFFE ID, or None on a connection
without one (plaintext): then `principals` and `namespaces` never match, while `notPrincipals` and
`notNamespaces` always do, exactly as in Istio (so `notPrincipals: ["*"]` in a DENY policy refuses
every request without an identity; `notNamespaces: [foo]` in an ALLOW policy also lets plaintext
requests in). The namespace of a principal is the `ns` segment of a `spiffe://td/ns/N/sa/S` ID.

Paths are matched without the query string, after the normalization Istio applies by default
(RFC 3986: percent-escapes of unreserved characters decoded, "." and ".." segments removed), so
`/%61dmin` and `/public/../admin` cannot slip past a rule for `/admin`. `%2F` stays encoded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gossamer.http import syntax
from gossamer.snapshot import AuthzConfig, AuthzOperation, AuthzPath, AuthzPolicy, AuthzSource

__all__ = [
    "DENIED_FLAG",
    "DENIED_STATUS",
    "NO_POLICY",
    "AuthzCompileError",
    "AuthzEngine",
    "Decision",
    "compile",
    "principal_namespace",
]

# What the inbound listener answers a denied request with (proxy/flags.py owns the response).
DENIED_FLAG = "denied"
DENIED_STATUS = 403

_SCHEME = "spiffe://"
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")
_NAMESPACE_CACHE_SIZE = 4096


class AuthzCompileError(ValueError):
    """A Snapshot's authz section the engine cannot use; the message names the policy and rule."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one request.

    Attributes:
        allowed: whether the request may go on to the app.
        policy: "namespace/name" of the policy that decided (the DENY that matched, the ALLOW
            that matched), None when none did (no policy, or default deny).
        reason: one line for the 403 body and the access log.
        audit: the AUDIT policies that matched, by name.
    """

    allowed: bool
    policy: str | None
    reason: str
    audit: tuple[str, ...] = ()


NO_POLICY = Decision(True, None, "no AuthorizationPolicy applies")


def compile(config: AuthzConfig | None) -> AuthzEngine:
    """Build the engine for a Snapshot's `authz` section (None: allow everything).

    Raises:
        AuthzCompileError: a path, method or port the engine cannot match, naming where.
    """
    return AuthzEngine(config.policies if config is not None else ())


class AuthzEngine:
    """The compiled policies of one proxy; `check` is all the request path calls."""

    __slots__ = (
        "_allow",
        "_audit",
        "_default_deny",
        "_deny",
        "_empty",
        "_namespaces",
        "_needs_namespace",
        "_no_deny_matched",
    )

    def __init__(self, policies: Sequence[AuthzPolicy]) -> None:
        compiled = [_Policy(p) for p in policies]
        self._deny = tuple(p for p in compiled if p.action == "DENY")
        self._allow = tuple(p for p in compiled if p.action == "ALLOW")
        self._audit = tuple(p for p in compiled if p.action == "AUDIT")
        self._empty = not compiled
        self._needs_namespace = any(p.needs_namespace for p in compiled)
        self._namespaces: dict[str, str | None] = {}
        names = ", ".join(p.name for p in self._allow)
        self._default_deny = Decision(
            False, None, f"default deny: no ALLOW policy matched ({names})"
        )
        self._no_deny_matched = Decision(True, None, "no DENY policy matched and no ALLOW applies")

    @property
    def policies(self) -> tuple[str, ...]:
        """The names of the compiled policies: DENY, then ALLOW, then AUDIT."""
        return tuple(p.name for p in (*self._deny, *self._allow, *self._audit))

    def check(self, principal: str | None, method: bytes, path: bytes, port: int) -> Decision:
        """Decide on one request.

        Args:
            principal: the peer's verified SPIFFE ID (`spiffe://...`; the scheme is added when
                missing), None without one.
            method: the request method as received (case-sensitive, as HTTP says).
            path: the request target in origin form, query string included or not.
            port: the service port the request was addressed to.
        """
        if self._empty:
            return NO_POLICY
        if principal is not None and not principal.startswith(_SCHEME):
            principal = _SCHEME + principal
        path = _normalize(path)
        namespace = self._namespace(principal) if self._needs_namespace else None

        decision: Decision | None = None
        for policy in self._deny:
            if policy.matches(principal, namespace, method, path, port):
                decision = policy.decision
                break
        if decision is None:
            if self._allow:
                decision = self._default_deny
                for policy in self._allow:
                    if policy.matches(principal, namespace, method, path, port):
                        decision = policy.decision
                        break
            else:
                decision = self._no_deny_matched
        if self._audit:
            audited = tuple(
                p.name for p in self._audit if p.matches(principal, namespace, method, path, port)
            )
            if audited:
                return Decision(decision.allowed, decision.policy, decision.reason, audited)
        return decision

    def _namespace(self, principal: str | None) -> str | None:
        if principal is None:
            return None
        try:
            return self._namespaces[principal]
        except KeyError:
            pass
        if len(self._namespaces) >= _NAMESPACE_CACHE_SIZE:
            self._namespaces.clear()  # peers are few; a flood of new IDs only costs a re-parse
        namespace = principal_namespace(principal)
        self._namespaces[principal] = namespace
        return namespace


def principal_namespace(principal: str) -> str | None:
    """The namespace of a workload ID `spiffe://td/ns/N/sa/S`, None for any other ID."""
    parts = principal[len(_SCHEME) :].split("/") if principal.startswith(_SCHEME) else []
    if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" and parts[2]:
        return parts[2]
    return None


def _normalize(path: bytes) -> bytes:
    """The path as rules see it: no query, unreserved escapes decoded, dot segments removed."""
    query = path.find(b"?")
    if query >= 0:
        path = path[:query]
    if b"%" in path:
        path = _ESCAPE.sub(_unescape, path)
    if b"/." in path and path.startswith(b"/"):
        out: list[bytes] = []
        segments = path.split(b"/")[1:]
        for segment in segments:
            if segment == b"..":
                if out:
                    out.pop()
            elif segment != b".":
                out.append(segment)
        if segments[-1] in (b".", b".."):
            out.append(b"")  # "/a/." is the directory "/a/"
        path = b"/" + b"/".join(out)
    return path


def _unescape(m: re.Match[bytes]) -> bytes:
    byte = int(m.group(1), 16)
    return bytes((byte,)) if byte in _UNRESERVED else b"%" + m.group(1).upper()


# --- compiled parts -------------------------------------------------------------------------------


class _Strings:
    """OR over Istio string matches: exact, `prefix*`, `*suffix`, `*` (any present value)."""

    __slots__ = ("any", "exact", "prefixes", "suffixes")

    def __init__(self, patterns: Sequence[str], where: str, scheme: str = "") -> None:
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        self.any = False
        for i, p in enumerate(patterns):
            if p == "*":
                self.any = True
                continue
            body = p[1:] if p.startswith("*") else p[:-1] if p.endswith("*") else p
            if not body or "*" in body:
                raise AuthzCompileError(
                    f"{where}[{i}]: {p!r}: '*' is only allowed alone, first or last"
                )
            if p.startswith("*"):
                suffixes.append(body)
                continue
            # Istio's short principal form "td/ns/x/sa/y" is the same ID as "spiffe://td/...".
            if scheme and not body.startswith(scheme):
                body = scheme + body
            (prefixes.append if p.endswith("*") else exact.add)(body)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.suffixes = tuple(suffixes)

    def match(self, value: str | None) -> bool:
        if value is None:
            return False
        return (
            self.any
            or value in self.exact
            or (bool(self.prefixes) and value.startswith(self.prefixes))
            or (bool(self.suffixes) and value.endswith(self.suffixes))
        )


def _strings(patterns: Sequence[str], where: str, scheme: str = "") -> _Strings | None:
    return _Strings(patterns, where, scheme) if patterns else None


class _Paths:
    """OR over path matches, on the normalized request path."""

    __slots__ = ("any", "exact", "prefixes", "regexes", "suffixes")

    def __init__(self, paths: Sequence[AuthzPath], where: str) -> None:
        exact: set[bytes] = set()
        prefixes: list[bytes] = []
        suffixes: list[bytes] = []
        regexes: list[re.Pattern[bytes]] = []
        self.any = False
        for i, p in enumerate(paths):
            try:
                if p.type == "RegularExpression":
                    regexes.append(syntax.compile_regex(p.value))
                elif p.type == "Suffix":
                    suffixes.append(syntax.encode_path("/" + p.value)[1:])
                elif p.type == "Prefix" and p.value == "":
                    self.any = True
                elif p.type == "Prefix":
                    prefixes.append(syntax.encode_path(p.value))
                elif p.type == "Exact":
                    exact.add(syntax.encode_path(p.value))
                else:  # PathPrefix, segment-aware: "/foo" is "/foo" itself or "/foo/..."
                    value = syntax.encode_path(p.value).rstrip(b"/")
                    if not value:
                        self.any = True
                    exact.add(value)
                    prefixes.append(value + b"/")
            except ValueError as exc:
                raise AuthzCompileError(f"{where}[{i}]: {exc}") from None
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)
        self.suffixes = tuple(suffixes)
        self.regexes = tuple(regexes)

    def match(self, path: bytes) -> bool:
        if (
            self.any
            or path in self.exact
            or (bool(self.prefixes) and path.startswith(self.prefixes))
            or (bool(self.suffixes) and path.endswith(self.suffixes))
        ):
            return True
        return any(r.fullmatch(path) for r in self.regexes)


class _Source:
    __slots__ = ("namespaces", "not_namespaces", "not_principals", "principals")

    def __init__(self, source: AuthzSource, where: str) -> None:
        self.principals = _strings(source.principals, f"{where}.principals", _SCHEME)
        self.not_principals = _strings(source.not_principals, f"{where}.notPrincipals", _SCHEME)
        self.namespaces = _strings(source.namespaces, f"{where}.namespaces")
        self.not_namespaces = _strings(source.not_namespaces, f"{where}.notNamespaces")

    @property
    def needs_namespace(self) -> bool:
        return self.namespaces is not None or self.not_namespaces is not None

    def match(self, principal: str | None, namespace: str | None) -> bool:
        # `_Strings.match(None)` is False: a positive field needs an identity, a `not` field
        # is satisfied without one (Istio compares against an empty value).
        if self.principals is not None and not self.principals.match(principal):
            return False
        if self.not_principals is not None and self.not_principals.match(principal):
            return False
        if self.namespaces is not None and not self.namespaces.match(namespace):
            return False
        return not (self.not_namespaces is not None and self.not_namespaces.match(namespace))


class _Operation:
    __slots__ = ("methods", "not_methods", "not_paths", "not_ports", "paths", "ports")

    def __init__(self, op: AuthzOperation, where: str) -> None:
        self.paths = _Paths(op.paths, f"{where}.paths") if op.paths else None
        self.not_paths = _Paths(op.not_paths, f"{where}.notPaths") if op.not_paths else None
        self.methods = _methods(op.methods, f"{where}.methods")
        self.not_methods = _methods(op.not_methods, f"{where}.notMethods")
        self.ports = _ports(op.ports, f"{where}.ports")
        self.not_ports = _ports(op.not_ports, f"{where}.notPorts")

    def match(self, method: bytes, path: bytes, port: int) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        if self.not_methods is not None and method in self.not_methods:
            return False
        if self.ports is not None and port not in self.ports:
            return False
        if self.not_ports is not None and port in self.not_ports:
            return False
        if self.paths is not None and not self.paths.match(path):
            return False
        return not (self.not_paths is not None and self.not_paths.match(path))


def _methods(methods: Sequence[str], where: str) -> frozenset[bytes] | None:
    if not methods:
        return None
    for i, m in enumerate(methods):
        try:
            syntax.check_token(m, "method")
        except ValueError as exc:
            raise AuthzCompileError(f"{where}[{i}]: {exc}") from None
    return frozenset(m.encode("ascii") for m in methods)


def _ports(ports: Sequence[int], where: str) -> frozenset[int] | None:
    if not ports:
        return None
    for i, p in enumerate(ports):
        if not 1 <= p <= 65535:
            raise AuthzCompileError(f"{where}[{i}]: port {p} is not in 1-65535")
    return frozenset(ports)


class _Rule:
    __slots__ = ("operations", "sources")

    def __init__(self, sources: tuple[_Source, ...], operations: tuple[_Operation, ...]) -> None:
        self.sources = sources
        self.operations = operations

    def match(
        self, principal: str | None, namespace: str | None, method: bytes, path: bytes, port: int
    ) -> bool:
        if self.sources:
            for source in self.sources:
                if source.match(principal, namespace):
                    break
            else:
                return False
        if self.operations:
            # Loops, not any(): a generator per call would allocate on every request.
            for op in self.operations:  # noqa: SIM110
                if op.match(method, path, port):
                    return True
            return False
        return True


class _Policy:
    __slots__ = ("action", "decision", "name", "needs_namespace", "rules")

    def __init__(self, policy: AuthzPolicy) -> None:
        self.name = policy.name
        self.action = policy.action
        rules: list[_Rule] = []
        for r, rule in enumerate(policy.rules):
            where = f"policy {policy.name}, rules[{r}]"
            sources = tuple(_Source(s, f"{where}.from[{f}]") for f, s in enumerate(rule.from_))
            ops = tuple(_Operation(o, f"{where}.to[{t}]") for t, o in enumerate(rule.to))
            rules.append(_Rule(sources, ops))
        self.rules = tuple(rules)
        self.needs_namespace = any(s.needs_namespace for r in self.rules for s in r.sources)
        # Made once: deciding allocates nothing unless an AUDIT policy matches.
        if self.action == "DENY":
            self.decision = Decision(False, self.name, f"denied by DENY policy {self.name}")
        else:
            self.decision = Decision(True, self.name, f"allowed by {self.name}")

    def matches(
        self, principal: str | None, namespace: str | None, method: bytes, path: bytes, port: int
    ) -> bool:
        for rule in self.rules:  # noqa: SIM110 - no generator per request
            if rule.match(principal, namespace, method, path, port):
                return True
        return False
