"""`gossamer token create/list/revoke`: manage the operator API's tokens (admin only)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from gossamer.cli.main import CommandError
from gossamer.cli.resources import ClientApi, add_control_plane_args, control_plane_target

ROLES = ("admin", "editor", "viewer")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "token",
        help="create, list and revoke operator API tokens",
        description="Operator tokens for the control plane's API. Each carries a role: viewer "
        "(read), editor (also apply and delete resources), admin (also manage tokens). These "
        "commands need an admin token (the first one is in the state dir: control-plane/"
        "admin.token).",
    )
    sub = p.add_subparsers(dest="token_command", metavar="ACTION", required=True)

    c = sub.add_parser("create", help="make a token; its secret is printed once")
    c.add_argument("--role", required=True, choices=ROLES, help="what the token may do")
    c.add_argument("--description", default="", help="a note on who or what uses it")
    c.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_control_plane_args(c)
    c.set_defaults(func=cmd_create)

    ls = sub.add_parser("list", help="the tokens: id, role, description, created (no secrets)")
    ls.add_argument("-o", "--output", choices=("table", "json"), default="table")
    add_control_plane_args(ls)
    ls.set_defaults(func=cmd_list)

    r = sub.add_parser("revoke", help="revoke a token by id; it is refused from then on")
    r.add_argument("token_id", metavar="ID")
    add_control_plane_args(r)
    r.set_defaults(func=cmd_revoke)


def _api(args: argparse.Namespace) -> ClientApi:
    url, creds = control_plane_target(args)
    return ClientApi(url, creds)


def cmd_create(args: argparse.Namespace) -> int:
    api = _api(args)
    out: dict[str, Any] = api.call(lambda: api.client.create_token(args.role, args.description))
    if args.output == "json":
        print(json.dumps(out, indent=2))
        return 0
    print(f"created {out['role']} token {out['id']}")
    print(out["token"])
    print("(shown once: keep it secret; use it with GOSSAMER_TOKEN=...)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    api = _api(args)
    items: list[dict[str, Any]] = api.call(api.client.list_tokens)
    if args.output == "json":
        print(json.dumps({"items": items}, indent=2))
        return 0
    rows = [("ID", "ROLE", "CREATED", "DESCRIPTION")]
    for t in items:
        created = t.get("created")
        when = (
            dt.datetime.fromtimestamp(float(created), dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            if isinstance(created, int | float)
            else "-"
        )
        rows.append((str(t.get("id")), str(t.get("role")), when, str(t.get("description") or "")))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)), row[3])
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    api = _api(args)
    if not args.token_id.strip():
        raise CommandError("give the id of the token to revoke (see gossamer token list)", code=2)
    api.call(lambda: api.client.revoke_token(args.token_id))
    print(f"revoked token {args.token_id}")
    return 0
