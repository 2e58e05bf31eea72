"""`gossamer top` against a real control plane merging a (fake) proxy admin tap; the table."""

from __future__ import annotations

import asyncio
import re

import pytest
from test_ca_cli import Served
from test_tap_cli import DEADLINE, FakeAdmin, pricing, record, run_cli, served

from gossamer.cli.top import Top

__all__ = ["pricing", "served"]  # fixtures, shared with test_tap_cli


def test_the_table_ranks_paths_by_count_with_success_and_latency() -> None:
    top = Top()
    for ms in (1.0, 2.0, 3.0, 100.0):
        top.add(record("/a?page=1", 200, ms=ms))
    top.add(record("/a", 503, ms=5.0))
    top.add(record("/b", 200, "POST", ms=7.0))
    text = top.render("pricing", 3.0, 10)
    lines = text.splitlines()
    assert lines[0] == "gossamer top pricing: 6 requests in 3s, 2 paths"
    assert lines[2].split() == ["COUNT", "METHOD", "PATH", "SUCCESS", "P50", "P99"]
    assert lines[3].split() == ["5", "GET", "/a", "80.00%", "3.0ms", "100.0ms"]
    assert lines[4].split() == ["1", "POST", "/b", "100.00%", "7.0ms", "7.0ms"]
    assert len(top.render("pricing", 3.0, 1).splitlines()) == 4  # --rows 1
    assert "(no requests yet)" in Top().render("pricing", 0.0, 10)


async def test_top_prints_snapshots_when_not_a_terminal(
    served: Served, pricing: FakeAdmin, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = run_cli(served, "top", "pricing", "--interval", "100ms", "--max-seconds", "1.5")
    await pricing.tapped()
    assert pricing.targets == ["/tap?direction=inbound"]
    for status in (200, 200, 503):
        pricing.send(record("/a", status, ms=2.0))
    pricing.send(record("/b", 200, "POST", ms=4.0))
    code = await asyncio.wait_for(cli, DEADLINE)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "\x1b[" not in out  # no terminal: no screen clearing
    snapshots = [s for s in re.split(r"(?m)^(?=gossamer top )", out) if s.strip()]
    assert len(snapshots) >= 2  # one per interval, then the final one
    final = snapshots[-1].splitlines()
    assert final[0].startswith("gossamer top pricing: 4 requests in ")
    assert final[3].split() == ["3", "GET", "/a", "66.67%", "2.0ms", "2.0ms"]
    assert final[4].split() == ["1", "POST", "/b", "100.00%", "4.0ms", "4.0ms"]


async def test_top_refuses_a_bad_interval(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        await asyncio.to_thread(run_main_bad_interval)
    assert exit_info.value.code == 2
    assert "--interval" in capsys.readouterr().err


def run_main_bad_interval() -> int:
    from gossamer.cli.main import main

    return main(["top", "pricing", "--interval", "soon", "--control-plane", "http://127.0.0.1:1"])
