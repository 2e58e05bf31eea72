"""The loader never fails with anything but ConfigError, whatever text or JSON it is given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gossamer.config.errors import ConfigError, Problem
from gossamer.config.loader import collect_text, load_objects

SHOP = (Path(__file__).parent / "fixtures" / "shop.yaml").read_text()

_yaml_bits = st.sampled_from(
    [
        "\n",
        " ",
        "  ",
        "- ",
        ": ",
        "---\n",
        "{",
        "}",
        "[",
        "]",
        ",",
        "&a ",
        "*a",
        "<<: ",
        "!x ",
        "'",
        '"',
        "#",
        "?",
        "|",
        ">",
        "\t",
        "~",
        "kind",
        "spec",
        "apiVersion",
        "0",
        "-1",
        "1.5",
        "gossamer.dev/v1alpha1",
        "Service",
        "HTTPRoute",
        "weight",
        "name",
        "null",
        "true",
    ]
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_yaml_bits, max_size=40).map("".join))
def test_arbitrary_yaml_like_text(text: str) -> None:
    loaded, problems = collect_text(text, "fuzz.yaml")
    assert all(p.file == "fuzz.yaml" and str(p).startswith("fuzz.yaml") for p in problems)
    assert len(loaded) <= text.count("---") + 1


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, len(SHOP) - 1),
    st.integers(0, len(SHOP) - 1),
    st.sampled_from(["", "x", " ", "-1", "\n  "]),
)
def test_damaged_shop(start: int, length: int, insert: str) -> None:
    """Cut a piece out of the real shop config and put junk there."""
    text = SHOP[:start] + insert + SHOP[start + length % 40 :]
    loaded, problems = collect_text(text, "shop.yaml")
    assert loaded or problems


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 70000)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["apiVersion", "kind", "metadata", "spec", "name", "weight", "rules"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(_json, max_size=3))
def test_arbitrary_json_bodies(objs: list[Any]) -> None:
    problems: list[Problem] = []
    try:
        load_objects(objs)
    except ConfigError as exc:
        problems = exc.problems
    assert all(p.line is None and p.path.startswith("resources[") for p in problems)
