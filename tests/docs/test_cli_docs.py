"""docs/cli.md against the real parser: every command and flag, their defaults, and the examples."""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gossamer.cli.main import build_parser
from gossamer.cli.resources import ENV_CONTROL_PLANE
from gossamer.runtime.plan import ReplicaPlan
from gossamer.runtime.state import ENV_STATE_DIR
from gossamer.runtime.supervisor import base_env, workload_env

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
# "## `gossamer`" documents the top-level parser, "## `gossamer up`" one command.
HEADING = re.compile(r"^## `gossamer(?: ([a-z][a-z-]*))?`\s*$")
FLAG_TABLE_HEADER = re.compile(r"^\|\s*Flag\s*\|\s*Default\s*\|\s*Description\s*\|\s*$")
TICKED = re.compile(r"`([^`]+)`")
# Defaults that mean "nothing": the docs say "none", "off" or where the value comes from instead.
_EMPTY_DEFAULTS: tuple[object, ...] = (None, False, argparse.SUPPRESS)


@dataclass
class Row:
    """One row of a Flag | Default | Description table."""

    names: tuple[str, ...]
    default: str
    description: str
    line: int


@dataclass
class Section:
    """What docs/cli.md says about one command (None: the top-level `gossamer`)."""

    command: str | None
    line: int
    rows: list[Row] = field(default_factory=list)
    code_blocks: list[list[tuple[int, str]]] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"gossamer {self.command}" if self.command else "gossamer"


def parse_doc(text: str) -> tuple[dict[str | None, Section], list[Section]]:
    """The command sections by command, and every section (commands or not) in order.

    Code blocks of sections that are not about a command are kept too (in the list), so that their
    example command lines are checked as well.
    """
    sections: dict[str | None, Section] = {}
    ordered: list[Section] = [Section(command="", line=0)]  # text before the first heading
    in_code = False
    in_table = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("```"):
            in_code = not in_code
            if in_code:
                ordered[-1].code_blocks.append([])
            continue
        if in_code:
            ordered[-1].code_blocks[-1].append((number, line))
            continue
        if line.startswith("## "):
            in_table = False
            match = HEADING.match(line)
            if match:
                command = match.group(1)
                assert command not in sections, f"docs/cli.md:{number}: {line!r} twice"
                section = Section(command=command, line=number)
                sections[command] = section
            else:
                section = Section(command="", line=number)
            ordered.append(section)
            continue
        if FLAG_TABLE_HEADER.match(line):
            in_table = True
            continue
        if in_table:
            if not line.startswith("|"):
                in_table = False
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if set(cells[0]) <= set("-: "):
                continue  # the |---|---| line
            assert len(cells) == 3, f"docs/cli.md:{number}: a flag row needs 3 cells: {line!r}"
            names = tuple(TICKED.findall(cells[0]))
            assert names, f"docs/cli.md:{number}: no `flag` in the first cell: {line!r}"
            ordered[-1].rows.append(Row(names, cells[1], cells[2], number))
    assert not in_code, "docs/cli.md: a code block is not closed"
    return sections, ordered


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def documentable(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The actions a user can pass: not -h/--help, not hidden, not the sub-command chooser."""
    return [
        a
        for a in parser._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        and a.help != argparse.SUPPRESS
    ]


def doc_names(action: argparse.Action) -> tuple[str, ...]:
    """How the docs name an action: its option strings, or a positional's metavar in capitals."""
    if action.option_strings:
        return tuple(action.option_strings)
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    return (metavar,)


def required_in_group(parser: argparse.ArgumentParser, action: argparse.Action) -> bool:
    return any(g.required and action in g._group_actions for g in parser._mutually_exclusive_groups)


def format_default(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@pytest.fixture(scope="module")
def doc() -> tuple[dict[str | None, Section], list[Section]]:
    return parse_doc(DOC.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


def test_every_command_is_documented_and_every_documented_command_exists(
    doc: tuple[dict[str | None, Section], list[Section]], parser: argparse.ArgumentParser
) -> None:
    """The set of `## gossamer COMMAND` headings is the set of the parser's commands."""
    sections, _ = doc
    real = set(subcommands(parser))
    documented = {c for c in sections if c is not None}
    assert real, "build_parser() registered no command"
    assert not documented - real, f"documented but not commands: {sorted(documented - real)}"
    assert not real - documented, f"commands without a section: {sorted(real - documented)}"
    assert None in sections, "no '## `gossamer`' section for the top-level flags"


def test_every_documented_flag_is_accepted_and_every_flag_is_documented(
    doc: tuple[dict[str | None, Section], list[Section]], parser: argparse.ArgumentParser
) -> None:
    """Each flag row names exactly one action (all its spellings), and each action has a row."""
    sections, _ = doc
    commands = subcommands(parser)
    problems: list[str] = []
    for command, section in sections.items():
        sub = parser if command is None else commands.get(command)
        if sub is None:
            continue  # reported by the test above
        actions = {doc_names(a): a for a in documentable(sub)}
        seen: set[tuple[str, ...]] = set()
        for row in section.rows:
            key = tuple(sorted(row.names))
            match = [names for names in actions if tuple(sorted(names)) == key]
            if not match:
                known = ", ".join("/".join(n) for n in actions)
                problems.append(
                    f"docs/cli.md:{row.line}: {section.title} has no argument"
                    f" {' / '.join(row.names)} (it has: {known})"
                )
                continue
            if match[0] in seen:
                problems.append(f"docs/cli.md:{row.line}: {' / '.join(row.names)} documented twice")
            seen.add(match[0])
        for names in actions:
            if names not in seen:
                problems.append(
                    f"docs/cli.md:{section.line}: {section.title}: {' / '.join(names)} is not"
                    " documented in its Flag | Default | Description table"
                )
    assert not problems, "\n".join(problems)


def test_documented_defaults_and_choices_match_the_parser(
    doc: tuple[dict[str | None, Section], list[Section]], parser: argparse.ArgumentParser
) -> None:
    """A default shows as `value`, a required argument as (required), a switch as off."""
    sections, _ = doc
    commands = subcommands(parser)
    problems: list[str] = []
    for command, section in sections.items():
        sub = parser if command is None else commands.get(command)
        if sub is None:
            continue
        by_key = {tuple(sorted(doc_names(a))): a for a in documentable(sub)}
        for row in section.rows:
            action = by_key.get(tuple(sorted(row.names)))
            if action is None:
                continue  # reported by the test above
            where = f"docs/cli.md:{row.line}: {section.title} {row.names[-1]}"
            cell = row.default
            if action.required or required_in_group(sub, action):
                if "required" not in cell:
                    problems.append(f"{where}: is required, the Default column should say so")
            elif isinstance(action, argparse._StoreTrueAction):
                if "off" not in cell:
                    problems.append(f"{where}: a switch, the Default column should say off")
            elif action.default not in _EMPTY_DEFAULTS and action.default != []:
                want = f"`{format_default(action.default)}`"
                if want not in cell:
                    problems.append(f"{where}: default is {want}, the docs say {cell!r}")
            for choice in action.choices or ():
                if f"`{choice}`" not in f"{row.default} {row.description}":
                    problems.append(f"{where}: choice `{choice}` is not mentioned")
    assert not problems, "\n".join(problems)


def test_each_command_has_a_synopsis_naming_its_arguments(
    doc: tuple[dict[str | None, Section], list[Section]], parser: argparse.ArgumentParser
) -> None:
    """The first code block of a section is `gossamer COMMAND ...` and names every argument."""
    sections, _ = doc
    commands = subcommands(parser)
    problems: list[str] = []
    for command, section in sections.items():
        sub = parser if command is None else commands.get(command)
        if sub is None:
            continue
        if not section.code_blocks or not section.code_blocks[0]:
            problems.append(f"docs/cli.md:{section.line}: {section.title} has no synopsis")
            continue
        synopsis = " ".join(line for _, line in section.code_blocks[0])
        first_line = section.code_blocks[0][0][0]
        if not synopsis.startswith(section.title + " "):
            problems.append(f"docs/cli.md:{first_line}: synopsis should start {section.title!r}")
        words = set(re.findall(r"-{1,2}[A-Za-z][\w-]*|[A-Z][A-Z_]*", synopsis))
        for action in documentable(sub):
            names = doc_names(action)
            if not words & set(names):
                problems.append(
                    f"docs/cli.md:{first_line}: {section.title} synopsis lacks {'/'.join(names)}"
                )
    assert not problems, "\n".join(problems)


def example_lines(sections: list[Section]) -> list[tuple[int, list[str], bool]]:
    """Every `$ gossamer ...` line in a code block: (line, argv, whether it shows a usage error).

    An example shows a usage error when the next line of its output is argparse's `usage:` line.
    """
    found: list[tuple[int, list[str], bool]] = []
    for section in sections:
        for block in section.code_blocks:
            for i, (number, line) in enumerate(block):
                if not line.startswith("$ "):
                    continue
                words = shlex.split(line[2:], comments=True)
                while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                    words.pop(0)  # VAR=value before the command
                if not words or words[0] != "gossamer":
                    continue
                argv: list[str] = []
                for word in words[1:]:
                    if word in ("|", "||", "&&", ";", ">", "2>&1"):
                        break
                    argv.append(word)
                following = block[i + 1][1] if i + 1 < len(block) else ""
                found.append((number, argv, following.startswith("usage: gossamer")))
    return found


def test_every_example_command_line_parses(
    doc: tuple[dict[str | None, Section], list[Section]],
    parser: argparse.ArgumentParser,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """What the examples run is accepted by the parser, and the usage errors shown are errors."""
    _, ordered = doc
    examples = example_lines(ordered)
    assert len(examples) >= 20, "expected an example or more per command"
    problems: list[str] = []
    for number, argv, usage_error in examples:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            err = capsys.readouterr().err.strip().splitlines()
            if not usage_error:
                problems.append(f"docs/cli.md:{number}: gossamer {shlex.join(argv)}: {err[-1:]}")
            elif exc.code != 2:
                problems.append(f"docs/cli.md:{number}: usage error exits {exc.code}, not 2")
            continue
        if usage_error:
            problems.append(f"docs/cli.md:{number}: shown as a usage error, but it parses")
        elif getattr(args, "func", None) is None:
            problems.append(f"docs/cli.md:{number}: gossamer {shlex.join(argv)} runs no command")
    assert not problems, "\n".join(problems)


def test_commands_shown_running_are_documented_commands(
    doc: tuple[dict[str | None, Section], list[Section]],
) -> None:
    """Each command section shows that command at work at least once."""
    sections, ordered = doc
    shown = {argv[0] for _, argv, _ in example_lines(ordered) if argv}
    missing = sorted(c for c in sections if c is not None and c not in shown)
    assert not missing, f"commands with no `$ gossamer COMMAND` example: {missing}"


def test_the_environment_a_workload_gets_is_documented() -> None:
    """Every variable `gossamer up` sets for a workload is named in the docs."""
    text = DOC.read_text(encoding="utf-8")
    replica = ReplicaPlan(
        name="pricing-v2-0",
        service="pricing",
        namespace="default",
        subset="v2",
        index=0,
        labels={},
        command=["true"],
        env={},
        cwd=Path(),
        readiness_path=None,
    )
    env = workload_env(
        base_env("run-id", environ={}),
        replica,
        8000,
        {"outbound": "127.0.0.1:1", "admin": "127.0.0.1:2"},
        "http://127.0.0.1:3",
    )
    missing = sorted(key for key in env if f"`{key}`" not in text)
    assert not missing, f"workload variables not in docs/cli.md: {missing}"


def test_how_commands_find_a_mesh_is_documented() -> None:
    """The environment variables the commands read are the ones the docs name."""
    text = DOC.read_text(encoding="utf-8")
    for name in (ENV_STATE_DIR, ENV_CONTROL_PLANE):
        assert f"${name}" in text, f"${name} is not in docs/cli.md"


def test_status_json_stable_fields_are_documented() -> None:
    """The fields docs/internals.md promises for `status --json` are each in the docs' table."""
    text = DOC.read_text(encoding="utf-8")
    for key in ("controlPlane", "stateDir", "file", "published", "services"):
        assert f"| `{key}` |" in text, f"status --json field {key} is not documented"
    for key in ("replica", "subset", "pid", "ready", "inbound", "outbound", "admin", "app"):
        assert f"`services.*[].{key}`" in text, f"replica field {key} is not documented"
