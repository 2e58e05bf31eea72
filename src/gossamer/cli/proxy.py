"""`gossamer proxy`: run a sidecar (flags in docs/internals.md); imports nothing heavy."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gossamer.security.spiffe import BOOTSTRAP_TOKEN_ENV as BOOTSTRAP_TOKEN_ENV


def _address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not host:port (e.g. 127.0.0.1:0)")
    return text


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not k=v")
    return key, value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def _sample_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 and at most 1")
    return value


def _readiness_path(text: str) -> str:
    if not text.startswith("/") or any(c in text for c in " \r\n"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a path starting with /")
    return text


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "proxy",
        help="run a sidecar proxy",
        description="Run a Gossamer sidecar proxy beside one workload instance.",
    )
    p.add_argument("--service", required=True, help="the service this workload belongs to")
    p.add_argument("--proxy-id", required=True, help="unique id of this sidecar")
    p.add_argument("--app-port", type=_port, help="the local app's port (omit for a front door)")
    p.add_argument("--namespace", default="default")
    p.add_argument("--subset", help="the subset (version) of this replica")
    p.add_argument(
        "--label", action="append", type=_label, default=[], metavar="K=V", help="repeatable"
    )
    p.add_argument("--zone", help="locality of this replica")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--control-plane",
        metavar="URL",
        help="e.g. https://127.0.0.1:7000 (mTLS with the proxy's SVID; needs --ca-bundle)",
    )
    source.add_argument(
        "--snapshot", type=Path, metavar="FILE", help="run a static Snapshot JSON, no control plane"
    )
    p.add_argument(
        "--ca-bundle",
        type=Path,
        metavar="FILE",
        help="the mesh's root certificates (PEM), trusted for the first contact with the control "
        "plane; the bootstrap token comes from $GOSSAMER_BOOTSTRAP_TOKEN",
    )
    p.add_argument(
        "--service-account",
        help="the service account of this workload's identity (default: the service)",
    )
    p.add_argument(
        "--svid-cert",
        type=Path,
        metavar="FILE",
        help="with --snapshot: this SVID (PEM, leaf first) for mTLS, managed outside Gossamer",
    )
    p.add_argument(
        "--svid-key", type=Path, metavar="FILE", help="with --svid-cert: its private key (0600)"
    )
    p.add_argument("--inbound", type=_address, default="127.0.0.1:0")
    p.add_argument("--outbound", type=_address, default="127.0.0.1:0")
    p.add_argument("--admin", type=_address, default="127.0.0.1:0")
    p.add_argument(
        "--readiness-path", type=_readiness_path, help="app path probed with GET every second"
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="keeps last-snapshot.json (static stability) and the SVID (svid.pem, svid-key.pem "
        "0600); default: a private temp dir removed at exit",
    )
    p.add_argument("--ready-file", type=Path, help="JSON with the bound addresses, once bound")
    p.add_argument("--max-header-bytes", type=_positive_int, default=65536)
    p.add_argument("--header-timeout", type=_seconds, default=10.0)
    p.add_argument("--default-host", metavar="SERVICE", help="route unmatched hosts to SERVICE")
    p.add_argument(
        "--drain-timeout", type=_seconds, default=5.0, help="seconds to finish in-flight requests"
    )
    p.add_argument(
        "--access-log",
        metavar="PATH|-",
        help="write a JSON line per request to PATH (appended), or to stdout with '-' "
        "(docs/access-log.md); off when absent",
    )
    p.add_argument(
        "--access-log-sample",
        type=_sample_rate,
        default=1.0,
        metavar="RATE",
        help="log this share of requests (0 < RATE <= 1); local responses and 5xx always",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from gossamer.proxy.agent import parse_base_url
    from gossamer.proxy.main import ProxyOptions, run

    if args.control_plane is not None:
        try:
            # The control plane serves only HTTPS; proxies reach it with mTLS.
            parse_base_url(args.control_plane, plaintext=False)
        except ValueError as exc:
            # Printed here rather than raised as CommandError: under `python -m gossamer.cli.main`
            # that class exists twice (__main__ and gossamer.cli.main) and would not be caught.
            print(f"gossamer proxy: --control-plane: {exc}", file=sys.stderr)
            return 2
        if args.ca_bundle is None:
            print(
                "gossamer proxy: --control-plane needs --ca-bundle FILE (the mesh's "
                "ca-bundle.pem, in the control plane's state dir)",
                file=sys.stderr,
            )
            return 2
    if (args.svid_cert is None) != (args.svid_key is None):
        print("gossamer proxy: --svid-cert and --svid-key go together", file=sys.stderr)
        return 2
    if args.svid_cert is not None and args.control_plane is not None:
        print(
            "gossamer proxy: --svid-cert is for --snapshot: with a control plane the proxy gets "
            "its SVID from the mesh CA",
            file=sys.stderr,
        )
        return 2
    options = ProxyOptions(
        service=args.service,
        proxy_id=args.proxy_id,
        app_port=args.app_port,
        namespace=args.namespace,
        subset=args.subset,
        labels=dict(args.label),
        zone=args.zone,
        control_plane=args.control_plane,
        snapshot_file=args.snapshot,
        inbound=args.inbound,
        outbound=args.outbound,
        admin=args.admin,
        readiness_path=args.readiness_path,
        state_dir=args.state_dir,
        ready_file=args.ready_file,
        max_header_bytes=args.max_header_bytes,
        header_timeout=args.header_timeout,
        default_host=args.default_host,
        drain_timeout=args.drain_timeout,
        ca_bundle=args.ca_bundle,
        service_account=args.service_account,
        svid_cert=args.svid_cert,
        svid_key=args.svid_key,
        access_log=args.access_log,
        access_log_sample=args.access_log_sample,
        # Never a flag (flags show in `ps`); the variable is not passed on to anything.
        bootstrap_token=os.environ.pop(BOOTSTRAP_TOKEN_ENV, None) or None,
    )
    return run(options)
