"""docs/flags.md against proxy/flags.py: every response flag explained, with its status."""

from __future__ import annotations

import re
from pathlib import Path

from gossamer.proxy import flags
from gossamer.proxy.accesslog import CLIENT_DISCONNECTED

DOC = Path(__file__).resolve().parents[2] / "docs" / "flags.md"
HEADING = re.compile(r"^## `([a-z-]+)(?:,<cause>)?`\s*$")
PARTS = ("**Status:**", "**What happened:**", "**Common causes:**", "**What to check:**")


def sections() -> dict[str, tuple[int, str]]:
    """The flag sections: flag -> (line of the heading, the section's text)."""
    found: dict[str, tuple[int, str]] = {}
    current: str | None = None
    lines: list[str] = []
    start = 0
    for number, line in enumerate(DOC.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("## "):
            if current is not None:
                found[current] = (start, "\n".join(lines))
            match = HEADING.match(line)
            assert match, f"docs/flags.md:{number}: a section heading must be a flag: {line!r}"
            current = match.group(1)
            assert current not in found, f"docs/flags.md:{number}: {current} twice"
            start, lines = number, []
            continue
        lines.append(line)
    if current is not None:
        found[current] = (start, "\n".join(lines))
    return found


def test_every_flag_has_a_section_and_every_section_is_a_flag() -> None:
    documented = set(sections())
    real = {*flags.FLAGS, flags.FALLBACK, CLIENT_DISCONNECTED}
    assert not real - documented, f"flags without a section: {sorted(real - documented)}"
    assert not documented - real, f"sections for no flag: {sorted(documented - real)}"


def test_each_section_says_status_what_causes_checks_and_shows_an_example() -> None:
    problems: list[str] = []
    for flag, (line, text) in sections().items():
        for part in PARTS:
            if part not in text:
                problems.append(f"docs/flags.md:{line}: {flag} lacks {part}")
        if "**Example:**" not in text or "```" not in text:
            problems.append(f"docs/flags.md:{line}: {flag} has no example")
    assert not problems, "\n".join(problems)


def test_the_status_given_is_the_proxys() -> None:
    """A flag's status (for a redirect or a fault: the default) is on its Status line."""
    for flag, (line, text) in sections().items():
        status = next(t for t in text.splitlines() if t.startswith("**Status:**"))
        if flag in flags.STATUS:
            assert str(flags.STATUS[flag]) in status, f"docs/flags.md:{line}: {flag}: {status}"
        if flag in flags.STATUS and flag not in (flags.REDIRECT, flags.FAULT_ABORT):
            assert f"x-gossamer-flags: {flag}" in text, f"docs/flags.md:{line}: example header"
