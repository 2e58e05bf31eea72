"""LogMux: docker-compose style prefixes, colour only on a terminal, tails for crash reports."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path

from gossamer.runtime.logs import LogMux


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_prefixes_are_padded_to_the_longest_name() -> None:
    out = io.StringIO()
    mux = LogMux(out)
    mux.add_names(["control-plane", "pricing-v2-0", "pricing-v2-0.proxy"])
    mux.line("pricing-v2-0", "GET /price/1 200")
    mux.line("pricing-v2-0.proxy", "snapshot applied")
    mux.say("stopping")
    assert out.getvalue().splitlines() == [
        "pricing-v2-0       | GET /price/1 200",
        "pricing-v2-0.proxy | snapshot applied",
        "gossamer           | stopping",
    ]


def test_colour_only_on_a_terminal() -> None:
    plain, tty = io.StringIO(), Tty()
    for out in (plain, tty):
        mux = LogMux(out)
        mux.add_names(["a", "b"])
        mux.line("a", "x")
        mux.line("b", "y")
    assert "\x1b[" not in plain.getvalue()
    lines = tty.getvalue().splitlines()
    assert lines[0].startswith("\x1b[36m")
    assert lines[0].endswith("\x1b[0m x")
    assert lines[1].startswith("\x1b[33m")  # each name its own colour


def test_tail_keeps_the_last_lines() -> None:
    mux = LogMux(io.StringIO(), tail_lines=3)
    for i in range(10):
        mux.line("app", f"line {i}")
    assert mux.tail("app") == ["line 7", "line 8", "line 9"]
    assert mux.tail("other") == []


def test_pump_copies_a_stream_to_the_mux_and_the_log_file(tmp_path: Path) -> None:
    out = io.StringIO()
    mux = LogMux(out)
    read_fd, write_fd = os.pipe()
    done = threading.Event()
    log = tmp_path / "app.log"
    thread = mux.pump("app", os.fdopen(read_fd, "rb"), log, on_eof=done.set)
    with os.fdopen(write_fd, "wb") as w:
        w.write(b"first\nsecond \xff\nno newline at the end")
    assert done.wait(5)
    thread.join(5)
    assert [line.split(" | ", 1)[1] for line in out.getvalue().splitlines()] == [
        "first",
        "second \ufffd",
        "no newline at the end",
    ]
    assert log.read_bytes() == b"first\nsecond \xff\nno newline at the end\n"
