"""HTTPRoutes -> one virtual host's rules: filters, backends, timeouts, retries and precedence.

Precedence (Gateway API, HTTPRouteRule): matches are ordered across all rules of all routes
attached to a service, not rule by rule, so a rule with several matches is split into one entry per
match, the entries are sorted, and neighbouring entries of the same rule are merged back together
(an OR of adjacent matches that share one action is the same as trying them one after another).
The order:

1. path: `Exact`, then `RegularExpression` (longer pattern first), then `PathPrefix` (longer prefix
   first); a match without a path is `PathPrefix /`. The Gateway API leaves regular expressions to
   the implementation; we put them before prefixes as Envoy Gateway does, because the other way
   round a catch-all `PathPrefix /` would shadow every regular expression. Paths of one kind and
   length tie-break by their text, so that the order never follows input order;
2. a method match before none;
3. more header matches first;
4. more query-parameter matches first;
5. then the route: the Gateway API asks for the oldest route first, but resources carry no creation
   time and the translator must not depend on input order, so routes tie by `namespace/name`;
6. then rule order within the route, then match order within the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gossamer import snapshot as snap
from gossamer.config.models import (
    HTTPBackendRef,
    HTTPFaultFilter,
    HTTPHeaderFilter,
    HTTPPathModifier,
    HTTPRoute,
    HTTPRouteFallback,
    HTTPRouteFilter,
    HTTPRouteMatch,
    HTTPRouteRetry,
    HTTPRouteRule,
    HTTPServiceRef,
)
from gossamer.config.precedence import match_precedence

# (service, namespace, subset): the identity of a cluster before it gets its name.
ClusterKey = tuple[str, str, str | None]


class TranslateError(ValueError):
    """A resource the models accepted but the translator cannot use; the message names which."""


def cluster_name(key: ClusterKey) -> str:
    name, namespace, subset = key
    return f"{name}.{namespace}" + (f".{subset}" if subset else "")


@dataclass(frozen=True)
class RuleDefaults:
    """What a rule gets when it does not say: folded in from the Mesh and the module defaults."""

    request_timeout: float | None
    retry: snap.RetryPolicy


@dataclass(frozen=True)
class _Entry:
    key: tuple[int, int, str, int, int, int, str, str, int, int]
    rule_id: tuple[str, str, int]  # (namespace, route name, rule index)
    match: snap.RouteMatch | None  # None: the rule has no matches and takes everything


def build_rules(
    parent: ClusterKey,
    routes: Sequence[HTTPRoute],
    defaults: RuleDefaults,
) -> tuple[list[snap.RouteRule], set[ClusterKey]]:
    """Compile the routes attached to one service into its virtual host's ordered rules.

    Args:
        parent: the service the routes are attached to; rules without backendRefs go to it.
        routes: the HTTPRoutes whose parentRefs name that service (any order).
        defaults: the request timeout and retry policy for rules that set none.

    Returns:
        The rules in precedence order (first match wins) and the clusters they reference.
        With no routes, one rule named "default" sending everything to the service's cluster.
    """
    referenced: set[ClusterKey] = set()
    if not routes:
        referenced.add(parent)
        default = snap.RouteRule(
            name="default",
            backends=[snap.WeightedCluster(cluster=cluster_name(parent))],
            timeouts=snap.Timeouts(request=defaults.request_timeout),
            retry=defaults.retry,
        )
        return [default], referenced

    compiled: dict[tuple[str, str, int], snap.RouteRule] = {}
    entries: list[_Entry] = []
    for route in routes:
        ns, name = route.metadata.namespace, route.metadata.name
        for index, rule in enumerate(route.spec.rules):
            rule_id = (ns, name, index)
            where = f"HTTPRoute {ns}/{name} spec.rules[{index}]"
            compiled[rule_id] = _rule(rule, f"{ns}/{name}#{index}", ns, parent, defaults, where)
            referenced.update(_backend_keys(rule, ns, parent))
            if not rule.matches:
                key = (*match_precedence(None), ns, name, index, 0)
                entries.append(_Entry(key, rule_id, None))
            for m_index, match in enumerate(rule.matches):
                key = (*match_precedence(match), ns, name, index, m_index)
                entries.append(_Entry(key, rule_id, match_to_snapshot(match)))
    entries.sort(key=lambda e: e.key)

    rules: list[snap.RouteRule] = []
    run: list[_Entry] = []
    for entry in entries:
        if run and run[-1].rule_id != entry.rule_id:
            rules.append(_merge(compiled[run[0].rule_id], run))
            run = []
        run.append(entry)
    if run:
        rules.append(_merge(compiled[run[0].rule_id], run))
    return rules, referenced


def _merge(rule: snap.RouteRule, run: list[_Entry]) -> snap.RouteRule:
    matches = [e.match for e in run]
    if any(m is None for m in matches):
        return rule  # matches everything already
    return snap.RouteRule(
        name=rule.name,
        matches=[m for m in matches if m is not None],
        filters=rule.filters,
        backends=rule.backends,
        timeouts=rule.timeouts,
        retry=rule.retry,
        fallback=rule.fallback,
    )


def _backend_keys(rule: HTTPRouteRule, namespace: str, parent: ClusterKey) -> set[ClusterKey]:
    """Every cluster the rule may send to: its backends, mirrors and fallback backend."""
    keys: set[ClusterKey] = {_ref_key(ref, namespace) for ref in _side_refs(rule)}
    if not rule.backend_refs:
        return keys if _redirects(rule) else keys | {parent}
    return keys | {(b.name, b.namespace or namespace, b.subset) for b in rule.backend_refs}


def _side_refs(rule: HTTPRouteRule) -> list[HTTPServiceRef]:
    """The services a rule names besides its backends: mirror targets and a fallback backend."""
    refs = [f.request_mirror.backend_ref for f in rule.filters if f.request_mirror is not None]
    if rule.fallback is not None and rule.fallback.backend_ref is not None:
        refs.append(rule.fallback.backend_ref)
    return refs


def _ref_key(ref: HTTPServiceRef, namespace: str) -> ClusterKey:
    return (ref.name, ref.namespace or namespace, ref.subset)


def _redirects(rule: HTTPRouteRule) -> bool:
    return any(f.type == "RequestRedirect" for f in rule.filters)


def _rule(
    rule: HTTPRouteRule,
    name: str,
    namespace: str,
    parent: ClusterKey,
    defaults: RuleDefaults,
    where: str,
) -> snap.RouteRule:
    if rule.backend_refs:
        backends = [
            _backend(b, namespace, f"{where}.backendRefs[{i}]")
            for i, b in enumerate(rule.backend_refs)
        ]
    elif _redirects(rule):
        backends = []  # the redirect answers locally
    else:
        # Linkerd's reading of GAMMA: a rule without backendRefs goes to its parent Service, so a
        # route can add a timeout or a header to some paths without repeating the backend.
        backends = [snap.WeightedCluster(cluster=cluster_name(parent))]
    request = defaults.request_timeout
    backend_request = None
    if rule.timeouts is not None:
        if "request" in rule.timeouts.model_fields_set:
            request = rule.timeouts.request
        backend_request = rule.timeouts.backend_request
    return snap.RouteRule(
        name=name,
        filters=[
            convert_filter(f, f"{where}.filters[{i}]", namespace)
            for i, f in enumerate(rule.filters)
        ],
        backends=backends,
        # Gateway API: a zero duration disables the timeout; the Snapshot says that with None.
        timeouts=snap.Timeouts(request=request or None, backend_request=backend_request or None),
        retry=convert_retry(rule.retry) if rule.retry is not None else defaults.retry,
        fallback=_fallback(rule.fallback, namespace) if rule.fallback is not None else None,
    )


def _backend(ref: HTTPBackendRef, namespace: str, where: str) -> snap.WeightedCluster:
    key = (ref.name, ref.namespace or namespace, ref.subset)
    return snap.WeightedCluster(
        cluster=cluster_name(key),
        weight=ref.weight,
        filters=[
            convert_filter(f, f"{where}.filters[{i}]", namespace) for i, f in enumerate(ref.filters)
        ],
    )


def _fallback(spec: HTTPRouteFallback, namespace: str) -> snap.Fallback:
    """The rule's fallback; a backendRef to a missing service gets an empty cluster, as a
    backend does (validation reports it), so the response (if any) is served after it."""
    backend = None
    if spec.backend_ref is not None:
        backend = snap.WeightedCluster(cluster=cluster_name(_ref_key(spec.backend_ref, namespace)))
    response = None
    if spec.response is not None:
        r = spec.response
        response = snap.StaticResponse(
            status=r.status,
            headers=[snap.HeaderValue(name=h.name.lower(), value=h.value) for h in r.headers],
            body=r.body,
        )
    extra: dict[str, int] = {}
    if spec.max_body_bytes is not None:
        extra["max_body_bytes"] = spec.max_body_bytes
    if spec.max_entries is not None:
        extra["max_entries"] = spec.max_entries
    return snap.Fallback(max_stale=spec.max_stale, backend=backend, response=response, **extra)


def match_to_snapshot(match: HTTPRouteMatch) -> snap.RouteMatch:
    """One HTTPRouteMatch (of a rule, or of a rate limit) in the Snapshot's form."""
    return snap.RouteMatch(
        path=(
            snap.PathMatch(type=match.path.type, value=match.path.value)
            if match.path is not None
            else None
        ),
        headers=[
            snap.HeaderMatch(name=h.name.lower(), value=h.value, type=h.type) for h in match.headers
        ],
        query_params=[
            snap.QueryParamMatch(name=q.name, value=q.value, type=q.type)
            for q in match.query_params
        ],
        method=match.method,
    )


def convert_retry(retry: HTTPRouteRetry) -> snap.RetryPolicy:
    return snap.RetryPolicy(
        attempts=retry.attempts,
        per_try_timeout=retry.per_try_timeout or None,
        retry_on=list(dict.fromkeys(retry.retry_on)),
        retriable_status_codes=sorted(set(retry.retriable_status_codes)),
        backoff=snap.Backoff(
            base_interval=retry.backoff.base_interval,
            max_interval=retry.backoff.max_interval,
        ),
    )


def convert_filter(f: HTTPRouteFilter, where: str, namespace: str) -> snap.RouteFilter:
    """One route or backend filter in the Snapshot's tagged form; header names are lower-cased.

    `namespace` is the route's: a mirror's backendRef without one names a service there.
    """
    if f.type == "RequestHeaderModifier" and f.request_header_modifier is not None:
        return snap.RequestHeaderModifierFilter(
            request_header_modifier=_headers(f.request_header_modifier)
        )
    if f.type == "ResponseHeaderModifier" and f.response_header_modifier is not None:
        return snap.ResponseHeaderModifierFilter(
            response_header_modifier=_headers(f.response_header_modifier)
        )
    if f.type == "RequestRedirect" and f.request_redirect is not None:
        r = f.request_redirect
        return snap.RequestRedirectFilter(
            request_redirect=snap.RequestRedirect(
                scheme=r.scheme,
                hostname=r.hostname.lower() if r.hostname else None,
                path=_path(r.path),
                port=r.port,
                status_code=r.status_code,
            )
        )
    if f.type == "URLRewrite" and f.url_rewrite is not None:
        u = f.url_rewrite
        return snap.URLRewriteFilter(
            url_rewrite=snap.URLRewrite(
                hostname=u.hostname.lower() if u.hostname else None,
                path=_path(u.path),
            )
        )
    if f.type == "Fault" and f.fault is not None:
        return snap.FaultFilter(fault=_fault(f.fault))
    if f.type == "RequestMirror" and f.request_mirror is not None:
        m = f.request_mirror
        return snap.RequestMirrorFilter(
            request_mirror=snap.RequestMirror(
                cluster=cluster_name(_ref_key(m.backend_ref, namespace)),
                percentage=m.percentage,
            )
        )
    raise TranslateError(f"{where}: filter of type {f.type} has no matching configuration")


def _fault(spec: HTTPFaultFilter) -> snap.Fault:
    delay = abort = None
    if spec.delay is not None:
        delay = snap.FaultDelay(
            fixed_delay=spec.delay.fixed_delay, percentage=float(spec.delay.percentage)
        )
    if spec.abort is not None:
        abort = snap.FaultAbort(
            http_status=spec.abort.http_status, percentage=float(spec.abort.percentage)
        )
    return snap.Fault(
        delay=delay,
        abort=abort,
        headers=[
            snap.HeaderMatch(name=h.name.lower(), value=h.value, type=h.type) for h in spec.headers
        ],
    )


def _headers(h: HTTPHeaderFilter) -> snap.HeaderModifier:
    return snap.HeaderModifier(
        set=[snap.HeaderValue(name=v.name.lower(), value=v.value) for v in h.set],
        add=[snap.HeaderValue(name=v.name.lower(), value=v.value) for v in h.add],
        remove=[name.lower() for name in h.remove],
    )


def _path(p: HTTPPathModifier | None) -> snap.PathModifier | None:
    if p is None:
        return None
    value = p.replace_full_path if p.type == "ReplaceFullPath" else p.replace_prefix_match
    if value is None:
        raise TranslateError(f"path modifier of type {p.type} has no value")
    return snap.PathModifier(type=p.type, value=value)
