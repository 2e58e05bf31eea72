"""`gossamer dashboard`: print (or open) the web dashboard's URL with the operator token."""

from __future__ import annotations

import argparse
import webbrowser
from urllib.parse import quote

from gossamer.cli.main import CommandError
from gossamer.cli.resources import add_control_plane_args, control_plane_target

DASHBOARD_PATH = "/dashboard/"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "dashboard",
        help="the web dashboard's URL (topology, golden signals, proxies), with the token",
        description="Print the URL of the control plane's web dashboard with the operator token "
        "in its fragment (#token=..., which the browser never sends to a server); the page keeps "
        "it for the tab and drops it from the address bar. The token is $GOSSAMER_TOKEN, else "
        "the admin token of the mesh `gossamer up` started. Treat the URL as the token.",
    )
    p.add_argument("--open", action="store_true", help="also open it in the default browser")
    p.add_argument(
        "--no-token", action="store_true", help="print the URL without the token (the page asks)"
    )
    add_control_plane_args(p)
    p.set_defaults(func=cmd_dashboard)


def dashboard_url(control_plane: str, token: str | None) -> str:
    url = control_plane.rstrip("/") + DASHBOARD_PATH
    return f"{url}#token={quote(token, safe='')}" if token else url


def cmd_dashboard(args: argparse.Namespace) -> int:
    url, creds = control_plane_target(args)
    if creds.token is None and not args.no_token:
        raise CommandError(
            "no operator token: set $GOSSAMER_TOKEN (gossamer token create --role viewer), or "
            "pass --no-token and paste one into the page"
        )
    link = dashboard_url(url, None if args.no_token else creds.token)
    print(link)
    if creds.ca_bundle is not None:
        print(
            f"# the control plane's certificate is signed by the mesh CA ({creds.ca_bundle}): "
            "trust it in the browser, or accept the warning for this local mesh"
        )
    if args.open and not webbrowser.open(link):
        raise CommandError("no browser to open here; open the URL above by hand")
    return 0
