"""`gossamer control-plane`: run the control plane process."""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys

from gossamer.cli.main import CommandError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "control-plane",
        help="run the control plane (operator API, registry, snapshot distribution)",
        description="Run the control plane: the operator API, the registry of proxies and the "
        "distribution of one Snapshot per proxy. State lives in DIR/store.sqlite.",
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:0",
        help="host:port of the operator API, over HTTPS (port 0: any free port)",
    )
    parser.add_argument(
        "--internal-listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="host:port of the proxies' plain-HTTP listener (until proxies use mTLS)",
    )
    parser.add_argument("--state-dir", required=True, metavar="DIR", help="where state is kept")
    parser.add_argument(
        "--ready-file",
        metavar="PATH",
        help='written once serving: {"api": "https://127.0.0.1:PORT", "internal": '
        '"http://127.0.0.1:PORT", "caBundle": PATH, "adminTokenFile": PATH, "pid": N}',
    )
    parser.add_argument(
        "--heartbeat-ttl",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="a proxy silent this long is marked unhealthy (default 3)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gossamer.control.server import parse_listen, serve
    from gossamer.security.ca import CaError
    from gossamer.security.csr import KeyFileError

    try:
        parse_listen(args.listen)
    except ValueError as exc:
        raise CommandError(str(exc), code=2) from None
    try:
        parse_listen(args.internal_listen)
    except ValueError as exc:
        raise CommandError(str(exc).replace("--listen", "--internal-listen"), code=2) from None
    if not args.heartbeat_ttl > 0:
        raise CommandError(f"--heartbeat-ttl must be positive, got {args.heartbeat_ttl}", code=2)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import uvloop

    try:
        uvloop.run(
            serve(
                args.listen,
                args.state_dir,
                internal_listen=args.internal_listen,
                ready_file=args.ready_file,
                heartbeat_ttl=args.heartbeat_ttl,
                # uvicorn's own messages stay quiet; ours say what matters.
                log_level="warning",
            )
        )
    except (CaError, KeyFileError) as exc:
        raise CommandError(f"cannot set up the mesh CA in {args.state_dir}: {exc}") from None
    except OSError as exc:
        raise CommandError(f"cannot serve on {args.listen}: {exc.strerror or exc}") from None
    except sqlite3.Error as exc:
        raise CommandError(f"cannot open the state in {args.state_dir}: {exc}") from None
    return 0
