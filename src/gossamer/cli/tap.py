"""`gossamer tap SERVICE`: a live stream of the requests a service's proxies finish."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import sys
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from gossamer.cli.main import CommandError
from gossamer.cli.resources import (
    ENV_TOKEN,
    add_control_plane_args,
    api_error_text,
    control_plane_target,
    unreachable,
)

if TYPE_CHECKING:
    from gossamer.control.client import Credentials

CONNECT_TIMEOUT = 10.0
MAX_LINE = 256 * 1024


def add_filter_args(p: argparse.ArgumentParser, direction_default: str | None) -> None:
    """The tap filters `tap` and `top` share."""
    p.add_argument(
        "service",
        metavar="SERVICE",
        help="the service whose proxies to tap (name or name.namespace)",
    )
    p.add_argument("-n", "--namespace", help="the service's namespace (default: any)")
    p.add_argument("--path", help="only requests whose path starts with this prefix")
    p.add_argument("--method", help="only requests with this method (GET, POST, ...)")
    p.add_argument("--status", help="only responses with this status (503) or class (5xx)")
    p.add_argument(
        "--direction",
        choices=("inbound", "outbound", "all"),
        default=direction_default or "all",
        help="inbound: requests the service received; outbound: requests it sent "
        f"(default {direction_default or 'all'})",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        metavar="S",
        help="stop after S seconds (default: run until interrupted)",
    )
    add_control_plane_args(p)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "tap",
        help="stream the requests a service's proxies finish, live",
        description="Stream one line per request that the proxies of SERVICE finish (inbound: "
        "requests the service received; outbound: requests it sent), like `linkerd viz tap`: "
        "time, proxy, direction, method, authority and path, status, x-gossamer-flags, "
        "duration, bytes, the peer and the request id. Filters run in the proxies. With "
        "--json, each request's access-log record (docs/access-log.md) plus its proxyId. Runs "
        "until interrupted, --max requests or --max-seconds.",
    )
    add_filter_args(p, None)
    p.add_argument("--max", type=int, metavar="N", help="stop after N requests")
    p.add_argument("--json", action="store_true", help="print each record as one JSON line")
    p.set_defaults(func=cmd_tap)


def tap_params(args: argparse.Namespace) -> dict[str, str]:
    service, _, namespace = str(args.service).partition(".")
    params = {"service": service}
    if namespace and not args.namespace:
        params["namespace"] = namespace  # `pricing.shop`, as `gossamer stat` takes it
    for name in ("namespace", "path", "method", "status"):
        value = getattr(args, name, None)
        if value:
            params[name] = str(value)
    if args.direction != "all":
        params["direction"] = args.direction
    return params


def _ssl_context(url: str, creds: Credentials) -> ssl.SSLContext | None:
    if not url.startswith("https:"):
        return None
    try:
        return ssl.create_default_context(cafile=str(creds.ca_bundle) if creds.ca_bundle else None)
    except (OSError, ssl.SSLError) as exc:
        raise CommandError(f"cannot load the CA bundle {creds.ca_bundle}: {exc}") from None


def _error_text(status: int, body: bytes) -> str:
    from gossamer.control.client import ApiError

    try:
        error = json.loads(body)["error"]
        exc = ApiError(status, error["code"], error["message"], error.get("details") or [])
    except (ValueError, KeyError, TypeError):
        return f"the control plane answered HTTP {status}: {body[:200].decode('utf-8', 'replace')}"
    text = api_error_text(exc)
    if exc.code == "unauthenticated":
        text += f"\n  give an operator token with ${ENV_TOKEN}"
    return text


async def records(
    url: str, creds: Credentials, params: dict[str, str]
) -> AsyncIterator[dict[str, Any]]:
    """The records of `GET /v1/tap` as they come (a `{"tapDropped": N}` line included).

    Raises:
        CommandError: the control plane is unreachable or refuses the tap (its message).
    """
    parts = urllib.parse.urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if https else 80)
    target = (parts.path.rstrip("/") or "") + "/v1/tap?" + urllib.parse.urlencode(params)
    context = _ssl_context(url, creds)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            reader, writer = await asyncio.open_connection(host, port, ssl=context, limit=MAX_LINE)
    except ssl.SSLCertVerificationError as exc:
        where = creds.ca_bundle or "the system's CAs"
        raise CommandError(
            f"the control plane at {url} has a certificate that {where} cannot verify "
            f"({exc.verify_message}); give the mesh's CA bundle with $GOSSAMER_CA_BUNDLE"
        ) from None
    except (OSError, TimeoutError) as exc:
        raise CommandError(unreachable(url, str(exc) or "no answer")) from None
    try:
        auth = f"authorization: Bearer {creds.token}\r\n" if creds.token else ""
        writer.write(
            f"GET {target} HTTP/1.1\r\nhost: {parts.netloc}\r\naccept: application/x-ndjson\r\n"
            f"{auth}connection: close\r\n\r\n".encode()
        )
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise CommandError(unreachable(url, str(exc) or "no answer")) from None
        status_line, *fields = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if status != 200:
            body = await reader.read(65536)
            if chunked:
                body = body.split(b"\r\n", 1)[-1]
            raise CommandError(_error_text(status, body.strip()))
        async for line in _lines(reader, chunked):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict):
                yield doc
    finally:
        writer.close()
        # Bounded: a TLS close waits for the peer's close_notify.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()


async def _lines(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    """The body's lines: de-chunked when it is chunked, else up to the connection's end."""
    if not chunked:
        while line := await reader.readline():
            yield line
        return
    pending = b""
    while True:
        size_line = await reader.readline()
        if not size_line:
            return
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            return
        data = pending + await reader.readexactly(size)
        await reader.readexactly(2)
        *complete, pending = data.split(b"\n")
        for line in complete:
            yield line


async def follow(
    args: argparse.Namespace,
    on_record: Callable[[dict[str, Any]], bool],
    on_tick: Callable[[], None] | None = None,
    tick: float | None = None,
) -> None:
    """Feed records to `on_record` (False: stop) for up to --max-seconds; `on_tick` every
    `tick` seconds."""
    url, creds = control_plane_target(args)
    params = tap_params(args)
    loop = asyncio.get_running_loop()
    end = None if args.max_seconds is None else loop.time() + args.max_seconds
    stream = records(url, creds, params)
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for doc in stream:
                queue.put_nowait(doc)
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(pump())
    next_tick = None if tick is None else loop.time() + tick
    try:
        while True:
            now = loop.time()
            wait = [t - now for t in (end, next_tick) if t is not None]
            try:
                async with asyncio.timeout(max(0.0, min(wait)) if wait else None):
                    doc = await queue.get()
            except TimeoutError:
                now = loop.time()
                if next_tick is not None and now >= next_tick and on_tick is not None:
                    on_tick()
                    next_tick = now + (tick or 1.0)
                if end is not None and now >= end:
                    return
                continue
            if doc is None:
                await task  # raises the stream's CommandError, if that is why it ended
                raise CommandError("the control plane ended the tap")
            if "tapDropped" in doc:
                who = f"proxy {doc['proxyId']}" if "proxyId" in doc else "the control plane"
                print(
                    f"gossamer tap: {doc['tapDropped']} records dropped so far by {who} "
                    "(this reader was too slow)",
                    file=sys.stderr,
                )
                continue
            if not on_record(doc):
                return
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, CommandError):
            await task


def _value(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    return "-" if value is None or value == "" else str(value)


def format_record(doc: dict[str, Any]) -> str:
    """One readable line for one request record."""
    flags = doc.get("flags")
    direction = _value(doc, "direction")
    peer = doc.get("sourceIdentity") if direction == "inbound" else doc.get("upstreamEndpoint")
    duration = doc.get("durationMs")
    took = f"{duration:.3f}ms" if isinstance(duration, int | float) else "-"
    return (
        f"{_value(doc, 'time')} {_value(doc, 'proxyId')} {direction:<8} "
        f"{_value(doc, 'method')} {_value(doc, 'authority')}{doc.get('path') or ''} "
        f"-> {_value(doc, 'status')}{f' [{flags}]' if flags else ''} {took} "
        f"in={doc.get('bytesReceived', 0)}B out={doc.get('bytesSent', 0)}B "
        f"{'src' if direction == 'inbound' else 'dst'}={peer or '-'} "
        f"rid={_value(doc, 'requestId')}"
    )


def cmd_tap(args: argparse.Namespace) -> int:
    if args.max is not None and args.max < 1:
        raise CommandError("--max must be at least 1", code=2)
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise CommandError("--max-seconds must be more than 0", code=2)
    seen = 0

    def on_record(doc: dict[str, Any]) -> bool:
        nonlocal seen
        seen += 1
        print(json.dumps(doc) if args.json else format_record(doc), flush=True)
        return args.max is None or seen < args.max

    asyncio.run(follow(args, on_record))
    return 0
