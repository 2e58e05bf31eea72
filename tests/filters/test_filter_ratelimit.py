"""Rate-limit rules without I/O: token buckets on a driven clock, keys, matching, eviction,
the 429's header syntax, compile errors, state across Snapshots, and the waiting path of a
Global rule (with a scripted stand-in for Redis: the real one is in tests/proxy)."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer import snapshot as snap
from gossamer.filters import ratelimit as rl
from gossamer.http.message import RequestHead
from gossamer.telemetry.metrics import Registry


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def head(
    path: bytes = b"/api/x",
    method: bytes = b"GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    query: bytes = b"",
) -> RequestHead:
    return RequestHead(method, path, query, headers or [], host=b"catalog")


def rule(**kw: object) -> snap.RateLimitRule:
    base: dict[str, object] = {"name": "default/limits#0", "requests": 2, "period": 1.0}
    base.update(kw)
    return snap.RateLimitRule(**base)  # type: ignore[arg-type]


def limiter(
    *rules: snap.RateLimitRule,
    direction: str = "inbound",
    clock: Callable[[], float] | None = None,
    registry: Registry | None = None,
    max_keys: int = rl.MAX_KEYS,
    factory: rl.GlobalFactory | None = None,
) -> rl.RateLimiter:
    metrics = rl.RateLimitMetrics(registry or Registry())
    out = rl.compile_direction(
        list(rules), direction, clock or Clock(), metrics, {}, factory, max_keys
    )
    assert out is not None
    return out


def never(_: rl.Decision) -> None:
    raise AssertionError("a local decision must not call back")


def check(
    lim: rl.RateLimiter,
    h: RequestHead | None = None,
    route: str | None = None,
    peer: str | None = None,
    ip: bytes = b"127.0.0.1",
) -> rl.Decision:
    d = lim.check(h or head(), route, peer, ip, never)
    assert d is not None
    return d


# --- token buckets ----------------------------------------------------------------------------


def test_bucket_allows_capacity_then_refills_at_the_rate() -> None:
    """A new bucket is full (requests + burst); it refills at requests/period per second."""
    b = rl.TokenBuckets(capacity=3, rate=2.0)
    assert [b.take((), 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take((), 0.0) == pytest.approx(0.5)  # one token needs 1/rate seconds
    assert b.take((), 0.25) == pytest.approx(0.25)  # half refilled
    assert b.take((), 0.5) == 0.0
    assert b.remaining((), 0.5) == 0
    assert b.remaining((), 100.0) == 3  # never above capacity


def test_bucket_memory_is_bounded_and_full_buckets_go_first() -> None:
    """At max_keys, a full bucket (nothing to forget) is evicted before the LRU one."""
    b = rl.TokenBuckets(capacity=2, rate=1.0, max_keys=3)
    b.take(("a",), 0.0)
    b.take(("a",), 0.0)  # a: empty
    b.take(("b",), 0.0)  # b: 1 of 2
    b.take(("c",), 0.0)
    b.take(("c",), 0.0)  # c: empty
    # At t=1.5: b is full again (1 + 1.5 > 2), a and c are not.
    b.take(("a",), 1.5)  # a becomes the most recent
    b.take(("d",), 1.5)
    assert set(b.buckets) == {("a",), ("c",), ("d",)}
    # Nothing full: the least recently used (c) goes.
    b.take(("e",), 1.6)
    assert set(b.buckets) == {("a",), ("d",), ("e",)}
    assert len(b) == 3


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=200))
def test_bucket_never_allows_more_than_capacity_plus_refill(gaps: list[float]) -> None:
    """Over any run, allowed <= capacity + rate * elapsed (the token bucket's promise)."""
    capacity, rate = 5, 3.0
    b = rl.TokenBuckets(capacity=capacity, rate=rate)
    now = 0.0
    allowed = 0
    for gap in gaps:
        now += gap
        if b.take((), now) == 0.0:
            allowed += 1
    assert allowed <= capacity + rate * now + 1e-9


# --- rules, keys, matching ------------------------------------------------------------------


def test_limit_gives_429_headers_with_retry_after_and_ietf_fields() -> None:
    clock = Clock()
    registry = Registry()
    lim = limiter(rule(requests=2, period=10.0, burst=1), clock=clock, registry=registry)
    assert [check(lim).allowed for _ in range(3)] == [True, True, True]
    d = check(lim)
    assert not d.allowed
    assert d.outcome == "limited"
    assert d.rule == "default/limits#0"
    assert "2 requests per 10s" in d.message
    # One token takes period/requests = 5 s.
    assert dict(d.headers) == {
        b"retry-after": b"5",
        b"ratelimit-policy": b'"default/limits#0";q=2;w=10',
        b"ratelimit": b'"default/limits#0";r=0;t=5',
    }
    clock.now += 4.2
    d = check(lim)
    assert dict(d.headers)[b"retry-after"] == b"1"  # 0.8 s, rounded up
    clock.now += 0.8
    assert check(lim).allowed
    text = registry.render().decode()
    label = 'direction="inbound",rule="default/limits#0"'
    assert f'gossamer_proxy_rate_limit_decisions_total{{{label},decision="allowed"}} 4' in text
    assert f'gossamer_proxy_rate_limit_decisions_total{{{label},decision="limited"}} 2' in text


def test_header_syntax_escapes_the_policy_name_and_rounds_the_window_up() -> None:
    assert rl.sf_string('a"b\\c\n') == b'"a\\"b\\\\c?"'
    assert rl.policy_field("p", 5, 0.5) == b'"p";q=5;w=1'
    fields = dict(rl.limit_fields("p", b"x", 3, 0.01))
    assert fields[b"retry-after"] == b"1"
    assert fields[b"ratelimit"] == b'"p";r=3;t=1'


def test_keys_give_each_value_its_own_bucket() -> None:
    """SourceIdentity, Header (absent: one shared bucket) and ClientAddress tell buckets apart."""
    lim = limiter(
        rule(
            requests=1,
            keys=[
                snap.RateLimitKey(type="SourceIdentity"),
                snap.RateLimitKey(type="Header", name="X-User"),
                snap.RateLimitKey(type="ClientAddress"),
            ],
        )
    )
    alice = head(headers=[(b"x-user", b"alice")])
    assert check(lim, alice, peer="spiffe://td/ns/a/sa/web").allowed
    assert not check(lim, alice, peer="spiffe://td/ns/a/sa/web").allowed
    assert check(lim, alice, peer="spiffe://td/ns/a/sa/other").allowed
    assert check(lim, alice, peer=None).allowed  # no mTLS: the "" identity
    assert check(lim, alice, peer="spiffe://td/ns/a/sa/web", ip=b"10.0.0.2").allowed
    assert check(lim, head(headers=[(b"x-user", b"bob")]), peer="spiffe://td/ns/a/sa/web").allowed
    assert check(lim, head(), peer="x").allowed
    assert not check(lim, head(headers=[(b"x-other", b"1")]), peer="x").allowed


def test_long_key_values_are_kept_as_fixed_size_hashes() -> None:
    """A client sending 60 KB header values must not make a rule keep them: each stored key
    part is at most KEY_PART_MAX long whatever the request carries, short values stay as they
    are, and a long value still has a bucket of its own (the same value, the same bucket)."""
    lim = limiter(
        rule(
            requests=1,
            keys=[
                snap.RateLimitKey(type="Header", name="x-user"),
                snap.RateLimitKey(type="SourceIdentity"),
            ],
        )
    )
    peer = "spiffe://td/ns/a/sa/" + "w" * 500
    for i in range(200):
        value = b"%05d" % i + b"k" * 60_000
        assert check(lim, head(headers=[(b"x-user", value)]), peer=peer).allowed
    long_one = head(headers=[(b"x-user", b"00007" + b"k" * 60_000)])
    assert not check(lim, long_one, peer=peer).allowed
    assert check(lim, head(headers=[(b"x-user", b"alice")]), peer="spiffe://td/ns/a/sa/web").allowed
    local = lim.rules[0].local
    assert local is not None
    assert len(local) == 201
    stored = sum(sys.getsizeof(key) + sum(sys.getsizeof(p) for p in key) for key in local.buckets)
    assert stored < 201 * 400  # about 250 bytes a key, not 60 KB
    assert all(len(p) <= rl.KEY_PART_MAX for key in local.buckets for p in key)
    assert (b"alice", "spiffe://td/ns/a/sa/web") in local.buckets


def test_token_buckets_bound_the_keys_they_are_given() -> None:
    b = rl.TokenBuckets(capacity=1, rate=1.0)
    big = (b"x" * 100_000, "short")
    assert b.take(big, 0.0) == 0.0
    assert b.take(big, 0.0) > 0.0  # the same bucket, found through the bounded key
    [(stored_key, _)] = b.buckets.items()
    assert stored_key == (rl.bound_key_part(b"x" * 100_000), "short")
    assert len(stored_key[0]) == 33
    assert rl.bound_key(("a" * rl.KEY_PART_MAX,)) == ("a" * rl.KEY_PART_MAX,)


def test_route_key_and_route_rules_filter_outbound() -> None:
    lim = limiter(
        rule(
            requests=1,
            route_rules=["default/catalog#0", "default/catalog#1"],
            keys=[snap.RateLimitKey(type="Route")],
        ),
        direction="outbound",
    )
    assert check(lim, route="default/catalog#0").allowed
    assert not check(lim, route="default/catalog#0").allowed
    assert check(lim, route="default/catalog#1").allowed  # its own bucket
    for _ in range(3):
        assert check(lim, route="default/other#0").allowed  # not one of the rule's routes


def test_matches_use_the_route_semantics() -> None:
    """Method, segment-aware PathPrefix, header and query conditions AND-ed; matches OR-ed."""
    lim = limiter(
        rule(
            requests=1,
            matches=[
                snap.RouteMatch(
                    path=snap.PathMatch(type="PathPrefix", value="/api/"), method="GET"
                ),
                snap.RouteMatch(
                    headers=[snap.HeaderMatch(name="x-tier", value="free")],
                    query_params=[
                        snap.QueryParamMatch(name="q", value="a b"),
                    ],
                ),
                snap.RouteMatch(path=snap.PathMatch(type="RegularExpression", value="/r/[0-9]+")),
            ],
        )
    )
    # Not matched: unlimited.
    for h in (
        head(b"/apix"),
        head(b"/api/x", method=b"POST"),
        head(b"/other", headers=[(b"x-tier", b"free")], query=b"q=ab"),
        head(b"/r/1a"),
    ):
        assert check(lim, h).allowed
        assert check(lim, h).allowed
    assert check(lim, head(b"/api")).allowed
    assert not check(lim, head(b"/api/y")).allowed  # same (keyless) bucket
    lim2 = limiter(
        rule(
            requests=1,
            matches=[snap.RouteMatch(query_params=[snap.QueryParamMatch(name="q", value="a b")])],
        )
    )
    assert check(lim2, head(query=b"q=a+b&q=zzz")).allowed
    assert not check(lim2, head(query=b"q=a%20b")).allowed


def test_every_applying_rule_must_allow_and_local_rules_come_first() -> None:
    calls: list[rl.Key] = []

    class Scripted:
        def acquire(self, key: rl.Key, done: Callable[[rl.Outcome], None]) -> rl.Outcome | None:
            calls.append(key)
            return (rl.ALLOWED, 0.0, "")

        def close(self) -> None:
            pass

    lim = limiter(
        rule(name="g", scope="Global", requests=100),
        rule(name="tight", requests=1),
        factory=lambda spec: Scripted(),
    )
    assert [r.name for r in lim.rules] == ["tight", "g"]
    assert check(lim).allowed
    d = check(lim)
    assert (d.allowed, d.rule) == (False, "tight")
    assert len(calls) == 1  # the refused request never reached the Global rule


def test_global_rule_waits_then_calls_back_once_and_continues_with_later_rules() -> None:
    """A Global rule that must ask Redis returns None; `done` gets the combined decision."""
    pending: list[Callable[[rl.Outcome], None]] = []

    class Deferred:
        def acquire(self, key: rl.Key, done: Callable[[rl.Outcome], None]) -> rl.Outcome | None:
            pending.append(done)
            return None

        def close(self) -> None:
            pass

    registry = Registry()
    lim = limiter(
        rule(name="g1", scope="Global"),
        rule(name="g2", scope="Global", failure_mode="FailClosed"),
        factory=lambda spec: Deferred(),
        registry=registry,
    )
    decisions: list[rl.Decision] = []
    assert lim.check(head(), None, None, b"ip", decisions.append) is None
    pending.pop(0)((rl.FAIL_OPEN, 1.0, "redis down"))  # g1 fails open: on to g2, which waits
    assert decisions == []
    pending.pop(0)((rl.ALLOWED, 0.0, ""))
    assert len(decisions) == 1
    assert decisions[0].allowed
    assert decisions[0].outcome == "fail_open"  # the note of the first rule is kept

    assert lim.check(head(), None, None, b"ip", decisions.append) is None
    pending.pop(0)((rl.ALLOWED, 0.0, ""))
    pending.pop(0)((rl.FAIL_CLOSED, 2.0, "Redis at 127.0.0.1:1 is unavailable (timeout: ...)"))
    d = decisions[-1]
    assert (d.allowed, d.outcome, d.rule) == (False, "fail_closed", "g2")
    assert "unavailable" in d.message
    assert dict(d.headers)[b"retry-after"] == b"2"
    text = registry.render().decode()
    assert 'rule="g2",decision="fail_closed"} 1' in text
    assert 'rule="g1",decision="fail_open"} 1' in text


def test_a_waiting_request_is_decided_once_even_if_its_rule_answers_twice() -> None:
    pending: list[Callable[[rl.Outcome], None]] = []

    class Twice:
        def acquire(self, key: rl.Key, done: Callable[[rl.Outcome], None]) -> rl.Outcome | None:
            pending.append(done)
            return None

        def close(self) -> None:
            pass

    lim = limiter(rule(name="g", scope="Global"), factory=lambda spec: Twice())
    decisions: list[rl.Decision] = []
    assert lim.check(head(), None, None, b"ip", decisions.append) is None
    pending[0]((rl.ALLOWED, 0.0, ""))
    pending[0]((rl.LIMITED, 1.0, ""))
    assert [d.outcome for d in decisions] == ["allowed"]


# --- compile ---------------------------------------------------------------------------------


def connect_nothing(server: snap.RedisServer) -> rl.RedisHandle:
    raise AssertionError("no Redis client expected")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (rule(requests=0), "requests must be at least 1"),
        (rule(period=0.0), "period must be a positive"),
        (rule(burst=-1), "burst must not be negative"),
        (rule(keys=[snap.RateLimitKey(type="Header")]), "a Header key needs the header's name"),
        (rule(matches=[snap.RouteMatch(method="G ET")]), "invalid method"),
        (
            rule(
                matches=[snap.RouteMatch(path=snap.PathMatch(type="RegularExpression", value="("))]
            ),
            "match #0, path",
        ),
        (rule(scope="Global"), "is Global, and the Snapshot has no redis"),
    ],
)
def test_bad_rules_are_refused_with_the_rule_named(spec: snap.RateLimitRule, message: str) -> None:
    config = snap.RateLimits(inbound=[spec])
    metrics = rl.RateLimitMetrics(Registry())
    with pytest.raises(rl.RateLimitCompileError) as info:
        rl.compile_tables(config, None, Clock(), metrics, connect_nothing)
    assert message in info.value.reason
    if spec.scope == "Local":
        assert "inbound rule #0 ('default/limits#0')" in info.value.reason


def test_bad_redis_settings_and_duplicate_names_are_refused() -> None:
    metrics = rl.RateLimitMetrics(Registry())
    g = rule(scope="Global")
    for server, message in (
        (snap.RedisServer(address="localhost"), "is not host:port"),
        (snap.RedisServer(address="127.0.0.1:6379", timeout=0.0), "timeout must be a positive"),
    ):
        config = snap.RateLimits(outbound=[g], redis=server)
        with pytest.raises(rl.RateLimitCompileError, match=message):
            rl.compile_tables(config, None, Clock(), metrics, connect_nothing)
    with pytest.raises(rl.RateLimitCompileError, match="appears twice"):
        rl.compile_tables(
            snap.RateLimits(inbound=[rule(), rule()]), None, Clock(), metrics, connect_nothing
        )
    assert rl.compile_tables(snap.RateLimits(), None, Clock(), metrics, connect_nothing) is None


def test_unchanged_rules_keep_their_buckets_across_snapshots() -> None:
    clock = Clock()
    metrics = rl.RateLimitMetrics(Registry())
    one = rule(requests=1)
    first = rl.compile_tables(snap.RateLimits(inbound=[one]), None, clock, metrics, connect_nothing)
    assert first is not None
    assert first.inbound is not None
    assert check(first.inbound).allowed
    # The same rule, in a new Snapshot with another rule added: still empty.
    other = rule(name="default/limits#1", requests=5)
    second = rl.compile_tables(
        snap.RateLimits(inbound=[one, other]), first, clock, metrics, connect_nothing
    )
    assert second is not None
    assert second.inbound is not None
    assert not check(second.inbound).allowed
    # A changed rule starts afresh.
    third = rl.compile_tables(
        snap.RateLimits(inbound=[rule(requests=2)]), second, clock, metrics, connect_nothing
    )
    assert third is not None
    assert third.inbound is not None
    assert check(third.inbound).allowed


def test_global_rules_share_one_client_while_the_server_is_the_same() -> None:
    made: list[snap.RedisServer] = []
    closed: list[str] = []

    class Handle:
        def __init__(self, server: snap.RedisServer) -> None:
            self.server = server

        def rule(self, spec: snap.RateLimitRule) -> rl.GlobalBuckets:
            class Buckets:
                def acquire(
                    self, key: rl.Key, done: Callable[[rl.Outcome], None]
                ) -> rl.Outcome | None:
                    return (rl.ALLOWED, 0.0, "")

                def close(self) -> None:
                    closed.append(spec.name)

            return Buckets()

        def close(self) -> None:
            closed.append(f"client {self.server.address}")

    def connect(server: snap.RedisServer) -> rl.RedisHandle:
        made.append(server)
        return Handle(server)

    metrics = rl.RateLimitMetrics(Registry())
    server = snap.RedisServer(address="127.0.0.1:1")
    g = rule(name="g", scope="Global")
    config = snap.RateLimits(inbound=[g], redis=server)
    first = rl.compile_tables(config, None, Clock(), metrics, connect)
    second = rl.compile_tables(config, first, Clock(), metrics, connect)
    assert first is not None
    assert second is not None
    first.retire(second)
    assert (len(made), closed) == (1, [])
    moved = snap.RateLimits(inbound=[g], redis=snap.RedisServer(address="127.0.0.1:2"))
    third = rl.compile_tables(moved, second, Clock(), metrics, connect)
    second.retire(third)
    assert len(made) == 2
    assert closed == ["g", "client 127.0.0.1:1"]
    assert third is not None
    third.close()
    assert closed[-2:] == ["g", "client 127.0.0.1:2"]
