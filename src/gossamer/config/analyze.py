"""Analysis of a mesh's configuration: settings that are legal but wrong, as findings with codes.

`validate` refuses what cannot work at all (an unknown field, a route to a service nobody defined).
`analyze` looks for what loads, applies and then misbehaves: a route to a service with no replicas,
a rule that never gets a request because an earlier one takes them all, a DENY that leaves an ALLOW
nothing to allow, retries that repeat a POST. Each finding has a stable code (`GSM001`...), a
severity fixed by its code, the resource and field it is about (with file and line for files) and a
hint on what to change. The codes are listed in `RULES` and documented in docs/analyze.md.

A pure function: resources in (as loaded, with their YAML positions), and optionally the
registry's endpoints (a live mesh); without endpoints, a service's endpoints are its `replicas`.
The cross-resource problems `validate.check` finds are reported too (GSM000, or GSM030 for a
policy whose target is missing), so one call says everything wrong with a mesh.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gossamer.config import models
from gossamer.config.errors import Problem
from gossamer.config.loader import Loaded, Unloaded
from gossamer.config.precedence import match_precedence
from gossamer.config.validate import STORED, check

Severity = Literal["error", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "info")


@dataclass(frozen=True, slots=True)
class Rule:
    """One kind of finding: its code, severity and a short title (docs/analyze.md's table)."""

    code: str
    severity: Severity
    title: str


_RULES: tuple[Rule, ...] = (
    Rule("GSM000", "error", "invalid configuration (what `gossamer validate` refuses)"),
    Rule("GSM001", "error", "a route sends traffic to a service or subset with no endpoints"),
    Rule("GSM002", "error", "a rule's backend weights sum to zero over the backends that serve"),
    Rule("GSM003", "warning", "a service or subset has endpoints, but none is healthy and ready"),
    Rule("GSM004", "warning", "a service with no endpoints and no route elsewhere"),
    Rule("GSM005", "warning", "a mirror or fallback backend has no endpoints"),
    Rule("GSM010", "warning", "a route rule is shadowed: earlier rules take all its requests"),
    Rule("GSM011", "info", "one match of a rule is shadowed by an earlier rule"),
    Rule("GSM012", "warning", "a route hostname is already taken by another service"),
    Rule("GSM020", "warning", "retries on failures after the app may have acted, for POST/PATCH"),
    Rule("GSM021", "info", "retries on failures after the app may have acted, for any method"),
    Rule("GSM022", "warning", "the per-try timeout is not shorter than the request timeout"),
    Rule("GSM023", "warning", "retries asked for, but the backend's policy allows none"),
    Rule("GSM024", "warning", "a rule mirrors to the backend it already sends to"),
    Rule("GSM025", "warning", "a rule's fallback backend is the backend that failed"),
    Rule("GSM026", "warning", "a Fault filter aborts every request"),
    Rule("GSM030", "error", "a policy's target does not exist: it selects nothing"),
    Rule("GSM031", "info", "a DestinationPolicy's target has no endpoints"),
    Rule(
        "GSM032", "warning", "a namespace-wide AuthorizationPolicy in a namespace without services"
    ),
    Rule("GSM033", "warning", "a DestinationPolicy setting is overridden by another policy"),
    Rule("GSM034", "info", "a DestinationPolicy sets nothing"),
    Rule("GSM040", "warning", "outlier detection may eject 100% but the panic threshold is > 0"),
    Rule("GSM041", "warning", "outlier detection is on but may eject 0% of endpoints"),
    Rule("GSM042", "warning", "a health check's timeout is not shorter than its interval"),
    Rule("GSM050", "warning", "an ALLOW AuthorizationPolicy with no rules denies every request"),
    Rule("GSM051", "warning", "a DENY or AUDIT AuthorizationPolicy with no rules does nothing"),
    Rule("GSM052", "warning", "a DENY makes an ALLOW rule unreachable"),
    Rule("GSM053", "error", "an AuthorizationPolicy checks identities on a service without mTLS"),
    Rule("GSM054", "warning", "a DENY by identity on a PERMISSIVE service: plaintext passes"),
    Rule("GSM060", "warning", "a Global rate limit fails closed: a Redis outage refuses traffic"),
    Rule("GSM061", "info", "a Local rate limit counts per replica"),
    Rule("GSM070", "info", "mTLS is disabled: plaintext between sidecars"),
)
RULES: dict[str, Rule] = {r.code: r for r in _RULES}


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the analysis found.

    `resource` is "Kind/namespace/name" ("" for a problem with a whole file); `path` the field in
    the resource's own words ("spec.rules[1].matches[0]"); `file` and `line` are None for
    resources that did not come from a file (the live mesh).
    """

    code: str
    resource: str
    path: str
    message: str
    hint: str
    file: str | None = None
    line: int | None = None

    @property
    def severity(self) -> Severity:
        return RULES[self.code].severity

    @property
    def where(self) -> str:
        """ "mesh.yaml:12 spec.rules[0]", or just the path (or file) when the other is unknown."""
        place = ""
        if self.file is not None:
            place = f"{self.file}:{self.line}" if self.line is not None else self.file
        return " ".join(p for p in (place, self.path) if p)

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "severity": self.severity,
            "resource": self.resource,
            "path": self.path,
            "file": self.file,
            "line": self.line,
            "message": self.message,
            "hint": self.hint,
        }


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A registered endpoint of the live mesh (an item of `GET /v1/endpoints`)."""

    service: str
    namespace: str = "default"
    subset: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    healthy: bool = True  # healthy and ready: it would get traffic now

    @classmethod
    def from_api(cls, item: Mapping[str, Any]) -> Endpoint:
        labels = item.get("labels") or {}
        return cls(
            service=str(item.get("service", "")),
            namespace=str(item.get("namespace") or "default"),
            subset=item.get("subset") or None,
            labels={str(k): str(v) for k, v in labels.items()},
            healthy=bool(item.get("healthy", True)) and bool(item.get("ready", True)),
        )


def worst(findings: Iterable[Finding]) -> Severity | None:
    """The most severe severity among `findings`, None when there are none."""
    found = {f.severity for f in findings}
    return next((s for s in SEVERITIES if s in found), None)


def at_least(findings: Iterable[Finding], severity: Severity) -> list[Finding]:
    """The findings as severe as `severity` or more."""
    rank = SEVERITIES.index(severity)
    return [f for f in findings if SEVERITIES.index(f.severity) <= rank]


# --- entry points ---------------------------------------------------------------------------------


def analyze(
    resources: Sequence[Loaded],
    endpoints: Sequence[Endpoint] | None = None,
    unloaded: Iterable[Unloaded] = (),
) -> list[Finding]:
    """Every finding for `resources`, taken to be the whole mesh.

    Args:
        resources: the mesh's resources, as loaded (files keep their positions).
        endpoints: the registry's endpoints of a live mesh; None: files, where a service's
            endpoints are its replicas.
        unloaded: documents that failed to load (already reported): a Service among them still
            counts as known, as in `validate.check`.

    Returns:
        The findings, most severe first, then by file and line, then by resource.
    """
    unloaded = list(unloaded)
    findings = from_problems(check(resources, unloaded), resources)
    mesh = _Mesh(resources, endpoints)
    findings += mesh.run()
    return sort_findings(findings)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    unique = list(dict.fromkeys(findings))
    return sorted(
        unique,
        key=lambda f: (
            SEVERITIES.index(f.severity),
            f.file or "",
            f.line or 0,
            f.resource,
            f.path,
            f.code,
        ),
    )


_POLICY_KINDS = ("DestinationPolicy", "AuthorizationPolicy", "RateLimitPolicy")


def from_problems(problems: Iterable[Problem], resources: Sequence[Loaded]) -> list[Finding]:
    """Findings for validation problems: GSM030 for a policy's missing target, else GSM000.

    The resource a problem belongs to is found from its position (files) or its
    "resources[i]." prefix (JSON); a problem with a document that did not load has none.
    """
    by_file: dict[str, list[tuple[int, Loaded]]] = {}
    by_prefix: dict[str, Loaded] = {}
    for r in resources:
        if r.prefix:
            by_prefix[r.prefix] = r
        start = r.positions.get("")
        if start is not None:
            by_file.setdefault(r.filename, []).append((start[0], r))
    for docs in by_file.values():
        docs.sort(key=lambda d: d[0])
    out: list[Finding] = []
    for p in problems:
        owner = _owner(p, by_file, by_prefix)
        path = p.path
        if owner is not None and owner.prefix and path.startswith(owner.prefix):
            path = path[len(owner.prefix) :]
        kind = owner.resource.kind if owner is not None else ""
        if kind in _POLICY_KINDS and path.startswith("spec.targetRef"):
            code, hint = (
                "GSM030",
                "point targetRef at an existing service (or subset), or delete it",
            )
        else:
            code, hint = "GSM000", "fix the field as the message says (gossamer validate FILE)"
        out.append(
            Finding(
                code,
                owner.key if owner is not None else "",
                path,
                p.message,
                hint,
                p.file if p.file != STORED else None,
                p.line,
            )
        )
    return out


def _owner(
    p: Problem, by_file: dict[str, list[tuple[int, Loaded]]], by_prefix: dict[str, Loaded]
) -> Loaded | None:
    match = re.match(r"resources\[\d+\]\.", p.path)
    if match is not None:
        return by_prefix.get(match.group(0))
    docs = by_file.get(p.file)
    if not docs or p.line is None:
        return None
    owner = None
    for start, loaded in docs:
        if start <= p.line:
            owner = loaded
    return owner


# --- the mesh, indexed once -----------------------------------------------------------------------

_ClusterKey = tuple[str, str, str | None]  # (namespace, service, subset)
_IDEMPOTENT_SAFE = frozenset({"connect-failure"})
_NON_IDEMPOTENT = frozenset({"POST", "PATCH"})


@dataclass(frozen=True)
class _Count:
    """A cluster's endpoints: how many exist (replicas or registered) and how many serve now."""

    total: int
    healthy: int


class _Mesh:
    def __init__(self, resources: Sequence[Loaded], endpoints: Sequence[Endpoint] | None) -> None:
        self.live = endpoints is not None
        self.endpoints = list(endpoints or ())
        self.findings: list[Finding] = []
        seen: set[str] = set()
        unique: list[Loaded] = []
        for r in resources:
            if r.key not in seen:  # a second definition is GSM000 already
                seen.add(r.key)
                unique.append(r)
        self.resources = unique
        meshes = [r for r in unique if isinstance(r.resource, models.Mesh)]
        self.mesh_loaded = meshes[0] if meshes else None
        self.mesh = (
            meshes[0].resource.spec
            if meshes and isinstance(meshes[0].resource, models.Mesh)
            else models.MeshSpec()
        )
        self.services: dict[tuple[str, str], tuple[Loaded, models.Service]] = {}
        self.routes: list[tuple[Loaded, models.HTTPRoute]] = []
        self.dps: list[tuple[Loaded, models.DestinationPolicy]] = []
        self.authz: list[tuple[Loaded, models.AuthorizationPolicy]] = []
        self.rlps: list[tuple[Loaded, models.RateLimitPolicy]] = []
        for r in sorted(unique, key=lambda r: (r.resource.metadata.namespace, r.resource.key)):
            res = r.resource
            ns = res.metadata.namespace
            if isinstance(res, models.Service):
                self.services[(ns, res.metadata.name)] = (r, res)
            elif isinstance(res, models.HTTPRoute):
                self.routes.append((r, res))
            elif isinstance(res, models.DestinationPolicy):
                self.dps.append((r, res))
            elif isinstance(res, models.AuthorizationPolicy):
                self.authz.append((r, res))
            elif isinstance(res, models.RateLimitPolicy):
                self.rlps.append((r, res))
        self._selection: dict[str, list[tuple[str, str]]] = {}
        # Sorted by namespace/name: the order in which the translator lets the first policy win.
        self.dps.sort(key=lambda d: (d[1].metadata.namespace, d[1].metadata.name))

    def run(self) -> list[Finding]:
        self._services()
        for loaded, route in self.routes:
            self._route(loaded, route)
        self._shadowing()
        self._hostnames()
        self._destination_policies()
        self._outlier_and_health()
        self._authorization()
        self._rate_limits()
        self._mtls()
        return self.findings

    def add(self, code: str, loaded: Loaded, path: str, message: str, hint: str) -> None:
        pos = loaded.position(path) if path else loaded.position("")
        file = None if loaded.filename == STORED else loaded.filename
        line = pos[0] if pos is not None and file is not None else None
        self.findings.append(Finding(code, loaded.key, path, message, hint, file, line))

    # --- endpoints -------------------------------------------------------------------------------

    def count(self, key: _ClusterKey) -> _Count | None:
        """The endpoints of a service (subset None) or one subset; None when either is unknown."""
        ns, name, subset = key
        found = self.services.get((ns, name))
        if found is None:
            return None
        spec = found[1].spec
        subset_spec = None
        if subset is not None:
            subset_spec = next((s for s in spec.subsets if s.name == subset), None)
            if subset_spec is None:
                return None
        if not self.live:
            if subset_spec is not None:
                n = subset_spec.replicas
            elif spec.subsets:
                n = sum(s.replicas for s in spec.subsets)
            else:
                n = spec.replicas
            return _Count(n, n)
        labels = subset_spec.labels if subset_spec is not None else {}

        def member(e: Endpoint) -> bool:
            if e.service != name or e.namespace != ns:
                return False
            if subset is None or e.subset == subset:
                return True
            return bool(labels) and all(e.labels.get(k) == v for k, v in labels.items())

        mine = [e for e in self.endpoints if member(e)]
        return _Count(len(mine), sum(e.healthy for e in mine))

    def none_text(self, key: _ClusterKey, which: bool = False) -> str:
        """ "service 'x' has replicas: 0"; with `which`: "service 'x', which has ..." """
        ns, name, subset = key
        what = f"subset {subset!r} of service {name!r}" if subset else f"service {name!r}"
        if ns != "default":
            what += f" (namespace {ns})"
        has = "has no registered endpoint" if self.live else "has replicas: 0"
        return f"{what}, which {has}" if which else f"{what} {has}"

    def none_hint(self, key: _ClusterKey) -> str:
        if self.live:
            return (
                f"start its replicas (gossamer status; the registry: GET /v1/endpoints?service="
                f"{key[1]}), or send the traffic elsewhere"
            )
        what = f"subset {key[2]} of Service {key[1]}" if key[2] else f"Service {key[1]}"
        return f"set the replicas of {what} above 0, or send the traffic elsewhere"

    def _services(self) -> None:
        attached = {
            (p.namespace or route.metadata.namespace, p.name)
            for _, route in self.routes
            for p in route.spec.parent_refs
        }
        for (ns, name), (loaded, service) in self.services.items():
            whole = self.count((ns, name, None))
            if whole is None:
                continue
            if whole.total == 0 and (ns, name) not in attached:
                self.add(
                    "GSM004",
                    loaded,
                    "spec.replicas" if not service.spec.subsets else "spec.subsets",
                    f"{self.none_text((ns, name, None))} and no HTTPRoute sends its requests "
                    "elsewhere: every request to it fails (503 no-healthy-endpoint)",
                    self.none_hint((ns, name, None)),
                )
            if not self.live:
                continue
            keys = [(ns, name, None)] + [(ns, name, s.name) for s in service.spec.subsets]
            for key in keys:
                n = self.count(key)
                if n is not None and n.total > 0 and n.healthy == 0:
                    subset = f"subset {key[2]!r} of " if key[2] else ""
                    self.add(
                        "GSM003",
                        loaded,
                        f"spec.subsets[{service.spec.subsets.index(_subset(service, key[2]))}]"
                        if key[2]
                        else "metadata.name",
                        f"{subset}service {name!r} has {n.total} endpoint(s), none healthy and "
                        "ready: its requests get 503 no-healthy-endpoint",
                        "look at the replicas' readiness probes and logs (gossamer status, "
                        "gossamer proxy-status)",
                    )

    # --- routes ----------------------------------------------------------------------------------

    def _route(self, loaded: Loaded, route: models.HTTPRoute) -> None:
        ns = route.metadata.namespace
        parents = sorted({(p.namespace or ns, p.name) for p in route.spec.parent_refs})
        for r, rule in enumerate(route.spec.rules):
            base = f"spec.rules[{r}]"
            redirects = any(f.type == "RequestRedirect" for f in rule.filters)
            backends: list[tuple[str, _ClusterKey, int]] = [
                (
                    f"{base}.backendRefs[{b}]",
                    (ref.namespace or ns, ref.name, ref.subset),
                    ref.weight,
                )
                for b, ref in enumerate(rule.backend_refs)
            ]
            if not rule.backend_refs and not redirects:
                # GAMMA as Linkerd reads it: a rule without backendRefs goes to its parent.
                backends = [(base, (pns, pname, None), 1) for pns, pname in parents]
            self._backends(loaded, base, rule, backends)
            sending = {key for _, key, weight in backends if weight > 0}
            self._side_refs(loaded, base, rule, sending)
            self._retry(loaded, base, rule, sorted(sending, key=lambda k: (k[0], k[1], k[2] or "")))
            for f, flt in enumerate(rule.filters):
                fault = flt.fault
                if (
                    fault is not None
                    and fault.abort is not None
                    and fault.abort.percentage >= 100
                    and not fault.headers
                ):
                    self.add(
                        "GSM026",
                        loaded,
                        f"{base}.filters[{f}].fault.abort",
                        f"the Fault filter aborts 100% of the rule's requests with "
                        f"{fault.abort.http_status} (flag fault-abort): nothing reaches a backend",
                        "lower abort.percentage, add headers so only test requests are hit, or "
                        "remove the filter when the experiment is over",
                    )

    def _backends(
        self,
        loaded: Loaded,
        base: str,
        rule: models.HTTPRouteRule,
        backends: list[tuple[str, _ClusterKey, int]],
    ) -> None:
        total = sum(w for _, _, w in backends)
        counts = [self.count(key) for _, key, _ in backends]
        for (path, key, weight), n in zip(backends, counts, strict=True):
            if n is None or weight == 0 or n.total > 0:
                continue
            share = f"{100 * weight / total:.0f}% of " if total and len(backends) > 1 else ""
            implicit = " (a rule without backendRefs goes to its parent)" if path == base else ""
            self.add(
                "GSM001",
                loaded,
                path,
                f"the rule sends {share}its requests to {self.none_text(key, True)}{implicit}: "
                "they fail with 503 no-healthy-endpoint",
                self.none_hint(key),
            )
        if not rule.backend_refs or any(n is None for n in counts):
            return
        serving = [
            (p, k, w) for (p, k, w), n in zip(backends, counts, strict=True) if n and n.total
        ]
        if total == 0:
            self.add(
                "GSM002",
                loaded,
                f"{base}.backendRefs",
                "every backendRef has weight 0: the rule answers 500 no-backend",
                "give at least one backendRef a weight above 0",
            )
        elif serving and sum(w for _, _, w in serving) == 0:
            names = ", ".join(_cluster_text(k) for _, k, _ in serving)
            self.add(
                "GSM002",
                loaded,
                f"{base}.backendRefs",
                f"the only backends with endpoints ({names}) have weight 0, the weighted ones "
                "have none: no request of this rule can be served",
                f"move the weight to {names}, or start replicas of the weighted backends",
            )

    def _side_refs(
        self, loaded: Loaded, base: str, rule: models.HTTPRouteRule, sending: set[_ClusterKey]
    ) -> None:
        ns = loaded.resource.metadata.namespace
        refs: list[tuple[str, str, models.HTTPServiceRef]] = [
            (
                f"{base}.filters[{f}].requestMirror.backendRef",
                "mirror",
                flt.request_mirror.backend_ref,
            )
            for f, flt in enumerate(rule.filters)
            if flt.request_mirror is not None
        ]
        if rule.fallback is not None and rule.fallback.backend_ref is not None:
            refs.append((f"{base}.fallback.backendRef", "fallback", rule.fallback.backend_ref))
        for path, what, ref in refs:
            key = (ref.namespace or ns, ref.name, ref.subset)
            n = self.count(key)
            if n is not None and n.total == 0:
                effect = (
                    "the mirrored copies go nowhere"
                    if what == "mirror"
                    else "the fallback cannot answer for a failed request"
                )
                self.add(
                    "GSM005",
                    loaded,
                    path,
                    f"the {what} target: {self.none_text(key)}: {effect}",
                    self.none_hint(key),
                )
            if key in sending and what == "mirror":
                self.add(
                    "GSM024",
                    loaded,
                    path,
                    f"the rule mirrors to {_cluster_text(key)}, which it already sends its "
                    "requests to: each mirrored request reaches that backend twice (twice the "
                    "writes for a POST)",
                    "mirror to another backend (e.g. the next version), or remove the filter",
                )
            if key in sending and what == "fallback":
                self.add(
                    "GSM025",
                    loaded,
                    path,
                    f"the fallback backend {_cluster_text(key)} is a backend of the rule: when "
                    "it fails, the fallback asks the same failing backend again",
                    "fall back to another service or subset, a static response, or maxStale",
                )

    def _retry(
        self, loaded: Loaded, base: str, rule: models.HTTPRouteRule, sending: list[_ClusterKey]
    ) -> None:
        retry = rule.retry
        if retry is None or retry.attempts == 0:
            return
        unsafe = sorted(set(retry.retry_on) - _IDEMPOTENT_SAFE)
        if unsafe:
            methods = [m.method for m in rule.matches] if rule.matches else [None]
            risky = sorted({m for m in methods if m in _NON_IDEMPOTENT})
            on = ", ".join(unsafe)
            hint = (
                "retry only connect-failure for this rule (safe for any method), or match the "
                "idempotent methods (GET, HEAD, PUT, DELETE) in a rule of their own"
            )
            if risky:
                self.add(
                    "GSM020",
                    loaded,
                    f"{base}.retry.retryOn",
                    f"the rule retries {' and '.join(risky)} requests on {on}: after those "
                    "the app may already have acted, so a retry can repeat the write",
                    hint,
                )
            elif None in methods:
                self.add(
                    "GSM021",
                    loaded,
                    f"{base}.retry.retryOn",
                    f"the rule retries on {on} whatever the method: a POST or PATCH the app "
                    "already acted on may be repeated",
                    hint,
                )
        request = self.mesh.defaults.timeouts.request
        if rule.timeouts is not None and "request" in rule.timeouts.model_fields_set:
            request = rule.timeouts.request
        per_try = retry.per_try_timeout
        field_ = f"{base}.retry.perTryTimeout"
        if per_try is None and rule.timeouts is not None:
            per_try, field_ = rule.timeouts.backend_request, f"{base}.timeouts.backendRequest"
        if request and per_try is not None and per_try >= request:
            self.add(
                "GSM022",
                loaded,
                field_,
                f"a try may take {models.format_duration(per_try)}, but the whole request "
                f"times out after {models.format_duration(request)}: a try that times out is "
                "never retried",
                "make the per-try timeout a fraction of the request timeout (e.g. a third, "
                "for 2 retries)",
            )
        for key in sending:
            why = self._no_retries(key)
            if why:
                self.add(
                    "GSM023",
                    loaded,
                    f"{base}.retry.attempts",
                    f"the rule asks for {retry.attempts} retries, but {why}: no retry happens",
                    "raise the DestinationPolicy's limit, or drop the retry block",
                )

    def _no_retries(self, key: _ClusterKey) -> str:
        pool = self._first_setting(key, "connection_pool")
        if isinstance(pool, tuple) and pool[1].max_retries == 0:
            return f"DestinationPolicy {pool[0]} sets connectionPool.maxRetries: 0"
        budget = self._first_setting(key, "retry_budget")
        spec = budget[1] if isinstance(budget, tuple) else self.mesh.defaults.retry_budget
        if spec.ratio == 0 and spec.min_per_second == 0:
            source = f"DestinationPolicy {budget[0]}" if isinstance(budget, tuple) else "the Mesh"
            return f"{source} sets a retry budget of ratio 0 and minPerSecond 0"
        return ""

    def _targeting(self, key: _ClusterKey) -> list[tuple[Loaded, models.DestinationPolicy]]:
        """The policies for a cluster, most specific level first, by namespace/name within one."""
        ns, name, subset = key
        levels = [subset, None] if subset is not None else [None]
        out: list[tuple[Loaded, models.DestinationPolicy]] = []
        for level in levels:
            out += [
                (loaded, p)
                for loaded, p in self.dps
                if p.spec.target_ref.name == name
                and (p.spec.target_ref.namespace or p.metadata.namespace) == ns
                and p.spec.target_ref.subset == level
            ]
        return out

    def _first_setting(self, key: _ClusterKey, attr: str) -> tuple[str, Any] | None:
        for _, p in self._targeting(key):
            value = getattr(p.spec, attr)
            if value is not None:
                return (f"{p.metadata.namespace}/{p.metadata.name}", value)
        return None

    # --- shadowed rules --------------------------------------------------------------------------

    def _shadowing(self) -> None:
        groups: dict[tuple[str, str, str], list[tuple[Loaded, models.HTTPRoute]]] = {}
        for loaded, route in self.routes:
            rns = route.metadata.namespace
            for pns, pname in sorted(
                {(p.namespace or rns, p.name) for p in route.spec.parent_refs}
            ):
                # Producer routes (the service's namespace) apply to everyone; consumer routes
                # only in their own namespace, where they replace the producer's: one group each.
                groups.setdefault((pns, pname, rns), []).append((loaded, route))
        reported: set[tuple[str, int, int]] = set()
        for (_, parent, _), members in sorted(groups.items()):
            entries: list[
                tuple[tuple[Any, ...], Loaded, int, int, models.HTTPRouteMatch | None]
            ] = []
            for loaded, route in members:
                ns, name = route.metadata.namespace, route.metadata.name
                for r, rule in enumerate(route.spec.rules):
                    if not rule.matches:
                        entries.append(
                            ((*match_precedence(None), ns, name, r, 0), loaded, r, -1, None)
                        )
                    for m, match in enumerate(rule.matches):
                        key = (*match_precedence(match), ns, name, r, m)
                        entries.append((key, loaded, r, m, match))
            entries.sort(key=lambda e: e[0])
            shadowed: dict[tuple[str, int], list[tuple[int, str]]] = {}
            for i, (_, loaded, r, m, this) in enumerate(entries):
                for _, eloaded, er, em, earlier in entries[:i]:
                    if (eloaded.key, er) == (loaded.key, r):
                        continue
                    if _covers(earlier, this):
                        by = f"{eloaded.key} spec.rules[{er}]" + (
                            f".matches[{em}]" if em >= 0 else ""
                        )
                        shadowed.setdefault((loaded.key, r), []).append((m, by))
                        break
            for loaded, route in members:
                for r, rule in enumerate(route.spec.rules):
                    hits = shadowed.get((loaded.key, r), [])
                    wanted = max(1, len(rule.matches))
                    if len(hits) == wanted and (loaded.key, r, -2) not in reported:
                        reported.add((loaded.key, r, -2))
                        self.add(
                            "GSM010",
                            loaded,
                            f"spec.rules[{r}]",
                            f"the rule never gets a request for service {parent!r}: "
                            f"{hits[0][1]} matches everything it does and comes first",
                            "remove the rule, or make its matches more specific than the earlier "
                            "rule's (a longer path, a method or a header): the more specific match "
                            "is tried first, whatever the order of the rules",
                        )
                        continue
                    if len(hits) == wanted:
                        continue
                    for m, by in hits:
                        if (loaded.key, r, m) in reported:
                            continue
                        reported.add((loaded.key, r, m))
                        self.add(
                            "GSM011",
                            loaded,
                            f"spec.rules[{r}].matches[{m}]",
                            f"this match never applies for service {parent!r}: {by} takes "
                            "every request it matches first",
                            "remove the match, or make it more specific",
                        )

    def _hostnames(self) -> None:
        taken: dict[str, str] = {}
        for ns, name in sorted(self.services):
            for domain in (f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"):
                taken[domain] = f"{ns}/{name}"
        for loaded, route in sorted(
            self.routes, key=lambda x: (x[1].metadata.namespace, x[1].metadata.name)
        ):
            rns = route.metadata.namespace
            parents = sorted({(p.namespace or rns, p.name) for p in route.spec.parent_refs})
            for h, host in enumerate(route.spec.hostnames):
                for pns, pname in parents:
                    owner = taken.setdefault(host.lower(), f"{pns}/{pname}")
                    if owner != f"{pns}/{pname}":
                        self.add(
                            "GSM012",
                            loaded,
                            f"spec.hostnames[{h}]",
                            f"{host!r} already names service {owner}: requests for it go "
                            f"there, not to {pns}/{pname}",
                            "use another hostname, or attach the route to the service that owns it",
                        )

    # --- DestinationPolicy ------------------------------------------------------------------------

    def _destination_policies(self) -> None:
        fields = ("load_balancer", "connection_pool", "retry_budget", "health_check")
        for loaded, dp in self.dps:
            ref = dp.spec.target_ref
            key = (ref.namespace or dp.metadata.namespace, ref.name, ref.subset)
            written = [f for f in (*fields, "outlier_detection") if getattr(dp.spec, f) is not None]
            if not written:
                self.add(
                    "GSM034",
                    loaded,
                    "spec",
                    "the policy sets nothing besides its targetRef: it changes nothing",
                    "add a setting (loadBalancer, connectionPool, ...), or delete the policy",
                )
            n = self.count(key)
            if n is not None and n.total == 0 and ref.subset is not None:
                self.add(
                    "GSM031",
                    loaded,
                    "spec.targetRef",
                    f"the policy applies to nobody now: {self.none_text(key)}",
                    self.none_hint(key),
                )
            same_level = [
                (other_loaded, other)
                for other_loaded, other in self.dps
                if other is not dp
                and other.spec.target_ref.name == ref.name
                and (other.spec.target_ref.namespace or other.metadata.namespace) == key[0]
                and other.spec.target_ref.subset == ref.subset
            ]
            earlier = [
                o
                for o in same_level
                if (o[1].metadata.namespace, o[1].metadata.name)
                < (dp.metadata.namespace, dp.metadata.name)
            ]
            for f in fields:
                if getattr(dp.spec, f) is None:
                    continue
                winner = next((o for o in earlier if getattr(o[1].spec, f) is not None), None)
                if winner is not None:
                    self.add(
                        "GSM033",
                        loaded,
                        f"spec.{_camel(f)}",
                        f"ignored: {winner[1].key} targets the same "
                        f"{_cluster_text(key)} and sets {_camel(f)} too, and the first policy "
                        "by namespace/name wins",
                        "keep each setting in one policy per target",
                    )
            od = dp.spec.outlier_detection
            if od is not None:
                for f in sorted(od.model_fields_set):
                    winner = next(
                        (
                            o
                            for o in earlier
                            if o[1].spec.outlier_detection is not None
                            and f in o[1].spec.outlier_detection.model_fields_set
                        ),
                        None,
                    )
                    if winner is not None:
                        alias = models.OutlierDetectionSpec.model_fields[f].alias or _camel(f)
                        self.add(
                            "GSM033",
                            loaded,
                            f"spec.outlierDetection.{alias}",
                            f"ignored: {winner[1].key} targets the same {_cluster_text(key)} and "
                            f"sets outlierDetection.{alias} too, and the first policy by "
                            "namespace/name wins",
                            "keep each setting in one policy per target",
                        )

    def _outlier_and_health(self) -> None:
        mesh_od = self.mesh.defaults.outlier_detection
        if self.mesh_loaded is not None and mesh_od.model_fields_set:
            self._check_outlier(
                self.mesh_loaded, "spec.defaults.outlierDetection", mesh_od, [mesh_od]
            )
        for loaded, dp in self.dps:
            od = dp.spec.outlier_detection
            if od is not None:
                ref = dp.spec.target_ref
                key = (ref.namespace or dp.metadata.namespace, ref.name, ref.subset)
                layers = [mesh_od]
                for _, p in reversed(self._targeting(key)):
                    if p.spec.outlier_detection is not None:
                        layers.append(p.spec.outlier_detection)
                self._check_outlier(loaded, "spec.outlierDetection", od, layers)
            hc = dp.spec.health_check
            if hc is not None and hc.timeout >= hc.interval:
                self.add(
                    "GSM042",
                    loaded,
                    "spec.healthCheck.timeout",
                    f"a probe may take {models.format_duration(hc.timeout)}, as long as the "
                    f"interval ({models.format_duration(hc.interval)}): probes pile up on a "
                    "slow endpoint",
                    "make the timeout shorter than the interval",
                )

    def _check_outlier(
        self,
        loaded: Loaded,
        path: str,
        own: models.OutlierDetectionSpec,
        layers: list[models.OutlierDetectionSpec],
    ) -> None:
        folded: dict[str, Any] = {}
        for layer in layers:
            folded.update({f: getattr(layer, f) for f in layer.model_fields_set})
        spec = models.OutlierDetectionSpec.model_construct(**folded)
        on = bool(
            spec.consecutive_5xx_errors
            or spec.consecutive_gateway_errors
            or spec.success_rate is not None
        )
        mine = own.model_fields_set
        if not on or not ({"max_ejection_percent", "min_health_percent"} & mine):
            return
        if spec.max_ejection_percent >= 100 and spec.min_health_percent > 0:
            at = "maxEjectionPercent" if "max_ejection_percent" in mine else "minHealthPercent"
            self.add(
                "GSM040",
                loaded,
                f"{path}.{at}",
                f"maxEjectionPercent 100 lets every endpoint be ejected, but minHealthPercent "
                f"{spec.min_health_percent:g} sends traffic to all of them again (panic) once "
                f"fewer than {spec.min_health_percent:g}% are left: the two disagree",
                "to let the circuit open (fail fast or fall back), set minHealthPercent: 0; to "
                "keep serving from ejected endpoints, lower maxEjectionPercent",
            )
        if spec.max_ejection_percent == 0:
            self.add(
                "GSM041",
                loaded,
                f"{path}.maxEjectionPercent",
                "outlier detection is on, but maxEjectionPercent 0 never lets it eject anything",
                "raise maxEjectionPercent, or turn the detectors off (consecutive counts 0)",
            )

    # --- AuthorizationPolicy ----------------------------------------------------------------------

    def _selected(self, policy: models.AuthorizationPolicy) -> list[tuple[str, str]]:
        """The services a policy applies to (namespace, name), computed once per policy."""
        found = self._selection.get(policy.key)
        if found is not None:
            return found
        ns = policy.metadata.namespace
        if policy.spec.target_ref is None:
            found = sorted(k for k in self.services if k[0] == ns)
        else:
            key = (ns, policy.spec.target_ref.name)
            found = [key] if key in self.services else []
        self._selection[policy.key] = found
        return found

    def _authorization(self) -> None:
        for loaded, policy in self.authz:
            action = policy.spec.action
            selected = self._selected(policy)
            if policy.spec.target_ref is None and not selected:
                self.add(
                    "GSM032",
                    loaded,
                    "spec",
                    f"the policy applies to every service of namespace "
                    f"{policy.metadata.namespace!r}, which has none: it selects nothing",
                    "create it in the namespace of the services it is for, or give it a targetRef",
                )
            if not policy.spec.rules:
                if action == "ALLOW":
                    self.add(
                        "GSM050",
                        loaded,
                        "spec.rules",
                        "an ALLOW policy with no rules allows nothing: every request to "
                        f"{_services_text(selected)} is denied (403 denied)",
                        "add rules for the callers to allow; to allow everything, add one "
                        "empty rule (rules: [{}])",
                    )
                else:
                    self.add(
                        "GSM051",
                        loaded,
                        "spec.rules",
                        f"a {action} policy with no rules matches no request: it does nothing",
                        "add rules; to match every request, add one empty rule (rules: [{}])",
                    )
        self._deny_covers_allow()

    def _deny_covers_allow(self) -> None:
        denies = [(lo, p) for lo, p in self.authz if p.spec.action == "DENY"]
        for loaded, policy in self.authz:
            if policy.spec.action != "ALLOW":
                continue
            targets = self._selected(policy)
            if not targets:
                continue
            covered: list[tuple[int, str]] = []
            for r, rule in enumerate(policy.spec.rules):
                by = None
                for _, deny in denies:
                    applies = set(self._selected(deny))
                    if not set(targets) <= applies:
                        continue
                    d = next(
                        (i for i, drule in enumerate(deny.spec.rules) if _rule_covers(drule, rule)),
                        None,
                    )
                    if d is not None:
                        by = f"{deny.key} spec.rules[{d}]"
                        break
                if by is not None:
                    covered.append((r, by))
            for r, by in covered:
                whole = len(covered) == len(policy.spec.rules)
                tail = " (none of the policy's rules can allow anything)" if whole else ""
                self.add(
                    "GSM052",
                    loaded,
                    f"spec.rules[{r}]",
                    f"the rule can never allow a request: {by} denies every request it "
                    f"matches, and DENY is decided first{tail}",
                    "narrow the DENY rule (e.g. a notPrincipals or path condition), or remove "
                    "the ALLOW rule",
                )

    def _mtls(self) -> None:
        mesh_mode = self.mesh.mtls.mode
        if mesh_mode == "DISABLE" and self.mesh_loaded is not None:
            self.add(
                "GSM070",
                self.mesh_loaded,
                "spec.mtls.mode",
                "mTLS is disabled for the whole mesh: traffic between sidecars is plaintext and "
                "no caller has a verified identity",
                "use STRICT (or PERMISSIVE while clients without a sidecar migrate)",
            )
        policies: dict[tuple[str, str], list[tuple[Loaded, models.AuthorizationPolicy]]] = {}
        for ploaded, policy in self.authz:
            for key in self._selected(policy):
                policies.setdefault(key, []).append((ploaded, policy))
        for (ns, name), (loaded, service) in self.services.items():
            written = service.spec.mtls
            mode = written.mode if written is not None else mesh_mode
            if written is not None and written.mode == "DISABLE" and mesh_mode != "DISABLE":
                self.add(
                    "GSM070",
                    loaded,
                    "spec.mtls.mode",
                    f"mTLS is disabled for service {name!r}: it is called in plaintext and "
                    "sees no caller's identity",
                    "use STRICT (or PERMISSIVE while clients without a sidecar migrate)",
                )
            if mode == "STRICT":
                continue
            for ploaded, policy in policies.get((ns, name), []):
                for r, rule in enumerate(policy.spec.rules):
                    ident = _identity_field(rule)
                    if ident is None:
                        continue
                    where = "its Service" if written is not None else "the Mesh"
                    if mode == "DISABLE":
                        allow = policy.spec.action == "ALLOW"
                        if ident.startswith("not"):
                            # No identity is never among the excluded ones: always true.
                            effect = "so the condition holds for every request: " + (
                                "the rule lets in callers it meant to keep out"
                                if allow
                                else "the rule denies callers it meant to let through"
                            )
                        else:
                            effect = "so the rule never matches: " + (
                                "the callers it names are denied" if allow else "it denies nothing"
                            )
                        self.add(
                            "GSM053",
                            ploaded,
                            f"spec.rules[{r}]",
                            f"the rule checks {ident}, but service {name!r} has mTLS DISABLE "
                            f"(from {where}): no request carries a verified identity, {effect}",
                            f"set spec.mtls.mode STRICT on Service {name}, or match by path "
                            "and method only",
                        )
                    elif policy.spec.action == "DENY" and ident in ("principals", "namespaces"):
                        self.add(
                            "GSM054",
                            ploaded,
                            f"spec.rules[{r}]",
                            f"the rule denies by {ident}, but service {name!r} is PERMISSIVE "
                            f"(from {where}): a plaintext request has no identity, so it is "
                            "never denied by this rule",
                            f"set mTLS STRICT on Service {name}, or deny plaintext as well "
                            "(notPrincipals: ['*'])",
                        )

    # --- RateLimitPolicy --------------------------------------------------------------------------

    def _rate_limits(self) -> None:
        for loaded, policy in self.rlps:
            ref = policy.spec.target_ref
            for i, limit in enumerate(policy.spec.limits):
                label = f"limit {limit.name!r}" if limit.name else f"limit #{i}"
                if limit.scope == "Global" and limit.failure_mode == "FailClosed":
                    self.add(
                        "GSM060",
                        loaded,
                        f"spec.limits[{i}].failureMode",
                        f"{label} fails closed: while Redis is unreachable every request it "
                        "matches gets 429 rate-limited, so a Redis outage takes the service down",
                        "use FailOpen unless refusing is safer than letting traffic through; "
                        "watch gossamer_proxy_rate_limit_redis_errors_total and the "
                        "fail_closed decisions of gossamer_proxy_rate_limit_decisions_total",
                    )
                if limit.scope == "Local" and ref.kind == "Service":
                    n = self.count((policy.metadata.namespace, ref.name, None))
                    if n is not None and n.total > 1:
                        self.add(
                            "GSM061",
                            loaded,
                            f"spec.limits[{i}].scope",
                            f"{label} is Local: each of the {n.total} replicas of "
                            f"{ref.name!r} counts on its own, so together they admit up to "
                            f"{n.total * limit.requests} requests per "
                            f"{models.format_duration(limit.per)}",
                            "divide requests by the replica count, or use scope Global (shared "
                            "through the Mesh's Redis)",
                        )


# --- matching coverage ----------------------------------------------------------------------------


def _covers(earlier: models.HTTPRouteMatch | None, later: models.HTTPRouteMatch | None) -> bool:
    """Whether every request `later` matches is matched by `earlier` (sure, never guessed)."""
    if earlier is None:
        return True
    if later is None:
        later = models.HTTPRouteMatch()
    if not _path_covers(earlier.path, later.path):
        return False
    if earlier.method is not None and earlier.method != later.method:
        return False
    mine = {(h.type, h.name.lower(), h.value) for h in later.headers}
    if any((h.type, h.name.lower(), h.value) not in mine for h in earlier.headers):
        return False
    query = {(q.type, q.name, q.value) for q in later.query_params}
    return all((q.type, q.name, q.value) in query for q in earlier.query_params)


def _path_covers(earlier: models.HTTPPathMatch | None, later: models.HTTPPathMatch | None) -> bool:
    e_kind, e_value = ("PathPrefix", "/") if earlier is None else (earlier.type, earlier.value)
    l_kind, l_value = ("PathPrefix", "/") if later is None else (later.type, later.value)
    if e_kind == "PathPrefix":
        prefix = e_value.rstrip("/")
        if not prefix:
            return True
        if l_kind == "RegularExpression":
            return False
        # Segment-aware: "/a" matches "/a" and "/a/...", never "/ab".
        return l_value.rstrip("/") == prefix or l_value.startswith(prefix + "/")
    if e_kind == "Exact":
        return l_kind == "Exact" and l_value == e_value
    if l_kind == "Exact":
        return re.fullmatch(e_value, l_value) is not None
    return l_kind == "RegularExpression" and l_value == e_value


def _rule_covers(deny: models.AuthzRule, allow: models.AuthzRule) -> bool:
    """Whether the DENY rule matches every request the ALLOW rule matches."""
    if deny.from_:
        if not allow.from_:
            return False
        if not all(
            any(_source_covers(d.source, a.source) for d in deny.from_) for a in allow.from_
        ):
            return False
    if deny.to:
        if not allow.to:
            return False
        if not all(
            any(_operation_covers(d.operation, a.operation) for d in deny.to) for a in allow.to
        ):
            return False
    return True


def _source_covers(d: models.AuthzSource, a: models.AuthzSource) -> bool:
    return (
        _positive_covers(d.principals, a.principals, _pattern_covers)
        and _positive_covers(d.namespaces, a.namespaces, _pattern_covers)
        and set(d.not_principals) <= set(a.not_principals)
        and set(d.not_namespaces) <= set(a.not_namespaces)
    )


def _operation_covers(d: models.AuthzOperation, a: models.AuthzOperation) -> bool:
    return (
        _positive_covers(d.paths, a.paths, _authz_path_covers)
        and _positive_covers(d.methods, a.methods, lambda x, y: x == y)
        and _positive_covers(d.ports, a.ports, lambda x, y: x == y)
        and _negative_covers(d.not_methods, a.methods, a.not_methods)
        and _negative_covers(d.not_ports, a.ports, a.not_ports)
        and set((p.type, p.value) for p in d.not_paths) <= {(p.type, p.value) for p in a.not_paths}
    )


def _positive_covers(d: Sequence[Any], a: Sequence[Any], covers: Any) -> bool:
    """A field of the DENY (OR of its values) holds for whatever the ALLOW's field lets in."""
    if not d:
        return True
    return bool(a) and all(any(covers(x, y) for x in d) for y in a)


def _negative_covers(d_not: Sequence[Any], a_pos: Sequence[Any], a_not: Sequence[Any]) -> bool:
    if not d_not:
        return True
    if a_pos and not set(a_pos) & set(d_not):
        return True
    return set(d_not) <= set(a_not)


def _pattern_covers(d: str, a: str) -> bool:
    """Istio string patterns: `*`, `prefix*`, `*suffix` or exact."""
    if d == "*":
        return True
    if d.endswith("*"):
        return a.startswith(d[:-1]) and not a.startswith("*")
    if d.startswith("*"):
        return not a.endswith("*") and a.endswith(d[1:])
    return d == a


def _authz_path_covers(d: models.AuthzPathMatch, a: models.AuthzPathMatch) -> bool:
    if d.type == "Prefix":
        if a.type in ("Exact", "Prefix", "PathPrefix"):
            return a.value.startswith(d.value)
        return d.value == ""
    if d.type == "PathPrefix":
        prefix = d.value.rstrip("/")
        if not prefix:
            return True
        if a.type in ("Exact", "PathPrefix"):
            return a.value.rstrip("/") == prefix or a.value.startswith(prefix + "/")
        if a.type == "Prefix":
            return a.value.startswith(prefix + "/")
        return False
    if d.type == "Suffix":
        return a.type in ("Exact", "Suffix") and a.value.endswith(d.value)
    if d.type == "Exact":
        return a.type == "Exact" and a.value == d.value
    if a.type == "Exact":
        return re.fullmatch(d.value, a.value) is not None
    return a.type == d.type and a.value == d.value


def _identity_field(rule: models.AuthzRule) -> str | None:
    for f in rule.from_:
        s = f.source
        for name, values in (
            ("principals", s.principals),
            ("namespaces", s.namespaces),
            ("notPrincipals", s.not_principals),
            ("notNamespaces", s.not_namespaces),
        ):
            if values:
                return name
    return None


# --- words ----------------------------------------------------------------------------------------


def _cluster_text(key: _ClusterKey) -> str:
    ns, name, subset = key
    text = f"{name}/{subset}" if subset else name
    return text if ns == "default" else f"{ns}/{text}"


def _services_text(keys: Sequence[tuple[str, str]]) -> str:
    if not keys:
        return "its targets"
    names = ", ".join(n for _, n in keys)
    return f"service {names}" if len(keys) == 1 else f"services {names}"


def _subset(service: models.Service, name: str | None) -> models.Subset:
    return next(s for s in service.spec.subsets if s.name == name)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(w.title() for w in rest)
