"""docs/analyze.md against config.analyze.RULES: every code documented, with its severity."""

from __future__ import annotations

import re
from pathlib import Path

from gossamer.config.analyze import RULES

DOC = Path(__file__).resolve().parents[2] / "docs" / "analyze.md"
ROW = re.compile(r"^\| `(GSM\d{3})` \| (error|warning|info) \|")


def test_every_code_is_documented_with_its_severity_and_nothing_else() -> None:
    rows: dict[str, str] = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line)
        if match:
            assert match.group(1) not in rows, f"{match.group(1)} documented twice"
            rows[match.group(1)] = match.group(2)
    assert rows == {code: rule.severity for code, rule in RULES.items()}
