"""Fixtures for the runtime's unit tests: a mesh plan from inline YAML run with fake components."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from runtime_fakes import FAKE_GOSSAMER

from gossamer.config.loader import load_text
from gossamer.runtime.detach import processes_of_run
from gossamer.runtime.logs import LogMux
from gossamer.runtime.plan import Plan, build_plan
from gossamer.runtime.state import StateDir
from gossamer.runtime.supervisor import RuntimeOptions, Supervisor


def plan_from(yaml: str, base: Path) -> Plan:
    return build_plan([item.resource for item in load_text(yaml)], base)


class Events:
    """The fakes' event log: lines of "<monotonic> <what> <name> [json]"."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[tuple[str, str, str]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            parts = line.split(" ", 3)
            out.append((parts[1], parts[2], parts[3] if len(parts) > 3 else ""))
        return out

    def index(self, what: str, name: str) -> int:
        for i, (w, n, _) in enumerate(self.lines()):
            if (w, n) == (what, name):
                return i
        raise AssertionError(f"no event {what} {name} in {self.lines()}")

    def data(self, what: str, name: str) -> Any:
        import json

        return json.loads(self.lines()[self.index(what, name)][2])


@pytest.fixture
def events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Events:
    path = tmp_path / "events.log"
    monkeypatch.setenv("FAKE_EVENTS", str(path))
    return Events(path)


@pytest.fixture
def make_supervisor(
    tmp_path: Path, events: Events
) -> Iterator[Callable[..., tuple[Supervisor, io.StringIO, list[Any]]]]:
    made: list[Supervisor] = []

    def make(yaml: str, **opts: Any) -> tuple[Supervisor, io.StringIO, list[Any]]:
        applied: list[Any] = []

        def apply(api: str, resources: list[dict[str, Any]]) -> None:
            with events.path.open("a") as f:
                f.write(f"0 apply {api}\n")
            applied.append((api, resources))

        out = io.StringIO()
        options = RuntimeOptions(
            state=StateDir(tmp_path / "state"),
            file=tmp_path / "mesh.yaml",
            gossamer=FAKE_GOSSAMER,
            start_timeout=opts.pop("start_timeout", 20.0),
            stop_timeout=opts.pop("stop_timeout", 5.0),
        )
        converge = opts.pop("converge", None)
        mint = opts.pop("mint", None)
        for key, value in opts.items():  # e.g. restart_delay
            setattr(options, key, value)
        sup = Supervisor(plan_from(yaml, tmp_path), options, LogMux(out), apply, converge, mint)
        made.append(sup)
        return sup, out, applied

    yield make
    for sup in made:
        sup.stop()
        assert processes_of_run(sup.options.run_id) == [], "processes of the mesh survived"
