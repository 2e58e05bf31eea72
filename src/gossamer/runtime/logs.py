"""Prefixed, coloured log lines from many processes on one stream, like `docker compose up`."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TextIO

# ANSI colours for prefixes, in the order docker compose cycles through them.
_COLOURS = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")
_RESET = "\x1b[0m"
SYSTEM = "gossamer"


class LogMux:
    """Writes `name | line` for every line of every child, padding names to one width.

    Colour is used only when the output is a terminal, so that logs piped to a file or a test stay
    plain. The last `tail_lines` lines of each child are kept to explain a crash.
    """

    def __init__(self, out: TextIO, *, colour: bool | None = None, tail_lines: int = 20) -> None:
        self._out = out
        self._colour = _isatty(out) if colour is None else colour
        self._lock = threading.Lock()
        self._width = len(SYSTEM)
        self._colours: dict[str, str] = {}
        self._tails: dict[str, deque[str]] = {}
        self._tail_lines = tail_lines

    def add_names(self, names: Iterable[str]) -> None:
        with self._lock:
            for name in names:
                self._width = max(self._width, len(name))
                if name not in self._colours:
                    self._colours[name] = _COLOURS[len(self._colours) % len(_COLOURS)]

    def prefix(self, name: str) -> str:
        label = f"{name:<{self._width}} |"
        if not self._colour:
            return label
        colour = "1" if name == SYSTEM else self._colours.get(name, _COLOURS[0])
        return f"\x1b[{colour}m{label}{_RESET}"

    def line(self, name: str, text: str) -> None:
        with self._lock:
            if name != SYSTEM:
                tail = self._tails.setdefault(name, deque(maxlen=self._tail_lines))
                tail.append(text)
            try:
                self._out.write(f"{self.prefix(name)} {text}\n")
                self._out.flush()
            except (OSError, ValueError):
                pass  # the terminal went away; the per-process log files still have everything

    def say(self, text: str) -> None:
        """A line from the runtime itself."""
        for part in text.splitlines() or [""]:
            self.line(SYSTEM, part)

    def tail(self, name: str) -> list[str]:
        with self._lock:
            return list(self._tails.get(name, ()))

    def pump(
        self,
        name: str,
        stream: IO[bytes],
        log_path: Path | None,
        on_eof: Callable[[], None] | None = None,
    ) -> threading.Thread:
        """Copy `stream` line by line to the mux and to `log_path`, in a daemon thread."""

        def run() -> None:
            log = log_path.open("ab", buffering=0) if log_path is not None else None
            try:
                for raw in iter(stream.readline, b""):
                    if log is not None:
                        log.write(raw if raw.endswith(b"\n") else raw + b"\n")
                    self.line(name, raw.decode("utf-8", "replace").rstrip("\r\n"))
            finally:
                if log is not None:
                    log.close()
                stream.close()
                if on_eof is not None:
                    on_eof()

        thread = threading.Thread(target=run, name=f"log-{name}", daemon=True)
        thread.start()
        return thread


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False
