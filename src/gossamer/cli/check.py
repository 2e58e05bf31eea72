"""`gossamer check`: is the mesh healthy? The control plane, its CA certificates, every SVID."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import socket
import ssl
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from gossamer.cli.main import CommandError
from gossamer.cli.resources import ClientApi, add_control_plane_args, control_plane_target

Level = Literal["ok", "info", "warn", "fail"]
_MARK = {"ok": "[ok]  ", "info": "[--]  ", "warn": "[warn]", "fail": "[FAIL]"}


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report: its group, its level and what it found."""

    group: str
    level: Level
    message: str


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "check",
        help="check the mesh: control plane, CA certificates, every proxy's SVID",
        description="Check the running mesh, as `linkerd check` does: the control plane answers "
        "and its certificate is valid; no CA certificate expires within 30 days (warning) or has "
        "expired (failure); no proxy's SVID is past half-life (warning) or expired (failure); "
        "every proxy runs the current trust bundle; a rotation under way; the configuration "
        "passes `gossamer analyze` (an error fails, a warning warns). Exit status 0 when "
        "nothing failed (warnings included), 1 otherwise.",
    )
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    add_control_plane_args(p)
    p.set_defaults(func=cmd_check)


def cmd_check(args: argparse.Namespace) -> int:
    url, creds = control_plane_target(args)
    checks: list[Check] = []
    status: dict[str, Any] | None = None
    api: ClientApi | None = None
    try:
        api = ClientApi(url, creds)
        api.call(api.client.healthz)
        status = api.call(api.client.ca_status)
    except CommandError as exc:
        checks.append(Check("control plane", "fail", str(exc).splitlines()[0]))
    else:
        checks.append(Check("control plane", "ok", f"the control plane answers at {url}"))
        checks.append(_serving_cert_check(url, creds.ca_bundle))
    if status is not None:
        checks.extend(ca_checks(status))
    if api is not None and status is not None:
        checks.extend(analyze_checks(api))
    failures = sum(c.level == "fail" for c in checks)
    warnings = sum(c.level == "warn" for c in checks)
    if args.json:
        doc = {
            "ok": failures == 0,
            "failures": failures,
            "warnings": warnings,
            "checks": [asdict(c) for c in checks],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(format_checks(checks, failures, warnings))
    return 1 if failures else 0


def analyze_checks(api: ClientApi) -> list[Check]:
    """The live configuration through `gossamer analyze`: a line per error and warning."""
    from gossamer.cli.analyze import live_findings, summary

    try:
        findings = live_findings(api)
    except CommandError as exc:
        return [Check("config", "fail", f"cannot analyze: {str(exc).splitlines()[0]}")]
    out: list[Check] = []
    for f in findings:
        if f.severity == "info":
            continue
        where = f" {f.where}" if f.where else ""
        level: Level = "fail" if f.severity == "error" else "warn"
        out.append(Check("config", level, f"{f.code} {f.resource}{where}: {f.message}"))
    if not out:
        out.append(Check("config", "ok", f"the configuration passes analyze: {summary(findings)}"))
    return out


def format_checks(checks: list[Check], failures: int, warnings: int) -> str:
    lines: list[str] = []
    group = None
    for c in checks:
        if c.group != group:
            if group is not None:
                lines.append("")
            group = c.group
            lines.extend([c.group, "-" * len(c.group)])
        lines.append(f"{_MARK[c.level]} {c.message}")
    lines.append("")
    if failures:
        lines.append(f"FAILED: {failures} check(s) failed, {warnings} warning(s)")
    else:
        lines.append(f"ok: nothing failed, {warnings} warning(s)")
    return "\n".join(lines)


def _serving_cert_check(url: str, bundle: Path | None) -> Check:
    """The API's own certificate, verified against the mesh's bundle, and how long it lives."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https":
        return Check("control plane", "warn", f"the API at {url} is not served over HTTPS")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 443
    try:
        ctx = ssl.create_default_context(cafile=str(bundle) if bundle else None)
        with (
            socket.create_connection((host, port), timeout=5) as sock,
            ctx.wrap_socket(sock, server_hostname=host) as tls,
        ):
            cert = tls.getpeercert()
    except (OSError, ssl.SSLError) as exc:
        return Check("control plane", "fail", f"the API's certificate does not verify: {exc}")
    not_after_text = str((cert or {}).get("notAfter", ""))
    try:
        not_after = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after_text), dt.UTC)
    except ValueError:
        return Check("control plane", "warn", "the API's certificate has no readable notAfter")
    # Imported here: they load cryptography, which the CLI keeps out of its start-up.
    from gossamer.security.bundle import describe_remaining
    from gossamer.security.ca import EXPIRY_WARNING

    left = not_after - dt.datetime.now(dt.UTC)
    level: Level = "warn" if left < EXPIRY_WARNING else "ok"
    return Check(
        "control plane",
        level,
        f"the API's certificate verifies with the mesh's bundle; valid until "
        f"{not_after:%Y-%m-%d %H:%M} UTC ({describe_remaining(left)})",
    )


def ca_checks(status: dict[str, Any]) -> list[Check]:
    """The checks on `GET /v1/ca`: CA certificates, rotation, each proxy's SVID and bundle."""
    checks: list[Check] = []
    for c in status.get("certificates", []):
        name = f"{c.get('kind')} CA {c.get('subject')} ({str(c.get('fingerprint'))[:16]})"
        role = ", issues SVIDs" if c.get("signing") else ""
        until = str(c.get("notAfter", ""))[:16].replace("T", " ")
        state = c.get("state")
        if state == "expired":
            checks.append(
                Check("certificates", "fail", f"{name} EXPIRED at {until} UTC{role}: rotate it")
            )
        elif state == "not-yet-valid":
            checks.append(
                Check("certificates", "fail", f"{name} is not valid before {c.get('notBefore')}")
            )
        elif state == "expiring":
            checks.append(
                Check(
                    "certificates",
                    "warn",
                    f"{name} expires in {c.get('expiresIn')} ({until} UTC){role}: "
                    "rotate it soon with gossamer ca rotate",
                )
            )
        else:
            checks.append(
                Check(
                    "certificates",
                    "ok",
                    f"{name} valid for {c.get('expiresIn')} (until {until} UTC){role}",
                )
            )
    rotation = status.get("rotation")
    if rotation is not None and rotation.get("active"):
        from gossamer.cli.ca import describe_phase

        level: Level = "warn" if rotation.get("stalled") else "info"
        checks.append(
            Check(
                "rotation",
                level,
                f"rotation {rotation.get('id')} in progress, {describe_phase(rotation)}",
            )
        )
    else:
        checks.append(Check("rotation", "ok", "no rotation in progress"))
    proxies = status.get("proxies", [])
    if not proxies:
        checks.append(Check("proxies", "info", "no proxy is registered"))
    for p in proxies:
        checks.extend(_proxy_checks(p, rotation))
    return checks


def _proxy_checks(p: dict[str, Any], rotation: dict[str, Any] | None) -> list[Check]:
    pid = str(p.get("proxyId"))
    out: list[Check] = []
    svid = p.get("svid")
    if svid is None:
        out.append(Check("proxies", "info", f"{pid}: reports no SVID (no mTLS yet)"))
    else:
        until = str(svid.get("notAfter", ""))[:16].replace("T", " ")
        who = f"{pid}: SVID {svid.get('spiffeId')}"
        rotating = rotation is not None and rotation.get("active")
        if svid.get("expired"):
            out.append(Check("proxies", "fail", f"{who} EXPIRED at {until} UTC"))
        elif svid.get("renewalOverdue"):
            out.append(
                Check(
                    "proxies",
                    "warn",
                    f"{who} expires in {svid.get('expiresIn')} ({until} UTC): past half-life, "
                    "its renewal is overdue",
                )
            )
        elif not svid.get("signerCurrent") and not rotating:
            out.append(
                Check("proxies", "warn", f"{who} is from a CA that no longer issues: not renewed")
            )
        else:
            out.append(
                Check("proxies", "ok", f"{who} expires in {svid.get('expiresIn')} ({until} UTC)")
            )
    acked = p.get("bundleAcked")
    if acked is False and p.get("healthy"):
        level: Level = "fail" if p.get("configState") == "NACK" else "warn"
        why = "rejected (NACK)" if level == "fail" else "not yet ACKed"
        out.append(Check("proxies", level, f"{pid}: the current trust bundle is {why}"))
    elif acked:
        out.append(Check("proxies", "ok", f"{pid}: runs the current trust bundle"))
    return out
