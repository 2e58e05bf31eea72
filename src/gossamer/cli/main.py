"""The `gossamer` command: one argparse parser, one module per command group.

Each command module exposes `register(subparsers)`, which adds its sub-commands and sets
`func(args) -> int` on them. Modules are imported lazily by name so that `gossamer proxy` does not
pay for FastAPI or pydantic at start-up.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from gossamer import __version__

# (module under gossamer.cli, the commands it registers). Order is the order of `gossamer --help`.
COMMAND_MODULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("up", ("up", "down", "status")),
    ("resources", ("apply", "get", "delete", "proxy-config", "proxy-status")),
    ("tokens", ("token",)),
    ("ca", ("ca",)),
    ("check", ("check",)),
    ("analyze", ("analyze",)),
    ("stat", ("stat",)),
    ("top", ("top",)),
    ("tap", ("tap",)),
    ("dashboard", ("dashboard",)),
    ("validate", ("validate",)),
    ("control_plane", ("control-plane",)),
    ("proxy", ("proxy",)),
)


class CommandError(Exception):
    """A failure to report to the user as one clear line, with exit status `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _module_for(command: str | None) -> list[str]:
    if command is None:
        return [m for m, _ in COMMAND_MODULES]
    return [m for m, cmds in COMMAND_MODULES if command in cmds]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gossamer",
        description="Gossamer: a service mesh you can read.",
    )
    parser.add_argument("--version", action="version", version=f"gossamer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = _module_for(only) or [m for m, _ in COMMAND_MODULES]
    for name in modules:
        try:
            module = importlib.import_module(f"gossamer.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"gossamer.cli.{name}":
                continue  # command group not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in args_list if not a.startswith("-")), None)
    parser = build_parser(first)
    args = parser.parse_args(args_list)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        code = func(args)
        sys.stdout.flush()  # inside the try: a reader that left shows up here, not at exit
    except CommandError as exc:
        print(f"gossamer {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `gossamer status | head`: the reader left. Point stdout at /dev/null so that the
        # interpreter's final flush does not fail again, and exit like other Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return int(code or 0)


if __name__ == "__main__":
    # Under `python -m gossamer.cli.main` this file runs as __main__ while commands import
    # gossamer.cli.main: run that module's main so there is one CommandError class, not two.
    from gossamer.cli.main import main as _main

    sys.exit(_main())
