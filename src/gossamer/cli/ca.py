"""`gossamer ca status/rotate/import`: the mesh CA's certificates and root rotation."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gossamer.cli.main import CommandError
from gossamer.cli.resources import ClientApi, add_control_plane_args, control_plane_target

DEFAULT_TIMEOUT = "10m"
POLL_EVERY = 0.2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "ca",
        help="the mesh CA: its certificates, root rotation, bringing your own CA",
        description="The mesh's certificate authority. `status` shows the CA certificates, the "
        "rotation under way and each proxy's SVID; `rotate` replaces the root without an outage; "
        "`import` rotates to your own root or intermediate. rotate and import need an admin token.",
    )
    sub = p.add_subparsers(dest="ca_command", metavar="ACTION", required=True)

    s = sub.add_parser("status", help="the CA certificates, the rotation, each proxy's SVID")
    s.add_argument("--json", action="store_true", help="print GET /v1/ca as JSON")
    add_control_plane_args(s)
    s.set_defaults(func=cmd_status)

    r = sub.add_parser("rotate", help="rotate to a new root, without an outage")
    _add_wait_args(r)
    add_control_plane_args(r)
    r.set_defaults(func=cmd_rotate)

    i = sub.add_parser("import", help="rotate to your own CA (a root, or an intermediate)")
    i.add_argument("--cert", required=True, metavar="FILE", help="the CA certificate (PEM)")
    i.add_argument("--key", required=True, metavar="FILE", help="its private key (PEM)")
    i.add_argument(
        "--chain",
        metavar="FILE",
        help="for an intermediate: its issuers up to the root (PEM, nearest first)",
    )
    _add_wait_args(i)
    add_control_plane_args(i)
    i.set_defaults(func=cmd_import)


def _add_wait_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="follow the rotation, printing its phases, until it is done (--no-wait: return "
        "once it started)",
    )
    p.add_argument(
        "--timeout",
        default=DEFAULT_TIMEOUT,
        metavar="DURATION",
        help="how long --wait waits (such as 90s, 10m); the rotation goes on after it",
    )


def _timeout(text: str) -> float:
    from gossamer.config.models import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise CommandError(f"--timeout: {exc}", code=2) from None
    if seconds <= 0:
        raise CommandError("--timeout must be more than 0s", code=2)
    return seconds


# --- status ---------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    url, creds = control_plane_target(args)
    api = ClientApi(url, creds)
    status: dict[str, Any] = api.call(api.client.ca_status)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(format_status(status))
    return 0


def format_status(status: dict[str, Any]) -> str:
    from gossamer.cli.resources import render_table

    lines = [f"trust domain: {status.get('trustDomain')}"]
    rows = []
    for c in status.get("certificates", []):
        flags = []
        if c.get("signing"):
            flags.append("issues SVIDs")
        if c.get("state") != "ok":
            flags.append(str(c.get("state")).upper())
        rows.append(
            [
                str(c.get("fingerprint", ""))[:16],
                str(c.get("kind")),
                str(c.get("subject")),
                str(c.get("notAfter", ""))[:19].replace("T", " "),
                str(c.get("expiresIn")),
                ", ".join(flags),
            ]
        )
    lines.append("")
    lines.append(
        render_table(
            ["FINGERPRINT", "KIND", "SUBJECT", "NOT AFTER", "LEFT", "NOTES"], rows
        ).rstrip()
    )
    lines.append("")
    lines.append(describe_rotation(status.get("rotation")))
    proxies = status.get("proxies", [])
    if proxies:
        prows = []
        for p in proxies:
            svid = p.get("svid")
            bundle = {True: "yes", False: "no", None: "-"}.get(p.get("bundleAcked"), "?")
            if svid is None:
                prows.append([str(p.get("proxyId")), "-", "-", "-", bundle])
                continue
            notes = []
            if svid.get("expired"):
                notes.append("EXPIRED")
            elif svid.get("renewalOverdue"):
                notes.append("renewal overdue")
            if not svid.get("signerCurrent"):
                notes.append("old signer")
            left = str(svid.get("expiresIn")) + (f" ({', '.join(notes)})" if notes else "")
            prows.append(
                [
                    str(p.get("proxyId")),
                    str(svid.get("spiffeId")),
                    left,
                    str(svid.get("signer", ""))[:16],
                    bundle,
                ]
            )
        lines.append("")
        headers = ["PROXY", "SVID", "EXPIRES IN", "SIGNER", "CURRENT BUNDLE"]
        lines.append(render_table(headers, prows).rstrip())
    for warning in status.get("warnings", []):
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def describe_rotation(rotation: dict[str, Any] | None) -> str:
    if rotation is None:
        return "rotation: none so far"
    rid, phase = rotation.get("id"), rotation.get("phase")
    if not rotation.get("active"):
        return f"rotation: last one {rid} is {phase} (CA {str(rotation.get('new'))[:16]} issues)"
    return f"rotation: {rid} in progress, {describe_phase(rotation)}"


def describe_phase(rotation: dict[str, Any]) -> str:
    phase = rotation.get("phase")
    pending = [str(p) for p in rotation.get("pending", [])]
    shown = ", ".join(pending[:8]) + (f" and {len(pending) - 8} more" if len(pending) > 8 else "")
    if phase == "distributing":
        what = "distributing the new root: waiting for every proxy to ACK the new bundle"
    elif phase == "reissuing":
        what = "the new CA issues: waiting for every proxy to renew its SVID from it"
    else:
        what = str(phase)
    if pending:
        what += f" ({len(pending)} pending: {shown})"
    if rotation.get("stalled") and rotation.get("message"):
        what += f"\n  {rotation['message']}"
    return what


# --- rotate and import ----------------------------------------------------------------------------


def cmd_rotate(args: argparse.Namespace) -> int:
    return _rotate(args, {})


def cmd_import(args: argparse.Namespace) -> int:
    body = {"cert": _read_pem(args.cert, "--cert"), "key": _read_pem(args.key, "--key")}
    if args.chain:
        body["chain"] = _read_pem(args.chain, "--chain")
    return _rotate(args, body)


def _read_pem(path: str, flag: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CommandError(f"{flag} {path}: {exc.strerror}", code=2) from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise CommandError(f"{flag} {path}: not a PEM file (it is not text)", code=2) from None
    if "-----BEGIN " not in text:
        raise CommandError(f"{flag} {path}: not a PEM file (no -----BEGIN line)", code=2)
    return text


def _rotate(args: argparse.Namespace, body: dict[str, str]) -> int:
    timeout = _timeout(args.timeout)
    url, creds = control_plane_target(args)
    api = ClientApi(url, creds)
    started: dict[str, Any] = api.call(lambda: api.client.rotate_ca(body))
    rotation = started.get("rotation") or {}
    for warning in started.get("warnings", []):
        print(f"warning: {warning}")
    what = "your CA" if body else "a new root"
    print(f"rotation {rotation.get('id')} started: {what} {str(rotation.get('new'))[:16]}")
    if not args.wait:
        print("follow it with: gossamer ca status")
        return 0
    with _following_bundle(creds.ca_bundle, str(started.get("bundle") or "")) as trust:
        return _follow(url, creds.token, trust, str(rotation.get("id")), timeout)


@contextmanager
def _following_bundle(original: Path | None, bundle: str) -> Iterator[Callable[[str], Path]]:
    """A bundle file that trusts the original roots and every root the rotation adds.

    The API's certificate moves to the new root in the middle of the rotation; the state dir's
    bundle file follows, but one given with $GOSSAMER_CA_BUNDLE does not, so the new roots (read
    over the connection the old root verified) are added to a private copy.
    """
    with tempfile.TemporaryDirectory(prefix="gossamer-ca-") as tmp:
        path = Path(tmp) / "bundle.pem"
        base = original.read_text() if original is not None and original.is_file() else ""
        known: list[str] = [base] if base else []

        def update(pem: str) -> Path:
            if pem and pem not in known:
                known.append(pem)
            path.write_text("".join(known))
            return path

        update(bundle)
        yield update


def _follow(
    url: str, token: str | None, trust: Callable[[str], Path], rotation_id: str, timeout: float
) -> int:
    from gossamer.control.client import Credentials

    deadline = time.monotonic() + timeout
    bundle_file = trust("")
    shown: tuple[Any, ...] = ()
    while True:
        api = ClientApi(url, Credentials(token, bundle_file))
        status: dict[str, Any] = api.call(api.client.ca_status)
        bundle_file = trust(str(status.get("bundle") or ""))
        rotation = status.get("rotation") or {}
        if rotation.get("id") != rotation_id:
            raise CommandError(f"rotation {rotation_id} is no longer the mesh's latest rotation")
        if not rotation.get("active"):
            print(
                f"rotation {rotation_id} done: CA {str(rotation.get('new'))[:16]} issues, "
                f"CA {str(rotation.get('old'))[:16]} retired from the trust bundle"
            )
            return 0
        now_shown = (
            rotation.get("phase"),
            len(rotation.get("pending", [])),
            rotation.get("stalled"),
        )
        # Nothing pending in a phase already shown: it moves on at the CA's next step.
        moving_on = bool(shown) and now_shown[0] == shown[0] and not now_shown[1]
        if now_shown != shown and not moving_on:
            shown = now_shown
            print(f"phase {describe_phase(rotation)}", flush=True)
        if time.monotonic() >= deadline:
            raise CommandError(
                f"rotation {rotation_id} not done after --timeout {timeout:g}s; it goes on in "
                f"the control plane: {describe_phase(rotation)}"
            )
        time.sleep(POLL_EVERY)
