"""Rate limits: which requests a rule counts, its keys, local token buckets and the 429's headers.

`compile(rules, direction, ...)` turns one direction's `RateLimitRule`s into a `RateLimiter`,
once per Snapshot. Per request the connection asks `limiter.check(...)`:

- a rule applies when one of its `matches` holds (filters/match.py: the router's semantics;
  no matches: every request) and, outbound, the matched route rule is among its `route_rules`
  (empty: any);
- its key is the tuple of the rule's keys' values (`Route`: the matched route rule's name, "" on
  the inbound side; `SourceIdentity`: the peer's SPIFFE ID, "" without mTLS; `Header`: the
  header's first value, b"" when absent; `ClientAddress`: the client's IP), so each distinct
  tuple has a bucket of its own; a value longer than `KEY_PART_MAX` is kept as its hash
  (`bound_key_part`), so a client cannot make a rule hold its 64 KB header values;
- Local rules take a token from an in-process bucket (`TokenBuckets`: `requests + burst` tokens,
  refilled at `requests / period` per second on the loop's clock, at most `max_keys` buckets a
  rule, full ones evicted first, then the least recently used); Global rules ask a
  `GlobalBuckets` (proxy/ratelimit_redis.py), which may answer later.

Every applying rule must let the request through (local rules are asked first, so a request a
local rule refuses never costs a Redis call); a token taken by an earlier rule is not given back
when a later one refuses. `check` returns a `Decision` at once, or None when a global rule has to
wait for Redis: then `done(decision)` is called exactly once, later, from the event loop.
A refusal carries the headers of draft-ietf-httpapi-ratelimit-headers (`RateLimit-Policy`,
`RateLimit`) and `Retry-After`.

This module does no I/O and imports nothing of the proxy, so it is cheap to load.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol

from gossamer import snapshot as snap
from gossamer.filters import headers as header_filter
from gossamer.filters.match import compile_condition, first_value
from gossamer.http.message import RequestHead
from gossamer.telemetry.metrics import Counter, CounterChild, Registry

MAX_KEYS = 10_000
"""Buckets kept per rule; past it the emptiest-to-lose bucket goes (a full one, else the LRU)."""

_EVICT_SCAN = 16  # buckets looked at, oldest first, for a full one before the LRU goes

KEY_PART_MAX = 64
"""Longest key value kept as it is; a longer one is kept (and named in Redis) by its hash."""

# Outcomes of one rule's check, as GlobalBuckets report them.
ALLOWED = 0
LIMITED = 1
FAIL_OPEN = 2
FAIL_CLOSED = 3
OUTCOMES = ("allowed", "limited", "fail_open", "fail_closed")

Outcome = tuple[int, float, str]
"""(ALLOWED/LIMITED/FAIL_OPEN/FAIL_CLOSED, seconds until a token, why it failed or "")."""

Key = tuple[str | bytes, ...]


def bound_key_part(part: str | bytes) -> str | bytes:
    """`part` itself when short, else "#" and the hex of its 16-byte BLAKE2b digest.

    The memory a rule keeps per key (and the length of its Redis key name) is then bounded
    whatever the request carries. Sending the hash of another client's value as a value of
    one's own reaches the same bucket as sending that value itself would, so it gives a
    client nothing new.
    """
    if len(part) <= KEY_PART_MAX:
        return part
    data = part if isinstance(part, bytes) else part.encode("utf-8", "surrogatepass")
    return "#" + hashlib.blake2b(data, digest_size=16).hexdigest()


def bound_key(key: Key) -> Key:
    """`key` itself when every part is short, else a copy with the long parts hashed."""
    for part in key:
        if len(part) > KEY_PART_MAX:
            return tuple(bound_key_part(p) for p in key)
    return key


class RateLimitCompileError(Exception):
    """A rule this proxy cannot enforce; `reason` names the rule and the field."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GlobalBuckets(Protocol):
    """One Global rule's shared buckets (proxy/ratelimit_redis.py implements it)."""

    def acquire(self, key: Key, done: Callable[[Outcome], None]) -> Outcome | None:
        """Take one token for `key`: the outcome now, or None and `done(outcome)` once, later.

        A later answer comes within a bounded time, whatever Redis does (the rule's failure
        mode when Redis did not answer).
        """
        ...

    def close(self) -> None:
        """The rule no longer applies: requests still waiting on it are allowed (soon, from
        the event loop, not from within `close`), and later `acquire`s allow at once."""
        ...


GlobalFactory = Callable[[snap.RateLimitRule], GlobalBuckets]


class RateLimitMetrics:
    """The rate-limit metric families of one registry."""

    def __init__(self, registry: Registry) -> None:
        self.decisions: Counter = registry.counter(
            "gossamer_proxy_rate_limit_decisions_total",
            "Requests checked by rate-limit rules, by direction, rule and decision (allowed, "
            "limited, fail_open, fail_closed: a Global rule whose Redis could not answer).",
            ("direction", "rule", "decision"),
        )
        self.redis_errors: Counter = registry.counter(
            "gossamer_proxy_rate_limit_redis_errors_total",
            "Failed calls to the rate-limit Redis, by reason (connect, timeout, closed, error, "
            "protocol).",
            ("reason",),
        )


class Decision:
    """What the rate limits say about one request."""

    __slots__ = ("allowed", "headers", "message", "outcome", "rule")

    def __init__(
        self,
        allowed: bool,
        outcome: str,
        rule: str = "",
        message: str = "",
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        self.allowed = allowed
        self.outcome = outcome  # one of OUTCOMES
        self.rule = rule  # the rule that refused (or failed open), "" when all allowed
        self.message = message
        self.headers = headers  # Retry-After and RateLimit fields of a refusal

    def __repr__(self) -> str:
        return f"Decision({self.outcome}, rule={self.rule!r})"


ALLOW = Decision(True, "allowed")


# --- token buckets --------------------------------------------------------------------------------


class TokenBuckets:
    """Token buckets for the distinct keys of one rule, bounded in number.

    Each bucket is `[tokens, last refill time]`; tokens are a float so that slow rates refill
    smoothly. A bucket never seen starts full. Keys are stored bounded (`bound_key`): `Rule.key`
    makes them so, and a key that is not is bounded here before it is kept.
    """

    __slots__ = ("buckets", "capacity", "max_keys", "rate")

    def __init__(self, capacity: float, rate: float, max_keys: int = MAX_KEYS) -> None:
        if capacity < 1 or rate <= 0 or max_keys < 1:
            raise ValueError("a token bucket needs capacity >= 1, rate > 0 and max_keys >= 1")
        self.capacity = capacity
        self.rate = rate
        self.max_keys = max_keys
        self.buckets: OrderedDict[Key, list[float]] = OrderedDict()

    def take(self, key: Key, now: float) -> float:
        """Take one token: 0.0 when taken, else the seconds until one will be there."""
        buckets = self.buckets
        bucket = buckets.get(key)
        if bucket is None:
            bounded = bound_key(key)
            if bounded is not key:
                return self.take(bounded, now)
            if len(buckets) >= self.max_keys:
                self._evict(now)
            buckets[key] = [self.capacity - 1.0, now]
            return 0.0
        buckets.move_to_end(key)
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def remaining(self, key: Key, now: float) -> int:
        """Whole tokens left in `key`'s bucket (a bucket not kept is full)."""
        bucket = self.buckets.get(key) or self.buckets.get(bound_key(key))
        if bucket is None:
            return int(self.capacity)
        return int(min(self.capacity, bucket[0] + (now - bucket[1]) * self.rate))

    def _evict(self, now: float) -> None:
        # A full bucket is the same as no bucket: dropping it forgets nothing.
        for i, (key, (tokens, stamp)) in enumerate(self.buckets.items()):
            if i >= _EVICT_SCAN:
                break
            if tokens + (now - stamp) * self.rate >= self.capacity:
                del self.buckets[key]
                return
        self.buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self.buckets)


# --- headers --------------------------------------------------------------------------------------


def sf_string(value: str) -> bytes:
    """An RFC 8941 sf-string: quoted, `\\` and `"` escaped, non-printable ASCII replaced by "?"."""
    out = []
    for ch in value:
        if ch in '\\"':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.append("?")
    return ('"' + "".join(out) + '"').encode("ascii")


def policy_field(name: str, requests: int, period: float) -> bytes:
    """`RateLimit-Policy` of draft-ietf-httpapi-ratelimit-headers: `"<name>";q=<quota>;w=<s>`."""
    return sf_string(name) + b";q=%d;w=%d" % (requests, max(1, math.ceil(period)))


def limit_fields(
    name: str, policy: bytes, remaining: int, reset: float
) -> tuple[tuple[bytes, bytes], ...]:
    """Retry-After, RateLimit-Policy and `RateLimit: "<name>";r=<remaining>;t=<seconds>`."""
    seconds = max(1, math.ceil(reset))
    return (
        (b"retry-after", b"%d" % seconds),
        (b"ratelimit-policy", policy),
        (b"ratelimit", sf_string(name) + b";r=%d;t=%d" % (max(0, remaining), seconds)),
    )


# --- rules ----------------------------------------------------------------------------------------

_ROUTE, _SOURCE, _HEADER, _CLIENT = 0, 1, 2, 3
_KEY_KINDS = {
    "Route": _ROUTE,
    "SourceIdentity": _SOURCE,
    "Header": _HEADER,
    "ClientAddress": _CLIENT,
}


class Rule:
    """One compiled RateLimitRule with its state (local buckets or global handle) and counters."""

    __slots__ = (
        "counters",
        "global_buckets",
        "keys",
        "local",
        "matches",
        "name",
        "policy",
        "route_rules",
        "spec",
    )

    def __init__(
        self,
        spec: snap.RateLimitRule,
        where: str,
        max_keys: int,
        counters: tuple[CounterChild, ...],
        previous: Rule | None,
        global_factory: GlobalFactory | None,
    ) -> None:
        """Raises ValueError naming the field; keeps `previous`'s state when the spec is equal."""
        self.spec = spec
        self.name = spec.name
        if spec.requests < 1:
            raise ValueError(f"{where}: requests must be at least 1, not {spec.requests}")
        if not spec.period > 0 or math.isinf(spec.period):
            raise ValueError(f"{where}: period must be a positive number of seconds")
        if spec.burst < 0:
            raise ValueError(f"{where}: burst must not be negative, not {spec.burst}")
        self.matches = tuple(
            compile_condition(m, f"{where}, match #{i}") for i, m in enumerate(spec.matches)
        )
        self.route_rules = frozenset(spec.route_rules)
        keys: list[tuple[int, bytes]] = []
        for i, k in enumerate(spec.keys):
            kind = _KEY_KINDS[k.type]
            name = b""
            if kind == _HEADER:
                if not k.name:
                    raise ValueError(f"{where}, key #{i}: a Header key needs the header's name")
                name = header_filter.encode_name(k.name.lower(), f"{where}, key #{i}")
            keys.append((kind, name))
        self.keys = tuple(keys)
        self.counters = counters
        self.policy = policy_field(spec.name, spec.requests, spec.period)
        self.local: TokenBuckets | None = None
        self.global_buckets: GlobalBuckets | None = None
        if previous is not None and previous.spec == spec:
            self.local = previous.local
            self.global_buckets = previous.global_buckets
        elif spec.scope == "Global":
            if global_factory is None:
                raise ValueError(f"{where}: a Global rule needs rate_limits.redis")
            self.global_buckets = global_factory(spec)
        else:
            self.local = TokenBuckets(
                spec.requests + spec.burst, spec.requests / spec.period, max_keys
            )

    def applies(self, head: RequestHead, route: str | None) -> bool:
        if self.route_rules and (route is None or route not in self.route_rules):
            return False
        matches = self.matches
        if not matches:
            return True
        for m in matches:  # noqa: SIM110 - any(<genexpr>) allocates a generator per request
            if m.matches(head):
                return True
        return False

    def key(self, head: RequestHead, route: str | None, peer: str | None, client_ip: bytes) -> Key:
        keys = self.keys
        if not keys:
            return ()
        if len(keys) == 1:
            return (_key_part(keys[0], head, route, peer, client_ip),)
        out: list[str | bytes] = []
        for k in keys:
            out.append(_key_part(k, head, route, peer, client_ip))
        return tuple(out)

    def refusal(self, wait: float, message: str, outcome: int) -> Decision:
        if outcome == FAIL_CLOSED:
            self.counters[FAIL_CLOSED].value += 1.0
            return Decision(
                False,
                OUTCOMES[FAIL_CLOSED],
                self.name,
                message,
                limit_fields(self.name, self.policy, 0, wait or 1.0),
            )
        self.counters[LIMITED].value += 1.0
        return Decision(
            False,
            OUTCOMES[LIMITED],
            self.name,
            f"rate limit {self.name!r} exceeded: {self.spec.requests} requests per "
            f"{self.spec.period:g}s; retry in {max(1, math.ceil(wait))}s",
            limit_fields(self.name, self.policy, 0, wait),
        )


def _key_part(
    key: tuple[int, bytes], head: RequestHead, route: str | None, peer: str | None, ip: bytes
) -> str | bytes:
    kind, name = key
    value: str | bytes
    if kind == _ROUTE:
        value = route or ""
    elif kind == _SOURCE:
        value = peer or ""
    elif kind == _HEADER:
        value = first_value(head.headers, name) or b""
    else:
        value = ip
    if len(value) > KEY_PART_MAX:
        return bound_key_part(value)
    return value


class RateLimiter:
    """One direction's compiled rules; see the module docstring."""

    __slots__ = ("clock", "direction", "rules")

    def __init__(self, direction: str, rules: tuple[Rule, ...], clock: Callable[[], float]):
        self.direction = direction
        self.rules = rules  # local rules first, then global ones
        self.clock = clock

    def check(
        self,
        head: RequestHead,
        route: str | None,
        peer: str | None,
        client_ip: bytes,
        done: Callable[[Decision], None],
    ) -> Decision | None:
        """Decide on one request: a Decision now, or None and `done(decision)` once, later.

        Args:
            head: the request (after the route's request filters, outbound).
            route: the matched route rule's name (outbound), None inbound.
            peer: the caller's verified SPIFFE ID (inbound mTLS), else None.
            client_ip: the downstream client's address.
            done: called with the decision when a Global rule had to wait for Redis.
        """
        return self._run(0, head, route, peer, client_ip, done, None)

    def _run(
        self,
        start: int,
        head: RequestHead,
        route: str | None,
        peer: str | None,
        client_ip: bytes,
        done: Callable[[Decision], None],
        opened: Decision | None,
    ) -> Decision | None:
        # `opened`: a Global rule that failed open earlier for this request (its note is kept).
        rules = self.rules
        now: float | None = None  # read once, when the first local rule applies
        for i in range(start, len(rules)):
            rule = rules[i]
            if not rule.applies(head, route):
                continue
            key = rule.key(head, route, peer, client_ip)
            local = rule.local
            if local is not None:
                if now is None:
                    now = self.clock()
                wait = local.take(key, now)
                if wait:
                    return rule.refusal(wait, "", LIMITED)
                rule.counters[ALLOWED].value += 1.0
                continue
            assert rule.global_buckets is not None
            state = _Waiting(self, i, head, route, peer, client_ip, done, opened)
            outcome = rule.global_buckets.acquire(key, state.resume)
            if outcome is None:
                return None
            decision = _settle(rule, outcome)
            if decision is not ALLOW:
                if not decision.allowed:
                    return decision
                opened = decision
        return opened or ALLOW

    def close(self) -> None:
        for rule in self.rules:
            if rule.global_buckets is not None:
                rule.global_buckets.close()


def _settle(rule: Rule, outcome: Outcome) -> Decision:
    kind, wait, why = outcome
    if kind == ALLOWED:
        rule.counters[ALLOWED].value += 1.0
        return ALLOW
    if kind == FAIL_OPEN:
        rule.counters[FAIL_OPEN].value += 1.0
        return Decision(True, OUTCOMES[FAIL_OPEN], rule.name, why)
    if kind == FAIL_CLOSED:
        return rule.refusal(
            wait,
            f"rate limit {rule.name!r} cannot be checked and fails closed: {why}",
            FAIL_CLOSED,
        )
    return rule.refusal(wait, "", LIMITED)


class _Waiting:
    """A request paused on a Global rule: resumes the remaining rules when Redis answers."""

    __slots__ = (
        "client_ip",
        "done",
        "head",
        "index",
        "limiter",
        "opened",
        "peer",
        "resumed",
        "route",
    )

    def __init__(
        self,
        limiter: RateLimiter,
        index: int,
        head: RequestHead,
        route: str | None,
        peer: str | None,
        client_ip: bytes,
        done: Callable[[Decision], None],
        opened: Decision | None,
    ) -> None:
        self.limiter = limiter
        self.opened = opened
        self.index = index
        self.head = head
        self.route = route
        self.peer = peer
        self.client_ip = client_ip
        self.done = done
        self.resumed = False

    def resume(self, outcome: Outcome) -> None:
        # GlobalBuckets answer once; this guard keeps `done` once even if one did not.
        if self.resumed:
            return
        self.resumed = True
        limiter = self.limiter
        decision = _settle(limiter.rules[self.index], outcome)
        if decision.allowed:
            opened = self.opened if decision is ALLOW else decision
            rest = limiter._run(
                self.index + 1, self.head, self.route, self.peer, self.client_ip, self.done, opened
            )
            if rest is None:
                return  # another Global rule waits; it calls `done`
            decision = rest
        self.done(decision)


class RedisHandle(Protocol):
    """The shared Redis client of the Global rules (proxy/ratelimit_redis.py `RedisClient`)."""

    server: snap.RedisServer

    def rule(self, spec: snap.RateLimitRule) -> GlobalBuckets: ...

    def close(self) -> None: ...


class RateLimitTables:
    """Both directions' limiters of one Snapshot (None where a direction has no rule)."""

    __slots__ = ("inbound", "outbound", "redis")

    def __init__(
        self,
        inbound: RateLimiter | None,
        outbound: RateLimiter | None,
        redis: RedisHandle | None = None,
    ) -> None:
        self.inbound = inbound
        self.outbound = outbound
        self.redis = redis  # the client behind the Global rules, kept while its server is

    def rules(self) -> dict[str, Rule]:
        out: dict[str, Rule] = {}
        for limiter in (self.inbound, self.outbound):
            if limiter is not None:
                for rule in limiter.rules:
                    out[f"{limiter.direction}|{rule.name}"] = rule
        return out

    def retire(self, new: RateLimitTables | None) -> None:
        """These tables were swapped for `new`: release what `new` did not carry over."""
        kept = {id(r.global_buckets) for r in new.rules().values()} if new is not None else set()
        for rule in self.rules().values():
            if rule.global_buckets is not None and id(rule.global_buckets) not in kept:
                rule.global_buckets.close()
        if self.redis is not None and (new is None or new.redis is not self.redis):
            self.redis.close()

    def close(self) -> None:
        """The data plane is done: stop every Global rule and the Redis client."""
        self.retire(None)


def compile_tables(
    config: snap.RateLimits,
    previous: RateLimitTables | None,
    clock: Callable[[], float],
    metrics: RateLimitMetrics,
    connect: Callable[[snap.RedisServer], RedisHandle],
    max_keys: int = MAX_KEYS,
) -> RateLimitTables | None:
    """Compile a Snapshot's rate limits; None when it has no rule.

    Args:
        previous: the tables in use: unchanged rules keep their buckets, and the Redis client
            is kept while the Redis server settings are the same.
        connect: makes the Redis client for Global rules (called only when there are some and
            the server changed); it must not do I/O before its first use.

    Raises:
        RateLimitCompileError: the reason names the direction, the rule and the field.
    """
    if not config.inbound and not config.outbound:
        return None
    redis: RedisHandle | None = None
    prev_rules = previous.rules() if previous is not None else {}
    global_rules = [r for r in (*config.inbound, *config.outbound) if r.scope == "Global"]
    if global_rules:
        server = config.redis
        if server is None:
            raise RateLimitCompileError(
                f"rate limits: rule {global_rules[0].name!r} is Global, and the Snapshot has "
                "no redis server to share its buckets through"
            )
        check_redis(server)
        old = previous.redis if previous is not None else None
        if old is not None and old.server == server:
            redis = old
        else:
            # Another server: its buckets are not the old one's, so no Global rule carries over.
            prev_rules = {k: r for k, r in prev_rules.items() if r.local is not None}
            redis = connect(server)
    factory = redis.rule if redis is not None else None
    inbound = compile_direction(
        config.inbound, "inbound", clock, metrics, prev_rules, factory, max_keys
    )
    outbound = compile_direction(
        config.outbound, "outbound", clock, metrics, prev_rules, factory, max_keys
    )
    return RateLimitTables(inbound, outbound, redis)


def check_redis(server: snap.RedisServer) -> None:
    """Raises RateLimitCompileError for an address that is not host:port or a bad timeout."""
    host, sep, port = server.address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise RateLimitCompileError(
            f"rate limits: redis address {server.address!r} is not host:port"
        )
    if not server.timeout > 0 or math.isinf(server.timeout):
        raise RateLimitCompileError(
            f"rate limits: redis timeout must be a positive number of seconds, not {server.timeout}"
        )


def compile_direction(
    specs: Sequence[snap.RateLimitRule],
    direction: str,
    clock: Callable[[], float],
    metrics: RateLimitMetrics,
    previous: dict[str, Rule],
    global_factory: GlobalFactory | None,
    max_keys: int = MAX_KEYS,
) -> RateLimiter | None:
    """Compile one direction's rules; None when there are none.

    Args:
        previous: the last tables' rules by "direction|name": an unchanged rule keeps its
            buckets (and its Global handle).
        global_factory: builds the shared buckets of a Global rule; None when the Snapshot
            has no Redis (a Global rule is then an error).

    Raises:
        RateLimitCompileError: the reason names the direction, the rule and the field.
    """
    if not specs:
        return None
    seen: set[str] = set()
    rules: list[Rule] = []
    for i, spec in enumerate(specs):
        where = f"rate limits, {direction} rule #{i} ({spec.name!r})"
        if spec.name in seen:
            raise RateLimitCompileError(f"{where}: the name appears twice")
        seen.add(spec.name)
        counters = tuple(
            metrics.decisions.labels(direction, spec.name, outcome) for outcome in OUTCOMES
        )
        try:
            rules.append(
                Rule(
                    spec,
                    where,
                    max_keys,
                    counters,
                    previous.get(f"{direction}|{spec.name}"),
                    global_factory,
                )
            )
        except ValueError as e:
            raise RateLimitCompileError(str(e)) from None
    rules.sort(key=lambda r: r.local is None)  # stable: local rules first, in order
    return RateLimiter(direction, tuple(rules), clock)
