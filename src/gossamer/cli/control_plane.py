"""`gossamer control-plane`: run the control plane process."""

from __future__ import annotations

import argparse
import datetime as dt
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
        help="host:port of the one HTTPS listener, for operators (bearer tokens) and proxies "
        "(their SVIDs, mTLS) (port 0: any free port)",
    )
    parser.add_argument("--state-dir", required=True, metavar="DIR", help="where state is kept")
    parser.add_argument(
        "--ready-file",
        metavar="PATH",
        help='written once serving: {"api": "https://127.0.0.1:PORT", "caBundle": PATH, '
        '"adminTokenFile": PATH, "trustDomain": TD, "pid": N}',
    )
    parser.add_argument(
        "--svid-ttl",
        default="24h",
        metavar="DURATION",
        help="lifetime of the SVIDs issued to proxies, such as 24h, 90m or 30s (default 24h)",
    )
    parser.add_argument(
        "--trust-domain",
        default="gossamer.local",
        metavar="TD",
        help="trust domain of the mesh root CA made at first start (later starts keep the "
        "existing root's; default gossamer.local)",
    )
    parser.add_argument(
        "--heartbeat-ttl",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="a proxy silent this long is marked unhealthy (default 3)",
    )
    parser.add_argument(
        "--registration-expiry",
        type=float,
        metavar="SECONDS",
        help="a proxy silent this long is removed from the registry "
        "(default: 20 heartbeat TTLs, at least 60)",
    )
    parser.add_argument(
        "--telemetry-interval",
        default="5s",
        metavar="DURATION",
        help="how often every proxy's /metrics is scraped into the rolling window behind "
        "`gossamer stat` (default 5s)",
    )
    parser.add_argument(
        "--telemetry-retention",
        default="10m",
        metavar="DURATION",
        help="how much of it the rolling window keeps (default 10m)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.set_defaults(func=run)


def parse_svid_ttl(text: str) -> dt.timedelta:
    from gossamer.config.models import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise CommandError(f"--svid-ttl: {exc}", code=2) from None
    if seconds < 1:
        raise CommandError(f"--svid-ttl must be at least 1s, got {text!r}", code=2)
    return dt.timedelta(seconds=seconds)


def parse_positive_duration(flag: str, text: str) -> float:
    from gossamer.config.models import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise CommandError(f"{flag}: {exc}", code=2) from None
    if not seconds > 0:
        raise CommandError(f"{flag} must be longer than 0s, got {text!r}", code=2)
    return seconds


def run(args: argparse.Namespace) -> int:
    from gossamer.control.server import parse_listen, serve
    from gossamer.security.ca import CaError
    from gossamer.security.csr import KeyFileError
    from gossamer.security.spiffe import SpiffeIdError, validate_trust_domain

    try:
        parse_listen(args.listen)
    except ValueError as exc:
        raise CommandError(str(exc), code=2) from None
    svid_ttl = parse_svid_ttl(args.svid_ttl)
    try:
        validate_trust_domain(args.trust_domain)
    except SpiffeIdError as exc:
        raise CommandError(f"--trust-domain: {exc}", code=2) from None
    if not args.heartbeat_ttl > 0:
        raise CommandError(f"--heartbeat-ttl must be positive, got {args.heartbeat_ttl}", code=2)
    expiry = args.registration_expiry
    if expiry is not None and not expiry > args.heartbeat_ttl:
        raise CommandError(
            f"--registration-expiry must be longer than --heartbeat-ttl ({args.heartbeat_ttl:g}), "
            f"got {expiry:g}",
            code=2,
        )
    interval = parse_positive_duration("--telemetry-interval", args.telemetry_interval)
    retention = parse_positive_duration("--telemetry-retention", args.telemetry_retention)
    if retention < 2 * interval:
        raise CommandError(
            f"--telemetry-retention ({args.telemetry_retention}) must hold at least two scrapes "
            f"of --telemetry-interval ({args.telemetry_interval})",
            code=2,
        )
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
                trust_domain=args.trust_domain,
                svid_ttl=svid_ttl,
                ready_file=args.ready_file,
                heartbeat_ttl=args.heartbeat_ttl,
                registration_expiry=expiry,
                telemetry_interval=interval,
                telemetry_retention=retention,
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
