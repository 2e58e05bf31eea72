"""What a rule's fallback cache shares between clients, and what it never does.

Real data planes and backends on 127.0.0.1 (helpers from test_dataplane.py and test_fallback.py):
the backend answers while `state["up"]`, then fails with a 500; whether the fallback then serves
the kept response (`cached`) or the rule's static response tells what was kept. The unit tests at
the end check the rules of response_cache.py on their own.
"""

from __future__ import annotations

import pytest
from test_dataplane import Backend, Client, Seen, ok, run, start_dataplane
from test_fallback import ERROR_500, RULE, STATIC, fallback_snapshot, fallbacks, rule_cache

from gossamer import snapshot as snap
from gossamer.http.message import RequestHead, ResponseHead
from gossamer.proxy.response_cache import ResponseCache, varied

STATIC_BODY = b'{"items":[]}'
CACHING = snap.Fallback(max_stale=60.0, response=STATIC)


class Flaky:
    """A backend handler: `answers[url]` while up (default: a plain 200), a 500 once down."""

    def __init__(self, answers: dict[bytes, bytes] | None = None) -> None:
        self.up = True
        self.answers = answers or {}

    def __call__(self, seen: Seen) -> bytes:
        if not self.up:
            return ERROR_500
        return self.answers.get(seen.url, ok(b"public " + seen.url))


def test_private_and_partial_responses_are_never_served_to_others() -> None:
    """The reviewer's case: a Range request's 206 and an authorized request's private answer
    (with Set-Cookie) must not reach another client during an outage."""

    def handler(seen: Seen) -> bytes:
        if not app_state.up:
            return ERROR_500
        fields = dict(seen.headers)
        if b"range" in fields:
            return (
                b"HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 0-1/10\r\n"
                b"content-length: 2\r\n\r\nAB"
            )
        if b"authorization" in fields:
            return ok(
                b"secret for " + fields[b"authorization"],
                b"cache-control: private, no-store\r\nset-cookie: sid=alice\r\n",
            )
        return ok(b"public")

    app_state = Flaky()

    async def main() -> None:
        app = await Backend(handler).start()
        dp, _, out, registry = await start_dataplane(fallback_snapshot(CACHING, [app.address]))
        client = await Client.open(out)
        r = await client.request(b"/file", b"pricing", headers=b"range: bytes=0-1\r\n")
        assert (r.status, r.body) == (206, b"AB")
        r = await client.request(b"/me", b"pricing", headers=b"authorization: Bearer alice\r\n")
        assert r.body == b"secret for Bearer alice"
        # Not even a 200 answer to a Range or Authorization request is kept.
        r = await client.request(b"/other", b"pricing", headers=b"cookie: sid=alice\r\n")
        assert r.body == b"public"
        assert len(rule_cache(dp)) == 0
        app_state.up = False
        for target, headers in [
            (b"/file", b""),
            (b"/me", b"authorization: Bearer bob\r\n"),
            (b"/me", b""),
            (b"/other", b""),
        ]:
            r = await client.request(target, b"pricing", headers=headers)
            assert (r.status, r.body) == (200, STATIC_BODY), target
            assert r.header(b"set-cookie") is None
            assert r.header(b"content-range") is None
        assert fallbacks(registry, "cached", "upstream-5xx") == 0
        assert fallbacks(registry, "response", "upstream-5xx") == 4

    run(main())


_206 = b"HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 0-0/9\r\ncontent-length: 1\r\n\r\nx"


@pytest.mark.parametrize(
    ("response", "kept"),
    [
        pytest.param(ok(b"x", b"cache-control: public, max-age=60\r\n"), True, id="200-public"),
        pytest.param(
            b"HTTP/1.1 203 Non-Authoritative Information\r\ncontent-length: 1\r\n\r\nx",
            True,
            id="203",
        ),
        pytest.param(b"HTTP/1.1 204 No Content\r\n\r\n", True, id="204"),
        pytest.param(ok(b"x", b"vary: Accept-Encoding\r\n"), True, id="vary-named"),
        pytest.param(b"HTTP/1.1 201 Created\r\ncontent-length: 1\r\n\r\nx", False, id="201"),
        pytest.param(_206, False, id="206"),
        pytest.param(ok(b"x", b"set-cookie: sid=1\r\n"), False, id="set-cookie"),
        pytest.param(ok(b"x", b"Cache-Control: max-age=60, Private\r\n"), False, id="private"),
        pytest.param(ok(b"x", b'cache-control: private="x-user"\r\n'), False, id="private=x"),
        pytest.param(ok(b"x", b"cache-control: no-store\r\n"), False, id="no-store"),
        pytest.param(ok(b"x", b"cache-control: no-cache\r\n"), False, id="no-cache"),
        pytest.param(ok(b"x", b"vary: accept-encoding, *\r\n"), False, id="vary-star"),
    ],
)
def test_only_shareable_responses_are_kept(response: bytes, kept: bool) -> None:
    async def main() -> None:
        app = await Backend(lambda _seen: response).start()
        dp, _, out, _ = await start_dataplane(fallback_snapshot(CACHING, [app.address]))
        client = await Client.open(out)
        await client.request(b"/r", b"pricing")
        assert len(rule_cache(dp)) == (1 if kept else 0)

    run(main())


def test_requests_with_credentials_are_not_served_from_the_cache_but_a_range_is() -> None:
    """A public answer was kept; during the outage an Authorization or Cookie request skips the
    cached step (it may be owed a different answer), a Range request gets the whole 200."""

    async def main() -> None:
        handler = Flaky()
        app = await Backend(handler).start()
        _dp, _, out, registry = await start_dataplane(fallback_snapshot(CACHING, [app.address]))
        client = await Client.open(out)
        assert (await client.request(b"/doc", b"pricing")).body == b"public /doc"
        handler.up = False
        for headers in (b"authorization: Bearer bob\r\n", b"cookie: sid=bob\r\n"):
            r = await client.request(b"/doc", b"pricing", headers=headers)
            assert r.body == STATIC_BODY
        r = await client.request(b"/doc", b"pricing", headers=b"range: bytes=0-1\r\n")
        assert (r.status, r.body) == (200, b"public /doc")
        assert r.header(b"x-gossamer-flags") == b"fallback,upstream-5xx"
        assert fallbacks(registry, "cached", "upstream-5xx") == 1

    run(main())


def test_a_vary_response_is_served_only_for_the_same_request_values() -> None:
    async def main() -> None:
        handler = Flaky(
            {b"/v": ok(b"gzip bytes", b"vary: Accept-Encoding\r\ncontent-encoding: gzip\r\n")}
        )
        app = await Backend(handler).start()
        _dp, _, out, _ = await start_dataplane(fallback_snapshot(CACHING, [app.address]))
        client = await Client.open(out)
        await client.request(b"/v", b"pricing", headers=b"accept-encoding: gzip\r\n")
        handler.up = False
        r = await client.request(b"/v", b"pricing", headers=b"accept-encoding: gzip\r\n")
        assert (r.body, r.header(b"content-encoding")) == (b"gzip bytes", b"gzip")
        for headers in (b"", b"accept-encoding: br\r\n"):
            r = await client.request(b"/v", b"pricing", headers=headers)
            assert r.body == STATIC_BODY

    run(main())


# --- across Snapshots -----------------------------------------------------------------------------


def _with_backend(fallback: snap.Fallback, backend: str, addresses: list[str]) -> snap.Snapshot:
    base = fallback_snapshot(fallback, addresses, lite=addresses)
    vh = base.virtual_hosts[0]
    rule = vh.rules[0]
    return snap.seal(
        snap.Snapshot(
            proxy=base.proxy,
            virtual_hosts=[
                snap.VirtualHost(
                    name=vh.name,
                    domains=vh.domains,
                    rules=[
                        snap.RouteRule(
                            name=rule.name,
                            backends=[snap.WeightedCluster(cluster=backend)],
                            fallback=fallback,
                        )
                    ],
                )
            ],
            clusters=base.clusters,
        )
    )


def test_a_rule_sent_to_other_backends_starts_with_an_empty_cache() -> None:
    """Kept per (host, rule, backend clusters): the same rule name pointed elsewhere does not
    serve the old backend's answers; pointed back unchanged it keeps its cache."""

    async def main() -> None:
        app = await Backend(lambda _seen: ok(b"from pricing")).start()
        fb = snap.Fallback(max_stale=60.0)
        dp, _, out, _ = await start_dataplane(_with_backend(fb, "pricing.default", [app.address]))
        client = await Client.open(out)
        await client.request(b"/a", b"pricing")
        before = dp.tables.routes.caches[f"pricing.default|{RULE}|pricing.default"]
        assert len(before) == 1
        dp.apply(_with_backend(fb, "pricing.default", [app.address]))
        assert dp.tables.routes.caches[f"pricing.default|{RULE}|pricing.default"] is before
        dp.apply(_with_backend(fb, "lite.default", [app.address]))
        assert list(dp.tables.routes.caches) == [f"pricing.default|{RULE}|lite.default"]
        assert len(dp.tables.routes.caches[f"pricing.default|{RULE}|lite.default"]) == 0

    run(main())


# --- the rules on their own -----------------------------------------------------------------------


def test_which_requests_are_captured_and_looked_up() -> None:
    cache = ResponseCache(4, 100, lambda: 0.0)

    def head(method: bytes = b"GET", *fields: tuple[bytes, bytes]) -> RequestHead:
        return RequestHead(method, b"/p", b"q=1", list(fields), host=b"h")

    assert cache.capture(head()) is not None
    assert cache.capture(head(b"HEAD")) is not None
    for method in (b"POST", b"PUT", b"DELETE"):
        assert cache.capture(head(method)) is None
    for field in (b"authorization", b"cookie", b"range"):
        assert cache.capture(head(b"GET", (field, b"x"))) is None
    assert cache.put((b"GET", b"h", b"/p", b"q=1"), 200, [], b"body", False)
    assert cache.lookup(head(), 1.0) is not None
    assert cache.lookup(head(b"GET", (b"range", b"bytes=0-1")), 1.0) is not None
    assert cache.lookup(head(b"GET", (b"authorization", b"x")), 1.0) is None
    assert cache.lookup(head(b"GET", (b"cookie", b"x")), 1.0) is None
    assert cache.lookup(head(b"POST"), 1.0) is None


def test_varied_names_the_request_values_or_refuses() -> None:
    request = [(b"accept-encoding", b"gzip"), (b"accept-language", b"fr"), (b"x-a", b"1")]
    assert varied([(b"content-type", b"text/plain")], request) == ()
    assert varied(
        [(b"vary", b"Accept-Encoding, accept-language"), (b"vary", b"X-B, accept-encoding")],
        request,
    ) == ((b"accept-encoding", b"gzip"), (b"accept-language", b"fr"), (b"x-b", None))
    for field in [
        (b"set-cookie", b"a=1"),
        (b"cache-control", b"no-cache"),
        (b"cache-control", b"public, NO-STORE"),
        (b"cache-control", b'private="set-cookie"'),
        (b"vary", b"*"),
    ]:
        assert varied([field], request) is None, field
    # A stored variant matches only identical values (all of a repeated field's, joined).
    cache = ResponseCache(4, 100, lambda: 0.0)
    key = (b"GET", b"h", b"/", b"")
    cache.put(key, 200, [], b"b", False, ((b"accept", b"a, b"),))
    assert cache.get(key, 1.0, [(b"accept", b"a"), (b"accept", b"b")]) is not None
    assert cache.get(key, 1.0, [(b"accept", b"a")]) is None
    assert cache.get(key, 1.0) is None


def test_a_capture_keeps_only_kept_statuses_and_bodies_within_the_limit() -> None:
    cache = ResponseCache(4, 5, lambda: 0.0)
    request = RequestHead(b"GET", b"/", host=b"h")
    capture = cache.capture(request)
    assert capture is not None
    assert not capture.begin(ResponseHead(206, []), 2)
    assert not capture.begin(ResponseHead(200, []), 6)  # declared over max_body_bytes
    assert capture.begin(ResponseHead(200, [(b"content-length", b"4")]), 4)
    assert capture.add(b"ab")
    assert capture.add(b"cd")
    assert capture.keep(request, frozenset())
    entry = cache.lookup(request, 1.0)
    assert entry is not None
    assert (entry.status, entry.body, entry.headers) == (200, b"abcd", [])
    chunked = cache.capture(request)
    assert chunked is not None
    assert chunked.begin(ResponseHead(200, []), -1)
    assert chunked.add(b"abc")
    assert not chunked.add(b"def")  # a chunked body past the limit: not kept
