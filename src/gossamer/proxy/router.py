"""The route table: finds a request's virtual host and rule, and picks its weighted backend.

Pure and I/O-free. `RouteTable.compile(snapshot)` does all the work once per Snapshot (regexes,
encoded byte strings, host dictionaries, filters, cumulative weight tables) and raises
`RouteCompileError` for anything it cannot apply, so the proxy can NACK and keep the old table.
Per request, `table.match(head)` is a dict lookup plus a few byte comparisons and returns a
`RouteMatch` built at compile time (no allocation on the usual path).

How the data plane uses it::

    route = table.match(head)
    if route is None:                       -> local response flag "no-route" (404)
    if route.redirect is not None:          -> status, location = route.redirect.redirect(head)
    route.apply_request(head)               # rule-level request filters
    backend = route.pick_backend(rand.random())
    if backend is None:                     -> local response flag NO_BACKEND (500)
    backend.apply_request(head)             # backend-level request filters
    ... send to cluster `backend.cluster`; on the response:
    backend.apply_response(resp); route.apply_response(resp)

A rule's Fault (`route.fault`, filters/fault.py), RequestMirror (`route.mirror`, a
`MirrorBinding`) and Fallback (`route.fallback`, proxy/fallback.py) are compiled once per rule
and shared by its matches; the exchange reads them (None for rules without them: one attribute
test each). `table.bind(clusters)` points mirrors and backend fallbacks at the data plane's
cluster runtimes, and `compile(..., previous=old_table)` carries the rules' fallback caches over.

Host lookup: the request's host (lower-cased; a trailing dot ignored) is looked up exactly among
the domains, with its port if it has one; a domain of a virtual host whose `port` is None matches
any port; a virtual host with a port matches "domain:port" (and the bare domain when the port is
80). Then wildcard domains ("*.example.com", longest suffix first). Then the optional default host.
When several virtual hosts claim the same domain, the first in the Snapshot wins.

Matching inside a virtual host: rules in order, the first match wins; a rule's matches are OR-ed,
the conditions of one match AND-ed (filters/match.py compiles them and says how paths, headers and
query parameters compare); a rule without matches matches everything. Query parameters are parsed
only when a rule has a query condition, at most once per request.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from gossamer import snapshot as snap
from gossamer.filters import fault as fault_filter
from gossamer.filters import headers as header_filter
from gossamer.filters import match as match_mod
from gossamer.filters import mirror as mirror_filter
from gossamer.filters import redirect as redirect_filter
from gossamer.filters import rewrite as rewrite_filter
from gossamer.filters.fault import FaultInjector
from gossamer.filters.match import (
    EXACT,
    PREFIX,
    REGEX,
    Condition,
    headers_match,
    parse_query,
    query_match,
)
from gossamer.filters.mirror import Mirror
from gossamer.filters.redirect import RedirectFilter, split_authority
from gossamer.http import syntax
from gossamer.http.message import RequestHead, ResponseHead
from gossamer.proxy import fallback as fallback_mod
from gossamer.proxy import flags
from gossamer.proxy.exchange import RulePlan
from gossamer.proxy.fallback import FallbackPlan, ResilienceCounters
from gossamer.proxy.response_cache import ResponseCache

if TYPE_CHECKING:
    from gossamer.proxy.cluster import ClusterRuntime

# The flag and status for a matched rule with no backend to send to (none listed, or every weight
# 0): the Gateway API asks for a 500.
NO_BACKEND = flags.NO_BACKEND
NO_BACKEND_STATUS = flags.STATUS[NO_BACKEND]

# A mirrored copy or a backend fallback without a request timeout of its own gets this one, so a
# hung cluster cannot hold them (and their connections) forever.
DEFAULT_SIDE_TIMEOUT = 10.0


class RouteCompileError(Exception):
    """A Snapshot's routes cannot be compiled; `reason` names the virtual host and rule."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RequestFilter(Protocol):
    def apply_request(self, head: RequestHead) -> None: ...


class ResponseFilter(Protocol):
    def apply_response(self, head: ResponseHead) -> None: ...


class Backend:
    """One weighted backend of a rule: the cluster to send to and its own compiled filters."""

    __slots__ = ("cluster", "request_filters", "response_filters", "spec", "weight")

    def __init__(
        self,
        spec: snap.WeightedCluster,
        request_filters: tuple[RequestFilter, ...],
        response_filters: tuple[ResponseFilter, ...],
    ) -> None:
        self.spec = spec
        self.cluster: str = spec.cluster  # a Cluster.name in the Snapshot (checked at compile)
        self.weight: int = spec.weight
        self.request_filters = request_filters
        self.response_filters = response_filters

    def apply_request(self, head: RequestHead) -> None:
        for f in self.request_filters:
            f.apply_request(head)

    def apply_response(self, head: ResponseHead) -> None:
        for f in self.response_filters:
            f.apply_response(head)

    def __repr__(self) -> str:
        return f"Backend({self.cluster!r}, weight={self.weight})"


class MirrorBinding:
    """A rule's RequestMirror on the proxy side: the compiled filter, the copies' plan (no
    retries; the rule's request timeout) and the mirror cluster's runtime (bound by
    `RouteTable.bind`; None until then: copies are skipped)."""

    __slots__ = ("cluster", "mirror", "plan")

    def __init__(self, mirror: Mirror, plan: RulePlan) -> None:
        self.mirror = mirror
        self.plan = plan
        self.cluster: ClusterRuntime | None = None

    def __repr__(self) -> str:
        return f"MirrorBinding({self.mirror!r})"


class RouteMatch:
    """The result of `RouteTable.match`: one (rule, match) pair, compiled once.

    Attributes:
        virtual_host: the Snapshot's VirtualHost.
        rule: the Snapshot's RouteRule (timeouts, retry policy, name).
        match_index: which of the rule's matches held (0 for a rule without matches).
        matched_prefix: the PathPrefix value that matched (b"/" for a match without a path), None
            for Exact / RegularExpression paths.
        redirect: a RequestRedirect to answer with locally, or None.
        request_filters / response_filters: the rule's header modifiers and URL rewrite, in order.
        backends: the backends with a weight above 0.
        fault: the rule's Fault filter (filters/fault.py), or None.
        mirror: the rule's RequestMirror, or None.
        fallback: the rule's compiled Fallback (proxy/fallback.py), or None.
    """

    __slots__ = (
        "_cumulative",
        "_single",
        "_total",
        "backends",
        "fallback",
        "fault",
        "match_index",
        "matched_prefix",
        "mirror",
        "redirect",
        "request_filters",
        "response_filters",
        "rule",
        "virtual_host",
    )

    def __init__(
        self,
        virtual_host: snap.VirtualHost,
        rule: snap.RouteRule,
        match_index: int,
        matched_prefix: bytes | None,
        redirect: RedirectFilter | None,
        request_filters: tuple[RequestFilter, ...],
        response_filters: tuple[ResponseFilter, ...],
        backends: tuple[Backend, ...],
        fault: FaultInjector | None = None,
        mirror: MirrorBinding | None = None,
        fallback: FallbackPlan | None = None,
    ) -> None:
        self.virtual_host = virtual_host
        self.fault = fault
        self.mirror = mirror
        self.fallback = fallback
        self.rule = rule
        self.match_index = match_index
        self.matched_prefix = matched_prefix
        self.redirect = redirect
        self.request_filters = request_filters
        self.response_filters = response_filters
        self.backends = tuple(b for b in backends if b.weight > 0)
        self._single = self.backends[0] if len(self.backends) == 1 else None
        cumulative: list[int] = []
        total = 0
        for b in self.backends:
            total += b.weight
            cumulative.append(total)
        self._cumulative = cumulative
        self._total = total

    @property
    def has_backend(self) -> bool:
        """False when the rule has no backend with weight > 0: answer with NO_BACKEND (500)."""
        return bool(self.backends)

    def pick_backend(self, rand: float) -> Backend | None:
        """Choose a backend in proportion to the weights.

        Args:
            rand: a uniform float in [0, 1), e.g. `random.Random().random()`.

        Returns:
            The backend, or None when there is none with weight > 0 (answer NO_BACKEND, 500).
        """
        single = self._single
        if single is not None:
            return single
        cumulative = self._cumulative
        if not cumulative:
            return None
        i = bisect_right(cumulative, rand * self._total)
        backends = self.backends
        return backends[i] if i < len(backends) else backends[-1]

    def apply_request(self, head: RequestHead) -> None:
        """Run the rule's request filters (header modifiers, URL rewrite) on `head`."""
        for f in self.request_filters:
            f.apply_request(head)

    def apply_response(self, head: ResponseHead) -> None:
        """Run the rule's response header modifiers on `head`."""
        for f in self.response_filters:
            f.apply_response(head)

    def __repr__(self) -> str:
        return f"RouteMatch({self.virtual_host.name!r}, {self.rule.name!r}#{self.match_index})"


class _VirtualHost:
    __slots__ = ("entries", "spec")

    def __init__(
        self, spec: snap.VirtualHost, entries: tuple[tuple[Condition | None, RouteMatch], ...]
    ) -> None:
        self.spec = spec
        self.entries = entries


class RouteTable:
    """The compiled routes of one Snapshot. Immutable once built; swap the whole table."""

    __slots__ = (
        "_any_port",
        "_default",
        "_hosts",
        "_wildcards",
        "caches",
        "fallbacks",
        "mirrors",
        "virtual_hosts",
    )

    def __init__(self) -> None:
        self._hosts: dict[bytes, _VirtualHost] = {}
        self._any_port: dict[bytes, _VirtualHost] = {}
        self._wildcards: list[tuple[bytes, int | None, _VirtualHost]] = []
        self._default: _VirtualHost | None = None
        self.virtual_hosts: dict[str, snap.VirtualHost] = {}
        # Rules' fallback caches by "host|rule|backend clusters": handed to the next table, so a
        # Snapshot update (endpoints come and go exactly when backends fail) keeps the responses
        # kept so far.
        self.caches: dict[str, ResponseCache] = {}
        self.fallbacks: list[FallbackPlan] = []
        self.mirrors: list[MirrorBinding] = []

    @classmethod
    def compile(
        cls,
        snapshot: snap.Snapshot,
        default_host: str | None = None,
        *,
        counters: ResilienceCounters | None = None,
        clock: Callable[[], float] | None = None,
        previous: RouteTable | None = None,
    ) -> RouteTable:
        """Compile a Snapshot's virtual hosts.

        Args:
            snapshot: the Snapshot; every backend must name one of its clusters.
            default_host: a host (e.g. a service name) to route as when the request's host matches
                no virtual host (`gossamer proxy --default-host`). When the Snapshot has no virtual
                host for it, there is no fallback (such requests get no-route) until one does.
            counters: the metric families faults, mirrors and fallbacks count in (the data
                plane's, `fallback.resilience_counters`); None: private ones.
            clock: the clock of fallback caches (the event loop's); None: `time.monotonic`.
            previous: the table this one replaces: fallback caches of rules with the same name,
                backend clusters and sizes carry over.

        Raises:
            RouteCompileError: a bad regex, path, method, header name, filter, weight or port, or
                a backend naming a cluster the Snapshot does not have; the reason names the
                virtual host and the rule.
        """
        table = cls()
        clusters = {c.name for c in snapshot.clusters}
        ctx = _Context(
            counters or ResilienceCounters(),
            clock or time.monotonic,
            previous.caches if previous is not None else {},
            table,
        )
        for vh in snapshot.virtual_hosts:
            compiled = _compile_virtual_host(vh, clusters, ctx)
            table.virtual_hosts.setdefault(vh.name, vh)
            table._add_domains(compiled)
        table._wildcards.sort(key=lambda w: -len(w[0]))
        if default_host:
            host = _encode_host(default_host.strip().lower(), "default host")
            table._default = table._lookup(host)
        return table

    def bind(self, clusters: Mapping[str, ClusterRuntime]) -> None:
        """Point mirrors and backend fallbacks at the data plane's cluster runtimes."""
        for binding in self.mirrors:
            binding.cluster = clusters.get(binding.mirror.cluster)
        for plan in self.fallbacks:
            backend = plan.backend
            plan.backend_cluster = clusters.get(backend.cluster) if backend is not None else None

    def _add_domains(self, vh: _VirtualHost) -> None:
        port = vh.spec.port
        if port is not None and not 1 <= port <= 65535:
            raise RouteCompileError(f"virtual host {vh.spec.name!r}: port {port} is not in 1-65535")
        for domain in vh.spec.domains:
            try:
                key = syntax.encode_domain(domain)
            except ValueError as e:
                raise RouteCompileError(f"virtual host {vh.spec.name!r}: {e}") from None
            name, own_port = split_authority(key)
            if name.startswith(b"*."):
                self._wildcards.append((name[1:], own_port or port, vh))
            elif own_port is not None:
                self._hosts.setdefault(key, vh)
            elif port is None:
                self._hosts.setdefault(key, vh)
                self._any_port.setdefault(key, vh)
            else:
                self._hosts.setdefault(key + b":" + str(port).encode(), vh)
                if port == 80:
                    self._hosts.setdefault(key, vh)

    def _lookup(self, host: bytes) -> _VirtualHost | None:
        vh = self._hosts.get(host)
        if vh is not None:
            return vh
        name, port = split_authority(host.lower())
        name = name.rstrip(b".")
        if port is not None:
            vh = self._hosts.get(name + b":" + str(port).encode())
            if vh is None:
                vh = self._any_port.get(name)
        else:
            vh = self._hosts.get(name)
        if vh is None and self._wildcards:
            for suffix, wport, wvh in self._wildcards:
                if (
                    name.endswith(suffix)
                    and len(name) > len(suffix)
                    and (wport is None or wport == (port or 80))
                ):
                    return wvh
        return vh

    def match(self, head: RequestHead) -> RouteMatch | None:
        """Find the route for a request, or None (answer no-route, 404)."""
        vh = self._hosts.get(head.host)
        if vh is None:
            vh = self._lookup(head.host) or self._default
            if vh is None:
                return None
        path = head.path
        query: dict[bytes, bytes] | None = None
        # match.Condition.matches, inlined: no call per rule, the query parsed once per request.
        for cond, route in vh.entries:
            if cond is None:
                return route
            if cond.method is not None and head.method != cond.method:
                continue
            kind = cond.path_kind
            if kind == PREFIX:
                if path != cond.path and not path.startswith(cond.path_slash):
                    continue
            elif kind == EXACT:
                if path != cond.path:
                    continue
            elif kind == REGEX:
                assert cond.path_re is not None
                if cond.path_re.fullmatch(path) is None:
                    continue
            if cond.headers and not headers_match(cond.headers, head.headers):
                continue
            if cond.query:
                if query is None:
                    query = parse_query(head.query)
                if not query_match(cond.query, query):
                    continue
            return route
        return None

    def __repr__(self) -> str:
        return f"RouteTable({len(self.virtual_hosts)} virtual hosts)"


def _encode_host(host: str, where: str) -> bytes:
    try:
        return syntax.encode_host(host)
    except ValueError as e:
        raise RouteCompileError(f"{where}: {e}") from None


def _compile_condition(m: snap.RouteMatch, where: str) -> Condition:
    try:
        return match_mod.compile_condition(m, where)
    except ValueError as e:
        raise RouteCompileError(str(e)) from None


def _compile_filters(
    filters: Sequence[snap.RouteFilter], prefix: bytes | None, where: str
) -> tuple[RedirectFilter | None, tuple[RequestFilter, ...], tuple[ResponseFilter, ...]]:
    redirect: RedirectFilter | None = None
    rewrites = 0
    request: list[RequestFilter] = []
    response: list[ResponseFilter] = []
    try:
        for i, f in enumerate(filters):
            fwhere = f"{where}, filter #{i} ({type(f).__name__.removesuffix('Filter')})"
            if isinstance(f, snap.RequestHeaderModifierFilter):
                request.append(header_filter.compile(f.request_header_modifier, fwhere))
            elif isinstance(f, snap.ResponseHeaderModifierFilter):
                response.append(header_filter.compile(f.response_header_modifier, fwhere))
            elif isinstance(f, snap.RequestRedirectFilter):
                if redirect is not None:
                    raise ValueError(f"{fwhere}: only one RequestRedirect per rule")
                redirect = redirect_filter.compile(f.request_redirect, prefix, fwhere)
            elif isinstance(f, snap.FaultFilter | snap.RequestMirrorFilter):
                continue  # rule-level, compiled once per rule by _compile_rule_extras
            else:
                rewrites += 1
                if rewrites > 1:
                    raise ValueError(f"{fwhere}: only one URLRewrite per rule")
                request.append(rewrite_filter.compile(f.url_rewrite, prefix, fwhere))
    except ValueError as e:
        raise RouteCompileError(str(e)) from None
    if redirect is not None and rewrites:
        raise RouteCompileError(f"{where}: RequestRedirect and URLRewrite cannot both be set")
    return redirect, tuple(request), tuple(response)


def _compile_backends(
    rule: snap.RouteRule, prefix: bytes | None, clusters: set[str], where: str
) -> tuple[Backend, ...]:
    out = []
    for i, wc in enumerate(rule.backends):
        bwhere = f"{where}, backend #{i} ({wc.cluster!r})"
        if wc.cluster not in clusters:
            raise RouteCompileError(f"{bwhere}: cluster {wc.cluster!r} is not in the snapshot")
        if wc.weight < 0:
            raise RouteCompileError(f"{bwhere}: weight {wc.weight} is negative")
        redirect, request, response = _compile_filters(wc.filters, prefix, bwhere)
        if redirect is not None:
            raise RouteCompileError(f"{bwhere}: RequestRedirect is not supported on a backend")
        _no_rule_level_filters(wc.filters, bwhere)
        out.append(Backend(wc, request, response))
    return tuple(out)


def _no_rule_level_filters(filters: Sequence[snap.RouteFilter], where: str) -> None:
    for f in filters:
        if isinstance(f, snap.FaultFilter | snap.RequestMirrorFilter):
            kind = type(f).__name__.removesuffix("Filter")
            raise RouteCompileError(f"{where}: {kind} is supported on a rule, not on a backend")


class _Context:
    """What compiling the resilience parts of rules needs besides the Snapshot."""

    __slots__ = ("caches", "clock", "counters", "table")

    def __init__(
        self,
        counters: ResilienceCounters,
        clock: Callable[[], float],
        caches: dict[str, ResponseCache],
        table: RouteTable,
    ) -> None:
        self.counters = counters
        self.clock = clock
        self.caches = caches
        self.table = table


def _side_plan(rule: snap.RouteRule) -> RulePlan:
    """One try, no retries, the rule's request timeout (or DEFAULT_SIDE_TIMEOUT)."""
    timeout = rule.timeouts.request or DEFAULT_SIDE_TIMEOUT
    return RulePlan(snap.RouteRule(name=rule.name, timeouts=snap.Timeouts(request=timeout)))


def _compile_rule_extras(
    vh: snap.VirtualHost, rule: snap.RouteRule, clusters: set[str], ctx: _Context, where: str
) -> tuple[FaultInjector | None, MirrorBinding | None, FallbackPlan | None]:
    """The rule's Fault, RequestMirror and Fallback, compiled once for all its matches."""
    fault: FaultInjector | None = None
    mirror: MirrorBinding | None = None
    for i, f in enumerate(rule.filters):
        fwhere = f"{where}, filter #{i} ({type(f).__name__.removesuffix('Filter')})"
        try:
            if isinstance(f, snap.FaultFilter):
                if fault is not None:
                    raise ValueError(f"{fwhere}: only one Fault per rule")
                fault = fault_filter.compile(f.fault, rule.name, ctx.counters.faults, fwhere)
            elif isinstance(f, snap.RequestMirrorFilter):
                if mirror is not None:
                    raise ValueError(f"{fwhere}: only one RequestMirror per rule")
                if f.request_mirror.cluster not in clusters:
                    raise ValueError(
                        f"{fwhere}: cluster {f.request_mirror.cluster!r} is not in the snapshot"
                    )
                compiled = mirror_filter.compile(f.request_mirror, ctx.counters.mirrors, fwhere)
                mirror = MirrorBinding(compiled, _side_plan(rule))
                ctx.table.mirrors.append(mirror)
        except ValueError as e:
            raise RouteCompileError(str(e)) from None
    plan = None
    if rule.fallback is not None:
        # Rule names repeat across virtual hosts ("default"): the cache is the (host, rule)'s,
        # and its backends': a rule sent elsewhere must not serve the old backends' answers.
        name = f"{vh.name}|{rule.name}|{','.join(sorted({b.cluster for b in rule.backends}))}"
        plan = _compile_fallback(rule, rule.fallback, clusters, ctx, name, f"{where}, fallback")
    return fault, mirror, plan


def _compile_fallback(
    rule: snap.RouteRule,
    spec: snap.Fallback,
    clusters: set[str],
    ctx: _Context,
    cache_name: str,
    where: str,
) -> FallbackPlan:
    try:
        fallback_mod.check(spec, where)
        static = None
        if spec.response is not None:
            static = fallback_mod.compile_static(spec.response, f"{where}, response")
    except ValueError as e:
        raise RouteCompileError(str(e)) from None
    backend = None
    if spec.backend is not None:
        wc = spec.backend
        bwhere = f"{where}, backend ({wc.cluster!r})"
        if wc.cluster not in clusters:
            raise RouteCompileError(f"{bwhere}: cluster {wc.cluster!r} is not in the snapshot")
        redirect, request, response = _compile_filters(wc.filters, b"/", bwhere)
        if redirect is not None:
            raise RouteCompileError(f"{bwhere}: RequestRedirect is not supported on a backend")
        _no_rule_level_filters(wc.filters, bwhere)
        backend = Backend(wc, request, response)
    cache = None
    if spec.max_stale is not None:
        cache = ctx.caches.get(cache_name)
        if (
            cache is None
            or cache.max_entries != spec.max_entries
            or cache.max_body_bytes != spec.max_body_bytes
        ):
            cache = ResponseCache(spec.max_entries, spec.max_body_bytes, ctx.clock)
        ctx.table.caches[cache_name] = cache
    plan = FallbackPlan(
        rule.name,
        ctx.counters.fallbacks,
        spec.max_stale,
        cache,
        backend,
        _side_plan(rule) if backend is not None else None,
        static,
    )
    ctx.table.fallbacks.append(plan)
    return plan


def _compile_virtual_host(vh: snap.VirtualHost, clusters: set[str], ctx: _Context) -> _VirtualHost:
    entries: list[tuple[Condition | None, RouteMatch]] = []
    for ri, rule in enumerate(vh.rules):
        where = f"virtual host {vh.name!r}, rule {rule.name or ri!r}"
        fault, mirror, fallback = _compile_rule_extras(vh, rule, clusters, ctx, where)
        conds: list[tuple[Condition | None, bytes | None]] = []
        if not rule.matches:
            conds.append((None, b"/"))
        for mi, m in enumerate(rule.matches):
            cond = _compile_condition(m, f"{where}, match #{mi}")
            conds.append((None if cond.is_any else cond, cond.prefix))
        for mi, (entry_cond, prefix) in enumerate(conds):
            redirect, request, response = _compile_filters(rule.filters, prefix, where)
            backends = _compile_backends(rule, prefix, clusters, where)
            route = RouteMatch(
                vh, rule, mi, prefix, redirect, request, response, backends, fault, mirror, fallback
            )
            entries.append((entry_cond, route))
    return _VirtualHost(vh, tuple(entries))
