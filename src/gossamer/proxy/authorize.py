"""Inbound authorization: a Snapshot's compiled AuthorizationPolicies with their metric children.

Built by `DataPlane.apply` only when the Snapshot has an `authz` section with policies; the
inbound listener then asks `Authorizer.check` once per request. Without policies the tables hold
None and the request path does no work at all for authorization.

The port the policies see is the service port this replica's inbound listener serves: the
Service's first port (`authz.defaultPort` in the Snapshot), since the listener forwards every
request to the one app port. It is never taken from the request: a client could write any port in
its Host header and walk past a `ports` condition. Only a Snapshot without that port (a service the
control plane does not know) falls back to the Host's port, or 0 ("unknown").
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gossamer.filters import authz
from gossamer.proxy.stats import DataPlaneMetrics
from gossamer.snapshot import AuthzConfig
from gossamer.telemetry.metrics import CounterChild
from gossamer.telemetry.ratelimit import RateLimit

log = logging.getLogger("gossamer.proxy.authz")

AUDIT_LOG_INTERVAL = 1.0
"""At most one audit log line per this many seconds (the counter counts every match)."""

DENY_LOG_INTERVAL = 1.0
"""At most one denial log line per this many seconds (the counter counts every denial)."""

UNKNOWN_PORT = 0
_DEFAULT = "default"  # the `policy` label of a decision no policy made (default deny / allow)


class Authorizer:
    """One Snapshot's authorization engine and its pre-resolved metric children."""

    __slots__ = (
        "_allowed",
        "_audit_log",
        "_audited",
        "_default_port",
        "_denied",
        "_deny_log",
        "engine",
    )

    def __init__(
        self, config: AuthzConfig, metrics: DataPlaneMetrics, clock: Callable[[], float]
    ) -> None:
        """Raises authz.AuthzCompileError naming the policy and rule it cannot use."""
        self.engine = authz.compile(config)
        self._default_port = config.default_port or UNKNOWN_PORT
        family = metrics.authz_decisions
        self._allowed: dict[str | None, CounterChild] = {}
        self._denied: dict[str | None, CounterChild] = {}
        self._audited: dict[str, CounterChild] = {}
        for policy in config.policies:
            if policy.action == "ALLOW":
                self._allowed[policy.name] = family.labels(policy.name, "allow")
            elif policy.action == "DENY":
                self._denied[policy.name] = family.labels(policy.name, "deny")
            else:
                self._audited[policy.name] = family.labels(policy.name, "audit")
        self._allowed[None] = family.labels(_DEFAULT, "allow")
        self._denied[None] = family.labels(_DEFAULT, "deny")
        self._audit_log = RateLimit(clock, AUDIT_LOG_INTERVAL)
        self._deny_log = RateLimit(clock, DENY_LOG_INTERVAL)

    def check(
        self, principal: str | None, method: bytes, path: bytes, host: bytes
    ) -> authz.Decision:
        """Decide on one inbound request and count the decision (and any AUDIT matches)."""
        port = self._default_port or host_port(host)
        decision = self.engine.check(principal, method, path, port)
        counters = self._allowed if decision.allowed else self._denied
        child = counters.get(decision.policy)
        if child is not None:
            child.value += 1.0
        if decision.audit:
            self._audit(decision, principal, method, path)
        if not decision.allowed:
            self._log_denial(decision, principal, method, path)
        return decision

    def _log_denial(
        self, decision: authz.Decision, principal: str | None, method: bytes, path: bytes
    ) -> None:
        suppressed = self._deny_log.due()
        if suppressed is None:
            return
        log.info(
            "authz denied: %s %s from %s: %s%s",
            method.decode("latin-1"),
            path[:200].decode("latin-1"),
            principal or "an unauthenticated peer (plaintext)",
            decision.reason,
            f"; {suppressed} more denied requests since the last line" if suppressed else "",
        )

    def _audit(
        self, decision: authz.Decision, principal: str | None, method: bytes, path: bytes
    ) -> None:
        for name in decision.audit:
            child = self._audited.get(name)
            if child is not None:
                child.value += 1.0
        suppressed = self._audit_log.due()
        if suppressed is None:
            return
        log.info(
            "authz audit: %s %s from %s matched %s (%s)%s",
            method.decode("latin-1"),
            path[:200].decode("latin-1"),
            principal or "an unauthenticated peer",
            ", ".join(decision.audit),
            "allowed" if decision.allowed else "denied",
            f"; {suppressed} more audited requests since the last line" if suppressed else "",
        )


def host_port(host: bytes) -> int:
    """The port of a Host value ("name:8080", "[::1]:8080"), UNKNOWN_PORT when it has none."""
    colon = host.rfind(b":")
    if colon < 0 or host.find(b"]", colon) >= 0:
        return UNKNOWN_PORT
    digits = host[colon + 1 :]
    if not digits.isdigit() or len(digits) > 5:
        return UNKNOWN_PORT
    return int(digits)
