"""Load resources from YAML files or JSON bodies, reporting every problem with file, line and field.

YAML is read with ruamel.yaml's composer, which keeps the position of every node; we build plain
Python values from the nodes ourselves so that each field path
("spec.rules[0].backendRefs[1].weight") maps to the 1-based (line, column) of its key. Each document
is then validated by its kind's pydantic model, and pydantic's errors are translated into short
messages at those positions. Nothing stops at the first problem: all documents of all files are
read, and one ConfigError carries everything found.
"""

from __future__ import annotations

import os
import re
import types
import typing
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, MarkedYAMLWarning, YAMLError, YAMLWarning
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from gossamer.config import models
from gossamer.config.errors import ConfigError, Problem, did_you_mean

Position = tuple[int, int]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MAX_DEPTH = 64  # deeper than any real resource; stops recursive aliases (&a [*a])
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Loaded:
    """A validated resource and where it came from, so later checks can point at its fields.

    `positions` maps a field path ("spec.rules[0].backendRefs[1]") to the 1-based (line, column) of
    its key in the file; it is empty for resources that arrived as JSON. `prefix` is put in front of
    every field path in problems ("resources[2]." for the third resource of an API request).
    """

    resource: models.AnyResource
    filename: str
    positions: Mapping[str, Position] = field(default_factory=dict)
    prefix: str = ""
    document: int = 0

    @property
    def key(self) -> str:
        return self.resource.key

    def position(self, path: str) -> Position | None:
        """The position of `path`, or of its nearest ancestor that has one."""
        while True:
            pos = self.positions.get(path)
            if pos is not None or not path:
                return pos
            path = parent_path(path)

    def problem(self, path: str, message: str) -> Problem:
        pos = self.position(path)
        full = (self.prefix + path) if path else self.prefix.rstrip(".")
        return Problem(
            self.filename, pos[0] if pos else None, pos[1] if pos else None, full, message
        )

    def where(self, path: str = "metadata.name") -> str:
        """A short "file:line" for messages that point back at this resource."""
        pos = self.position(path)
        return f"{self.filename}:{pos[0]}" if pos else self.filename


@dataclass(frozen=True, slots=True)
class Unloaded:
    """A document that failed to load, as far as its raw form names it ("" when it does not).

    Cross-resource checks still run on what did load; knowing that a Service document was there
    (just broken) keeps them from reporting "unknown service" wherever it is used.
    """

    kind: str
    namespace: str
    name: str


def _unloaded(data: Any) -> Unloaded | None:
    if not isinstance(data, dict):
        return None
    kind = data.get("kind")
    meta = data.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    namespace = meta.get("namespace", "default") if isinstance(meta, dict) else "default"
    if not isinstance(kind, str) or not isinstance(name, str) or not isinstance(namespace, str):
        return None
    return Unloaded(kind, namespace, name)


def parent_path(path: str) -> str:
    """ "a.b[2]" -> "a.b" -> "a" -> ""."""
    if path.endswith("]"):
        return path[: path.rfind("[")]
    dot = path.rfind(".")
    return path[:dot] if dot >= 0 else ""


def join_path(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else part


# --- public API -----------------------------------------------------------------------------------


def load_text(text: str, filename: str = "<string>") -> list[Loaded]:
    """Load every resource in a YAML text of one or more documents.

    Raises:
        ConfigError: with every problem found in the text.
    """
    loaded, problems = collect_text(text, filename)
    if problems:
        raise ConfigError(problems)
    return loaded


def load_files(paths: Iterable[str | os.PathLike[str]]) -> list[Loaded]:
    """Load files in order; a directory loads its *.yaml and *.yml files, sorted by name.

    Raises:
        ConfigError: with every problem found in all the files.
    """
    loaded, problems = collect_files(paths)
    if problems:
        raise ConfigError(problems)
    return loaded


def load_objects(objs: Sequence[Any], source: str = "request") -> list[Loaded]:
    """Validate resources that arrived as JSON (the control plane API), paths "resources[i]...".

    Raises:
        ConfigError: with every problem, without line or column.
    """
    loaded, problems = collect_objects(objs, source)
    if problems:
        raise ConfigError(problems)
    return loaded


def collect_objects(
    objs: Sequence[Any], source: str = "request", unloaded: list[Unloaded] | None = None
) -> tuple[list[Loaded], list[Problem]]:
    """Like load_objects, but returns what loaded and the problems instead of raising; the
    documents that failed are added to `unloaded` when given."""
    loaded: list[Loaded] = []
    problems: list[Problem] = []
    for i, obj in enumerate(objs):
        prefix = f"resources[{i}]."
        resource, found = _validate_document(obj, {}, source, prefix)
        problems.extend(found)
        if resource is not None:
            loaded.append(Loaded(resource, source, {}, prefix, i))
        elif unloaded is not None and (failed := _unloaded(obj)) is not None:
            unloaded.append(failed)
    return loaded, problems


def expand_paths(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[str], list[Problem]]:
    """The files named, with directories replaced by their YAML files; problems for missing ones."""
    files: list[str] = []
    problems: list[Problem] = []
    for p in paths:
        name = os.fspath(p)
        path = Path(name)
        if path.is_dir():
            found = sorted(
                c for c in path.iterdir() if c.suffix in YAML_SUFFIXES and not c.is_dir()
            )
            if not found:
                problems.append(
                    Problem(name, None, None, "", "directory has no .yaml or .yml files")
                )
            files.extend(os.path.join(name, c.name) for c in found)
        elif not path.exists():
            problems.append(Problem(name, None, None, "", "no such file or directory"))
        else:
            files.append(name)
    return files, problems


def collect_files(
    paths: Iterable[str | os.PathLike[str]], unloaded: list[Unloaded] | None = None
) -> tuple[list[Loaded], list[Problem]]:
    """Like load_files, but returns what loaded and the problems instead of raising; the
    documents that failed are added to `unloaded` when given."""
    files, problems = expand_paths(paths)
    loaded: list[Loaded] = []
    for name in files:
        try:
            text = Path(name).read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            problems.append(Problem(name, None, None, "", f"not UTF-8 text ({exc.reason})"))
            continue
        except OSError as exc:
            problems.append(Problem(name, None, None, "", f"cannot read: {exc.strerror or exc}"))
            continue
        got, found = collect_text(text, name, unloaded)
        loaded.extend(got)
        problems.extend(found)
    return loaded, problems


def collect_text(
    text: str, filename: str, unloaded: list[Unloaded] | None = None
) -> tuple[list[Loaded], list[Problem]]:
    """Like load_text, but returns what loaded and the problems instead of raising; the documents
    that failed are added to `unloaded` when given."""
    yaml = YAML(typ="safe", pure=True)
    loaded: list[Loaded] = []
    problems: list[Problem] = []
    with warnings.catch_warnings(record=True) as caught:
        # ruamel reports some doubtful YAML (a reused anchor) as a warning; in a config that is
        # ambiguous, so it becomes a problem like any other, never a stray warning.
        warnings.simplefilter("always")
        _collect(yaml, text, filename, loaded, problems, unloaded)
    for warning in caught:
        message = warning.message
        if isinstance(message, MarkedYAMLWarning):
            mark = message.problem_mark or message.context_mark
            line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
            text_ = message.problem or str(message).strip().splitlines()[0]
            problems.append(Problem(filename, line, column, "", f"invalid YAML: {text_}"))
        elif isinstance(message, YAMLWarning):
            # Unmarked ruamel warnings name their places in the text: the last is the culprit.
            lines = str(message).strip().splitlines() or ["doubtful YAML"]
            places = re.findall(r"line (\d+), column (\d+)", str(message))
            line, column = (int(places[-1][0]), int(places[-1][1])) if places else (None, None)
            problems.append(Problem(filename, line, column, "", f"invalid YAML: {lines[0]}"))
        else:  # not the YAML's fault: let it surface as the warning it is
            warnings.warn_explicit(
                message, warning.category, warning.filename, warning.lineno, source=warning.source
            )
    problems.sort(key=lambda p: (p.line or 0, p.column or 0))
    return loaded, problems


def _collect(
    yaml: YAML,
    text: str,
    filename: str,
    loaded: list[Loaded],
    problems: list[Problem],
    unloaded: list[Unloaded] | None,
) -> None:
    document = 0
    try:
        # compose_all is lazy: documents before a syntax error are still read and checked.
        for node in yaml.compose_all(text):
            builder = _Builder(filename, yaml)
            data = builder.build(node, "", 0)
            problems.extend(builder.problems)
            if data is None:
                continue  # an empty document ("---" with nothing after it)
            resource, found = _validate_document(data, builder.positions, filename, "")
            problems.extend(found)
            if resource is not None and not builder.problems:
                loaded.append(Loaded(resource, filename, builder.positions, "", document))
            elif unloaded is not None and (failed := _unloaded(data)) is not None:
                unloaded.append(failed)
            document += 1
    except MarkedYAMLError as exc:
        problems.append(_syntax_problem(exc, filename))
    except YAMLError as exc:  # unmarked: rare, but still one line, not a traceback
        problems.append(Problem(filename, None, None, "", f"invalid YAML: {exc}"))


# --- YAML nodes -> plain values with positions ----------------------------------------------------


def _mark(node: Node) -> Position:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


def _syntax_problem(exc: MarkedYAMLError, filename: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    message = exc.problem or "invalid YAML"
    if exc.context:
        message = f"{message} ({exc.context})"
    if mark is None:
        return Problem(filename, None, None, "", f"invalid YAML: {message}")
    return Problem(filename, mark.line + 1, mark.column + 1, "", f"invalid YAML: {message}")


class _Builder:
    """Turns one composed YAML document into dicts, lists and scalars, recording positions."""

    def __init__(self, filename: str, yaml: YAML) -> None:
        self.filename = filename
        self.constructor = yaml.constructor
        self.positions: dict[str, Position] = {}
        self.problems: list[Problem] = []
        self._building: set[int] = set()

    def _problem(self, node: Node, path: str, message: str) -> None:
        line, col = _mark(node)
        self.problems.append(Problem(self.filename, line, col, path, message))

    def build(self, node: Node, path: str, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            self._problem(node, path, "nested too deeply")
            return None
        if path == "" or path.endswith("]"):
            self.positions.setdefault(path, _mark(node))
        if isinstance(node, MappingNode | SequenceNode):
            # An alias may name a node that contains it (&a [*a]): that would never end.
            if id(node) in self._building:
                self._problem(node, path, "an alias refers to a node that contains it")
                return None
            self._building.add(id(node))
            try:
                if isinstance(node, MappingNode):
                    return self._mapping(node, path, depth)
                return [
                    self.build(item, join_path(path, i), depth + 1)
                    for i, item in enumerate(node.value)
                ]
            finally:
                self._building.discard(id(node))
        return self._scalar(node, path)

    def _scalar(self, node: Node, path: str) -> Any:
        if node.tag == _TIMESTAMP_TAG:
            return str(node.value)  # "2024-01-01" as a label value means the text, not a date
        try:
            return self.constructor.construct_object(node, deep=True)
        except YAMLError:
            self._problem(node, path, f"unsupported YAML tag {node.tag!r}")
            return None

    def _key(self, node: Node, path: str) -> str | None:
        if not isinstance(node, ScalarNode):
            self._problem(node, path, "a mapping key must be a plain string")
            return None
        problems = len(self.problems)
        key = self._scalar(node, path)
        if key is None:
            if len(self.problems) == problems:  # not already reported as a bad tag
                self._problem(node, path, "a mapping key must not be empty")
            return None
        return str(key)

    def _mapping(self, node: MappingNode, path: str, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        merges: list[Node] = []
        explicit: dict[str, Position] = {}
        entries: list[tuple[str, Node]] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.extend(
                    value_node.value if isinstance(value_node, SequenceNode) else [value_node]
                )
                continue
            key = self._key(key_node, path)
            if key is None:
                continue
            key_path = join_path(path, key)
            if key in explicit:
                first = explicit[key]
                self._problem(
                    key_node,
                    key_path,
                    f"duplicate key {key!r} (first set at line {first[0]}, column {first[1]})",
                )
                continue
            explicit[key] = _mark(key_node)
            entries.append((key, value_node))
        # Merged keys (<<: *defaults) come first so that keys written here override them.
        for merged in merges:
            if not isinstance(merged, MappingNode):
                self._problem(merged, path, "'<<' must merge a mapping")
                continue
            values = self.build(merged, path, depth + 1)
            for key, value in (values or {}).items():
                out.setdefault(key, value)
        for key, value_node in entries:
            key_path = join_path(path, key)
            self.positions[key_path] = explicit[key]
            out[key] = self.build(value_node, key_path, depth + 1)
        return out


# --- one document -> one validated resource -------------------------------------------------------


def _validate_document(
    data: Any, positions: Mapping[str, Position], filename: str, prefix: str
) -> tuple[models.AnyResource | None, list[Problem]]:
    def problem(path: str, message: str, at: str | None = None) -> Problem:
        pos = _lookup(positions, path if at is None else at)
        full = (prefix + path) if path else prefix.rstrip(".")
        return Problem(filename, pos[0] if pos else None, pos[1] if pos else None, full, message)

    if not isinstance(data, dict):
        found = _type_name(data)
        return None, [
            problem(
                "",
                f"a resource must be a mapping with apiVersion, kind, metadata and spec, "
                f"not {found}",
            )
        ]
    problems: list[Problem] = []
    api_version = data.get("apiVersion")
    if api_version is None:
        problems.append(
            problem("apiVersion", f"required field is missing (use {models.API_VERSION})", at="")
        )
    elif api_version != models.API_VERSION:
        problems.append(problem("apiVersion", f"must be {models.API_VERSION}"))
    kind = data.get("kind")
    kinds = ", ".join(models.KINDS)
    if kind is None:
        problems.append(problem("kind", f"required field is missing (one of: {kinds})", at=""))
        return None, problems
    if not isinstance(kind, str) or kind not in models.KINDS:
        hint = did_you_mean(str(kind), models.KINDS)
        problems.append(
            problem(
                "kind",
                f"unknown kind {kind!r}{hint}"
                if hint
                else f"unknown kind {kind!r}: must be one of: {kinds}",
            )
        )
        return None, problems
    cls = models.KINDS[kind]
    # apiVersion was checked above; don't let pydantic report it a second time.
    data = {**data, "apiVersion": models.API_VERSION}
    try:
        resource = cls.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = tuple(p for p in err["loc"] if p != "[key]")
            path = _format_loc(loc)
            at = _format_loc(loc[:-1]) if err["type"] == "missing" else path
            problems.append(problem(path, _message(err, cls, loc), at=at))
        return None, problems
    if problems:
        return None, problems
    return typing.cast(models.AnyResource, resource), problems


def _lookup(positions: Mapping[str, Position], path: str) -> Position | None:
    while True:
        pos = positions.get(path)
        if pos is not None or not path:
            return pos
        path = parent_path(path)


def _format_loc(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        path = join_path(path, part)
    return path


def _type_name(value: Any) -> str:
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


_SIMPLE_MESSAGES = {
    "missing": "required field is missing",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "none_required": "must be empty",
}


def _message(err: ErrorDetails, cls: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    kind = err["type"]
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    given = err.get("input")
    if kind == "extra_forbidden":
        name = str(loc[-1]) if loc else "?"
        model = _model_at(cls, loc[:-1])
        allowed = _aliases(model) if model is not None else []
        return f"unknown field {name!r}{did_you_mean(name, allowed)}"
    if kind == "literal_error":
        expected = re.split(r", | or ", str(ctx.get("expected", "")))
        choices = ", ".join(e.strip("'") for e in expected if e)
        return f"must be one of: {choices}"
    if kind == "string_type":
        if isinstance(given, int | float):  # bool included: `enabled: yes` vs "yes"
            text = str(given).lower() if isinstance(given, bool) else str(given)
            return f'must be a string (write it in quotes: "{text}")'
        return "must be a string"
    if kind in _SIMPLE_MESSAGES:
        if kind.endswith("_type") and "input" in err:
            return f"{_SIMPLE_MESSAGES[kind]}, not {_type_name(given)}"
        return _SIMPLE_MESSAGES[kind]
    bounds = {
        "greater_than_equal": ("ge", ">="),
        "greater_than": ("gt", ">"),
        "less_than_equal": ("le", "<="),
        "less_than": ("lt", "<"),
    }
    if kind in bounds:
        key, op = bounds[kind]
        return f"must be {op} {ctx.get(key)}"
    if kind == "too_short":
        n = int(ctx.get("min_length", 1))
        return "must not be empty" if n == 1 else f"must have at least {n} items"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if kind == "string_too_short":
        n = int(ctx.get("min_length", 1))
        return "must not be empty" if n == 1 else f"must be at least {n} characters"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters"
    if kind in ("value_error", "assertion_error"):
        error = ctx.get("error")
        return str(error) if error is not None else err["msg"]
    msg = err["msg"]
    return msg[:1].lower() + msg[1:]


def _aliases(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _model_at(cls: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class that validates the value at `loc` inside `cls`, if there is one."""
    tp: Any = cls
    for part in loc:
        tp = _strip(tp)
        if isinstance(part, int):
            args = [a for a in typing.get_args(tp)] if _origin_is(tp, list) else []
            if not args:
                return None
            tp = args[0]
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            match = [f for name, f in tp.model_fields.items() if part in (name, f.alias)]
            if not match:
                return None
            tp = match[0].annotation
        elif _origin_is(tp, dict):
            tp = typing.get_args(tp)[1]
        else:
            return None
    tp = _strip(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _origin_is(tp: Any, origin: type) -> bool:
    return typing.get_origin(tp) is origin


def _strip(tp: Any) -> Any:
    """Annotated[X, ...] -> X; X | None -> X (the first model or container in a union)."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin is typing.Union or origin is types.UnionType:
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp
