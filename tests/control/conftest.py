"""Shared pytest options for the control-plane tests."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the expected translator outputs in tests/control/golden/*.json",
    )
