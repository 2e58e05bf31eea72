"""`gossamer apply/get/delete/proxy-config/proxy-status`: talk to a running control plane."""

from __future__ import annotations

import argparse
import io
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gossamer.cli.main import CommandError

if TYPE_CHECKING:
    from gossamer.control.client import ControlPlaneClient, Credentials

ENV_CONTROL_PLANE = "GOSSAMER_CONTROL_PLANE"
ENV_TOKEN = "GOSSAMER_TOKEN"
KINDS = (
    "Mesh",
    "Service",
    "HTTPRoute",
    "DestinationPolicy",
    "AuthorizationPolicy",
    "RateLimitPolicy",
)
_ALIASES = {
    "mesh": "Mesh",
    "meshes": "Mesh",
    "service": "Service",
    "services": "Service",
    "svc": "Service",
    "httproute": "HTTPRoute",
    "httproutes": "HTTPRoute",
    "route": "HTTPRoute",
    "routes": "HTTPRoute",
    "destinationpolicy": "DestinationPolicy",
    "destinationpolicies": "DestinationPolicy",
    "dp": "DestinationPolicy",
    "authorizationpolicy": "AuthorizationPolicy",
    "authorizationpolicies": "AuthorizationPolicy",
    "authz": "AuthorizationPolicy",
    "ratelimitpolicy": "RateLimitPolicy",
    "ratelimitpolicies": "RateLimitPolicy",
    "rlp": "RateLimitPolicy",
}
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class OperatorApi(Protocol):
    """The calls of the operator API these commands use (docs/internals.md)."""

    url: str

    def apply(self, resources: list[dict[str, Any]], dry_run: bool) -> dict[str, Any]: ...
    def list_resources(self, kind: str | None, namespace: str | None) -> list[dict[str, Any]]: ...
    def get_resource(self, kind: str, namespace: str, name: str) -> dict[str, Any]: ...
    def delete_resource(self, kind: str, namespace: str, name: str) -> dict[str, Any]: ...
    def proxies(self) -> list[dict[str, Any]]: ...


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("apply", help="create or update resources from files")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE")
    p.add_argument("--dry-run", action="store_true", help="validate on the server, change nothing")
    add_control_plane_args(p)
    p.set_defaults(func=cmd_apply)

    p = subparsers.add_parser("get", help="list resources, or show one")
    p.add_argument("kind", nargs="?", help="Mesh, Service, HTTPRoute or DestinationPolicy")
    p.add_argument("name", nargs="?")
    p.add_argument("-n", "--namespace", help="the namespace (default: all; 'default' with a NAME)")
    p.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")
    add_control_plane_args(p)
    p.set_defaults(func=cmd_get)

    p = subparsers.add_parser("delete", help="delete a resource")
    p.add_argument("kind")
    p.add_argument("name")
    p.add_argument("-n", "--namespace", default="default")
    add_control_plane_args(p)
    p.set_defaults(func=cmd_delete)

    p = subparsers.add_parser("proxy-config", help="the Snapshot a proxy is running")
    p.add_argument("proxy_id", metavar="PROXY_ID")
    p.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    add_control_plane_args(p)
    p.set_defaults(func=cmd_proxy_config)

    p = subparsers.add_parser("proxy-status", help="which config version each proxy runs")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_control_plane_args(p)
    p.set_defaults(func=cmd_proxy_status)


def add_control_plane_args(p: argparse.ArgumentParser) -> None:
    """The flags every command that talks to a running control plane takes."""
    p.add_argument(
        "--control-plane",
        metavar="URL",
        help="the control plane's API (default $GOSSAMER_CONTROL_PLANE, else the running mesh's)",
    )
    p.add_argument("--state-dir", help="the running mesh's state dir (to find its control plane)")


# --- finding and calling the control plane --------------------------------------------------------


def control_plane_url(args: argparse.Namespace) -> str:
    """--control-plane, else $GOSSAMER_CONTROL_PLANE, else the running mesh's status.json."""
    return control_plane_target(args)[0]


def control_plane_target(args: argparse.Namespace) -> tuple[str, Credentials]:
    """Where the operator API is and how to call it.

    The URL is --control-plane, else $GOSSAMER_CONTROL_PLANE, else the running mesh's
    status.json. The token is $GOSSAMER_TOKEN and the CA bundle $GOSSAMER_CA_BUNDLE; either one
    not set is taken from the control plane's state dir (`admin.token`, `ca-bundle.pem`) when
    the URL is that of the mesh started by `gossamer up` there.
    """
    from gossamer.control.client import Credentials
    from gossamer.runtime.state import StateDir, resolve_state_dir

    state = StateDir(resolve_state_dir(getattr(args, "state_dir", None)))
    status = state.read_status() or {}
    running = str(status.get("controlPlane") or "").rstrip("/")
    url = getattr(args, "control_plane", None) or os.environ.get(ENV_CONTROL_PLANE)
    if url:
        url = str(url).rstrip("/")
    elif running:
        url = running
    else:
        raise CommandError(
            f"no running mesh found in {state.root}: start one with gossamer up -d FILE, "
            "or pass --control-plane URL"
        )
    creds = Credentials.from_env()
    if url == running and (creds.token is None or creds.ca_bundle is None):
        local = Credentials.from_state_dir(state.control_plane)
        creds = Credentials(creds.token or local.token, creds.ca_bundle or local.ca_bundle)
    return url, creds


def connect(args: argparse.Namespace) -> OperatorApi:
    url, creds = control_plane_target(args)
    return ClientApi(url, creds)


class ClientApi:
    """OperatorApi over gossamer.control.client, with its errors turned into CommandErrors."""

    def __init__(self, url: str, credentials: Credentials | None = None) -> None:
        from gossamer.control.client import ApiError, ControlPlaneClient

        self.url = url
        try:
            self._client = ControlPlaneClient(url, credentials=credentials)
        except ApiError as exc:
            raise CommandError(exc.message) from None

    @property
    def client(self) -> ControlPlaneClient:
        return self._client

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run one call of `client`, its ApiError turned into a CommandError."""
        return self._call(fn)

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run one client call, turning its ApiError into a CommandError."""
        from gossamer.control.client import ApiError

        try:
            return fn()
        except ApiError as exc:
            if exc.code == "unreachable":
                raise CommandError(unreachable(self.url, exc.message)) from None
            text = api_error_text(exc)
            if exc.code == "unauthenticated":
                text += f"\n  give an operator token with ${ENV_TOKEN}"
            raise CommandError(text) from None

    def apply(self, resources: list[dict[str, Any]], dry_run: bool) -> dict[str, Any]:
        out: dict[str, Any] = self._call(lambda: self._client.apply(resources, dry_run=dry_run))
        return out

    def list_resources(self, kind: str | None, namespace: str | None) -> list[dict[str, Any]]:
        out = self._call(lambda: self._client.list_resources(kind, namespace))
        return list(out.get("items", []))

    def get_resource(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self._call(lambda: self._client.get(kind, namespace, name))
        return out

    def delete_resource(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = self._call(lambda: self._client.delete(kind, namespace, name))
        return out

    def proxies(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self._call(self._client.proxies)
        return out


def unreachable(url: str, reason: str) -> str:
    """The message for a control plane that does not answer; `reason` only when it is not down."""
    why = "" if "refused" in reason.lower() else f" ({reason})"
    return f"no control plane at {url}{why}: is the mesh up? (gossamer up -d FILE)"


def api_error_text(exc: Any) -> str:
    """One line of message, then one line per detail ("  path: message")."""
    status = getattr(exc, "status", None)
    code = getattr(exc, "code", None)
    head = str(getattr(exc, "message", None) or exc)
    if code and code != "invalid" and status:
        head += f" ({code}, HTTP {status})"
    lines = [head]
    for d in getattr(exc, "details", None) or []:
        if isinstance(d, dict):
            path, msg = d.get("path"), d.get("message", "")
            lines.append(f"  {path}: {msg}" if path else f"  {msg}")
        else:
            lines.append(f"  {d}")
    return "\n".join(lines)


# --- apply ----------------------------------------------------------------------------------------


def cmd_apply(args: argparse.Namespace) -> int:
    from gossamer.config.errors import ConfigError
    from gossamer.config.loader import load_files, load_objects
    from gossamer.config.validate import STORED, check_against
    from gossamer.runtime.plan import to_wire

    for f in args.filename:
        if not Path(f).exists():
            raise CommandError(f"{f}: no such file or directory")
    try:
        loaded = load_files(args.filename)
    except ConfigError as exc:
        raise CommandError(f"invalid configuration:\n{exc}") from None
    if not loaded:
        raise CommandError(f"no resources in {', '.join(args.filename)}")
    api = connect(args)
    # References may point at what the control plane already stores (a route file applied to a
    # running mesh), so check against that, locally first for file:line errors.
    stored = api.list_resources(None, None)
    try:
        existing = load_objects(stored, STORED)
    except ConfigError:
        existing = []
    problems = check_against(loaded, existing)
    if problems:
        raise CommandError("invalid configuration:\n" + "\n".join(str(p) for p in problems))
    answer = api.apply([to_wire(item.resource) for item in loaded], args.dry_run)
    print(format_apply(answer, args.dry_run))
    return 0


def format_apply(answer: dict[str, Any], dry_run: bool = False) -> str:
    suffix = " (dry run)" if dry_run else ""
    return "\n".join(f"{r['key']} {r['action']}{suffix}" for r in answer.get("results", []))


# --- get / delete ---------------------------------------------------------------------------------


def resolve_kind(kind: str) -> str:
    """ "routes" -> "HTTPRoute"; raises CommandError naming the kinds for an unknown one."""
    if kind in KINDS:
        return kind
    found = _ALIASES.get(kind.lower())
    if found is None:
        raise CommandError(f"unknown kind {kind!r}; kinds are {', '.join(KINDS)}")
    return found


def cmd_get(args: argparse.Namespace) -> int:
    kind = resolve_kind(args.kind) if args.kind else None
    api = connect(args)
    if args.name:
        if kind is None:
            raise CommandError("a name needs a kind: gossamer get KIND NAME")
        item = api.get_resource(kind, args.namespace or "default", args.name)
        print(format_resources([item], args.output, single=True))
        return 0
    items = api.list_resources(kind, args.namespace)
    if not items and args.output == "table":
        what = f"{kind} resources" if kind else "resources"
        print(f"no {what}" + (f" in namespace {args.namespace}" if args.namespace else ""))
        return 0
    print(format_resources(items, args.output))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    kind = resolve_kind(args.kind)
    answer = connect(args).delete_resource(kind, args.namespace, args.name)
    print(f"{answer.get('key', f'{kind}/{args.namespace}/{args.name}')} deleted")
    return 0


def format_resources(items: list[dict[str, Any]], output: str, single: bool = False) -> str:
    if output == "json":
        return json.dumps(items[0] if single else {"items": items}, indent=2)
    if output == "yaml":
        return "---\n".join(to_yaml(item) for item in items).rstrip("\n")
    rows = [
        [
            item.get("metadata", {}).get("namespace", "default"),
            item.get("kind", "?"),
            item.get("metadata", {}).get("name", "?"),
            summarize(item),
        ]
        for item in sorted(items, key=_sort_key)
    ]
    return render_table(["NAMESPACE", "KIND", "NAME", "DETAILS"], rows)


def _sort_key(item: dict[str, Any]) -> tuple[int, str, str]:
    kind = item.get("kind", "")
    meta = item.get("metadata", {})
    order = KINDS.index(kind) if kind in KINDS else len(KINDS)
    return order, meta.get("namespace", ""), meta.get("name", "")


def summarize(item: dict[str, Any]) -> str:
    """A short line on what a resource does, for the table."""
    spec: dict[str, Any] = item.get("spec") or {}
    kind = item.get("kind")
    if kind == "Service":
        parts = []
        subsets = spec.get("subsets") or []
        if subsets:
            parts.append(
                "subsets " + ", ".join(f"{s['name']}x{s.get('replicas', 1)}" for s in subsets)
            )
        else:
            parts.append(f"replicas {spec.get('replicas', 1)}")
        if spec.get("publish") is not None:
            parts.append(f"publish {spec['publish']}")
        return "; ".join(parts)
    if kind == "HTTPRoute":
        parents = ", ".join(p.get("name", "?") for p in spec.get("parentRefs") or [])
        rules = spec.get("rules") or [{}]
        backends = []
        for rule in rules:
            refs = rule.get("backendRefs") or []
            total = sum(int(r.get("weight", 1)) for r in refs) or 1
            for ref in refs:
                name = ref.get("name", "?") + (f"/{ref['subset']}" if ref.get("subset") else "")
                share = 100 * int(ref.get("weight", 1)) / total
                backends.append(f"{name} {share:.0f}%" if len(refs) > 1 else name)
        retry = any(rule.get("retry") for rule in rules)
        text = f"{parents} -> {', '.join(backends) or parents}"
        return text + ("; retries" if retry else "")
    if kind == "DestinationPolicy":
        target = spec.get("targetRef") or {}
        name = target.get("name", "?") + (f"/{target['subset']}" if target.get("subset") else "")
        lb = (spec.get("loadBalancer") or {}).get("policy")
        return f"{name}" + (f"; {lb}" if lb else "")
    if kind == "AuthorizationPolicy":
        target = (spec.get("targetRef") or {}).get("name") or "every service in the namespace"
        rules = spec.get("rules") or []
        return f"{target}; {spec.get('action', 'ALLOW')}, {len(rules)} rule(s)"
    if kind == "Mesh":
        lb = ((spec.get("defaults") or {}).get("loadBalancer")) or "LEAST_REQUEST"
        return f"trust domain {spec.get('trustDomain', 'gossamer.local')}; {lb}"
    return ""


def to_yaml(data: Any) -> str:
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip mode keeps each document's own key order
    yaml.default_flow_style = False
    yaml.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()


# --- proxies --------------------------------------------------------------------------------------


def cmd_proxy_config(args: argparse.Namespace) -> int:
    api = connect(args)
    proxies = api.proxies()
    match = [p for p in proxies if p.get("proxyId") == args.proxy_id]
    if not match:
        known = ", ".join(sorted(str(p.get("proxyId")) for p in proxies)) or "none"
        raise CommandError(f"no proxy {args.proxy_id!r} at {api.url}; known proxies: {known}")
    admin = match[0].get("admin")
    if not admin:
        raise CommandError(f"proxy {args.proxy_id} did not register an admin address")
    url = f"http://{admin}/config"
    try:
        with _DIRECT.open(url, timeout=5) as resp:
            config = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CommandError(f"cannot read {args.proxy_id}'s config from {url}: {exc}") from None
    if args.output == "json":
        print(json.dumps(config, indent=2))
    else:
        print(to_yaml(config).rstrip("\n"))
    return 0


def cmd_proxy_status(args: argparse.Namespace) -> int:
    proxies = connect(args).proxies()
    if args.output == "json":
        print(json.dumps({"items": proxies}, indent=2))
    elif not proxies:
        print("no proxies registered")
    else:
        print(format_proxy_status(proxies, time.time()))
    return 0


def format_proxy_status(proxies: Sequence[dict[str, Any]], now: float) -> str:
    rows = []
    for p in sorted(proxies, key=lambda p: str(p.get("proxyId"))):
        version = p.get("ackedVersion") or p.get("sentVersion") or "-"
        sent = p.get("sentVersion")
        if sent and sent != p.get("ackedVersion"):
            version = f"{short_version(p.get('ackedVersion'))}->{short_version(sent)}"
        else:
            version = short_version(version)
        rows.append(
            [
                str(p.get("proxyId", "?")),
                str(p.get("service") or "-"),
                str(p.get("subset") or "-"),
                version,
                str(p.get("state") or "-"),
                ago(p.get("lastContact"), now),
                _one_line(p.get("error")) or "",
            ]
        )
    return render_table(
        ["PROXY", "SERVICE", "SUBSET", "VERSION", "STATE", "LAST CONTACT", "ERROR"], rows
    )


def short_version(version: Any) -> str:
    if not version:
        return "-"
    text = str(version)
    return text[:12] if len(text) > 12 else text


def ago(when: Any, now: float) -> str:
    """ "2s ago", "3m ago", "1h ago"; "never" when unknown."""
    if not isinstance(when, int | float) or when <= 0:
        return "never"
    secs = max(0, int(now - when))
    if secs < 120:
        return f"{secs}s ago"
    if secs < 7200:
        return f"{secs // 60}m ago"
    return f"{secs // 3600}h ago"


def _one_line(text: Any) -> str:
    return " ".join(str(text).split()) if text else ""


# --- tables ---------------------------------------------------------------------------------------


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, three spaces apart, like kubectl."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)
