"""Scenario files to sweep points: reading TOML, ``--set`` overrides, unknown-key checks,
sweep axes (a list where the schema expects a scalar) and their grid, each point
validated (:mod:`fedsim.scenario.model`, :mod:`fedsim.scenario.checks`).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from fedsim import registry
from fedsim.scenario.checks import (
    check_defence_stages,
    check_knowledge,
    check_secure_aggregation,
)
from fedsim.scenario.errors import KeyPath, ScenarioError, format_path, suggest
from fedsim.scenario.model import (
    RESERVED_ATTACK_KEYS,
    SECTIONS,
    AttackConfig,
    DefenceConfig,
    Scenario,
    Section,
    Trial,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


# ---------------------------------------------------------------- key checks


def _is_list_annotation(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_is_list_annotation(a) for a in get_args(annotation) if a is not type(None))
    return origin in (list, tuple, set, frozenset) or annotation in (list, tuple)


def _fields(cls: type[BaseModel]) -> dict[str, bool]:
    """Field name → whether the field itself takes a list."""
    return {name: _is_list_annotation(f.annotation) for name, f in cls.model_fields.items()}


@dataclass(frozen=True)
class _Axis:
    path: KeyPath
    values: list[Any]


def _scan_table(
    table: dict[str, Any], fields: dict[str, bool], path: KeyPath, source: str
) -> list[_Axis]:
    """Reject unknown keys; return the sweep axes of ``table``."""
    axes = []
    for key, value in table.items():
        if key not in fields:
            raise ScenarioError(source, (*path, key), "unknown key" + suggest(key, list(fields)))
        if isinstance(value, list) and not fields[key]:
            if not value:
                raise ScenarioError(source, (*path, key), "an empty list cannot be swept")
            axes.append(_Axis((*path, key), value))
    return axes


def _section_type(annotation: Any) -> type[Section] | None:
    """The :class:`Section` a field holds (``X`` or ``X | None``), else ``None``."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, Section):
            return candidate
    return None


def _scan_section(
    table: dict[str, Any], cls: type[Section], path: KeyPath, source: str
) -> list[_Axis]:
    """:func:`_scan_table` for a section, recursing into its sub-sections' tables."""
    axes = _scan_table(table, _fields(cls), path, source)
    for key, value in table.items():
        sub = _section_type(cls.model_fields[key].annotation)
        if sub is not None and isinstance(value, dict):
            axes += _scan_section(value, sub, (*path, key), source)
    return axes


def _plugin_entry(
    kind: str, index: int, entry: Any, source: str
) -> tuple[type[BaseModel], dict[str, Any], dict[str, Any]]:
    """Split one ``[[attacks]]``/``[[defences]]`` table into reserved keys and plugin params."""
    path: KeyPath = (kind, index)
    if not isinstance(entry, dict):
        raise ScenarioError(source, path, "must be a table")
    plugins = registry.discover()
    known_plugins = plugins.attacks if kind == "attacks" else plugins.defences
    name = entry.get("name")
    if isinstance(name, list):
        raise ScenarioError(source, (*path, "name"), "a plugin name cannot be swept")
    if not isinstance(name, str):
        raise ScenarioError(source, (*path, "name"), "missing plugin name")
    clash = plugins.clashes.get(f"fedsim.{kind}:{name}")
    if name not in known_plugins and clash:
        raise ScenarioError(source, (*path, "name"), f"{kind[:-1]} plugin {name!r} is {clash}")
    if name not in known_plugins:
        known = sorted(known_plugins)
        raise ScenarioError(
            source, (*path, "name"), f"no {kind[:-1]} plugin {name!r}" + suggest(name, known)
        )
    reserved = RESERVED_ATTACK_KEYS if kind == "attacks" else ("name",)
    head = {k: v for k, v in entry.items() if k in reserved}
    params = {k: v for k, v in entry.items() if k not in reserved}
    return known_plugins[name].Params, head, params


def _find_axes(raw: dict[str, Any], source: str) -> list[_Axis]:
    top = _fields(Scenario)
    axes = _scan_table(
        {k: v for k, v in raw.items() if k not in ("attacks", "defences")}, top, (), source
    )
    for section, cls in SECTIONS.items():
        value = raw.get(section, {})
        if not isinstance(value, dict):
            raise ScenarioError(source, (section,), "must be a table")
        axes += _scan_section(value, cls, (section,), source)
    for kind in ("attacks", "defences"):
        entries = raw.get(kind, [])
        if not isinstance(entries, list):
            raise ScenarioError(source, (kind,), f"must be a list of tables ([[{kind}]])")
        for i, entry in enumerate(entries):
            params_cls, head, params = _plugin_entry(kind, i, entry, source)
            head_cls = AttackConfig if kind == "attacks" else DefenceConfig
            head_fields = {k: v for k, v in _fields(head_cls).items() if k != "params"}
            axes += _scan_table(head, head_fields, (kind, i), source)
            axes += _scan_table(params, _fields(params_cls), (kind, i), source)
    return axes


# ---------------------------------------------------------------- resolution


def _set_path(raw: dict[str, Any], path: KeyPath, value: Any) -> None:
    node: Any = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _validate_point(raw: dict[str, Any], source: str) -> Scenario:
    """Validate one fully scalar scenario dict, plugin parameters included."""
    data = {k: v for k, v in raw.items() if k not in ("attacks", "defences")}
    for kind in ("attacks", "defences"):
        resolved = []
        for i, entry in enumerate(raw.get(kind, [])):
            params_cls, head, params = _plugin_entry(kind, i, entry, source)
            try:
                checked = params_cls.model_validate(params)
            except ValidationError as exc:
                raise _from_pydantic(exc, source, (kind, i)) from None
            resolved.append({**head, "params": checked.model_dump(mode="json")})
        data[kind] = resolved
    check_defence_stages(data["defences"], data.get("federation", {}), source)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise _from_pydantic(exc, source, ()) from None
    check_knowledge(scenario, source)
    check_secure_aggregation(scenario, source)
    return scenario


def _from_pydantic(exc: ValidationError, source: str, prefix: KeyPath) -> ScenarioError:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if p != "params")
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "literal_error":
        message = f"{message}, got {err['input']!r}"
    return ScenarioError(source, (*prefix, *loc), message)


MAX_SWEEP_POINTS = 10_000
"""Most sweep points one scenario may give (the product of its axes' lengths)."""


def _check_sweep_size(axes: list[_Axis], source: str) -> None:
    """Refuse a grid of more than :data:`MAX_SWEEP_POINTS` points before building it."""
    count = math.prod(len(axis.values) for axis in axes)
    if count > MAX_SWEEP_POINTS:
        sizes = " × ".join(f"{format_path(a.path)}: {len(a.values):,}" for a in axes)
        raise ScenarioError(
            source,
            (),
            f"the sweep has {count:,} points ({sizes}), more than the limit of "
            f"{MAX_SWEEP_POINTS:,}; split it into several scenarios",
        )


DEFENCE_SET = "defence_set"
"""The point key that names a trial's defence set (``defence_sets``)."""
SET_KEYS = frozenset({"label", "defences"})
"""The keys of one ``[[defence_sets]]`` table."""


def expand(raw: dict[str, Any], source: str) -> list[Trial]:
    """Validate ``raw`` and return one :class:`Trial` per sweep point.

    Without ``defence_sets`` the points are the grid product of the sweep axes. With
    it (a list of tables ``{label, defences}``, alternatives to ``[[defences]]``), each
    set is put in place of ``[[defences]]`` and swept as such, and the points are
    the sets' grids one after the other, each point naming its set under
    :data:`DEFENCE_SET` (the label, by default the defences' names joined by ``+``,
    ``none`` for an empty set).

    Raises:
        ScenarioError: an invalid point or set, or more than :data:`MAX_SWEEP_POINTS`
            points.
    """
    if "defence_sets" not in raw:
        axes = _find_axes(raw, source)
        _check_sweep_size(axes, source)
        return _grid(raw, axes, {}, source)
    variants = _defence_variants(raw, source)
    grids = []
    for index, (label, variant) in enumerate(variants):
        try:
            grids.append((label, variant, _find_axes(variant, source)))
        except ScenarioError as exc:
            raise _in_set(exc, index) from None
    count = sum(math.prod(len(a.values) for a in axes) for _, _, axes in grids)
    if count > MAX_SWEEP_POINTS:
        raise ScenarioError(source, ("defence_sets",), f"the sets have {count:,} points, more "
                            f"than the limit of {MAX_SWEEP_POINTS:,}")  # fmt: skip
    trials: list[Trial] = []
    for index, (label, variant, axes) in enumerate(grids):
        try:
            points = _grid(variant, axes, {DEFENCE_SET: label}, source)
        except ScenarioError as exc:
            raise _in_set(exc, index) from None
        trials += [dataclasses.replace(t, index=len(trials) + i) for i, t in enumerate(points)]
    return trials


def _grid(
    raw: dict[str, Any], axes: list[_Axis], fixed: dict[str, Any], source: str
) -> list[Trial]:
    """The grid product of ``axes`` over ``raw``, each point's values after ``fixed``."""
    trials = []
    for index, values in enumerate(itertools.product(*(a.values for a in axes))):
        point_raw = copy.deepcopy(raw)
        point: dict[str, Any] = dict(fixed)
        for axis, value in zip(axes, values, strict=True):
            _set_path(point_raw, axis.path, value)
            point[format_path(axis.path)] = value
        trials.append(Trial(index, point, _validate_point(point_raw, source)))
    return trials


def _defence_variants(raw: dict[str, Any], source: str) -> list[tuple[str, dict[str, Any]]]:
    """``raw`` once per entry of its ``defence_sets``, that set's defences as its
    ``[[defences]]``, with the set's label.

    Raises:
        ScenarioError: ``defence_sets`` beside ``[[defences]]``, not a non-empty list of
            tables of :data:`SET_KEYS`, or two sets with the same label.
    """
    sets = raw["defence_sets"]
    if "defences" in raw:
        raise ScenarioError(source, ("defence_sets",), "give either [[defences]] or "
                            "[[defence_sets]] (alternatives to it), not both")  # fmt: skip
    if not isinstance(sets, list) or not sets:
        raise ScenarioError(
            source,
            ("defence_sets",),
            "must be a non-empty list of tables ([[defence_sets]], each with a label and "
            "[[defence_sets.defences]])",
        )
    base = {k: v for k, v in raw.items() if k != "defence_sets"}
    variants: list[tuple[str, dict[str, Any]]] = []
    for index, entry in enumerate(sets):
        where: KeyPath = ("defence_sets", index)
        if not isinstance(entry, dict):
            raise ScenarioError(source, where, "must be a table (label, defences)")
        for key in entry:
            if key not in SET_KEYS:
                raise ScenarioError(
                    source, (*where, key), "unknown key" + suggest(key, sorted(SET_KEYS))
                )
        defences = entry.get("defences", [])
        if not isinstance(defences, list) or not all(isinstance(d, dict) for d in defences):
            raise ScenarioError(source, (*where, "defences"), "must be a list of tables")
        label = entry.get("label", "+".join(str(d.get("name")) for d in defences) or "none")
        if not isinstance(label, str) or not label.strip():
            raise ScenarioError(source, (*where, "label"), "must be a non-empty string")
        if label in (known := [v[0] for v in variants]):
            raise ScenarioError(
                source,
                (*where, "label"),
                f"{label!r} names set {known.index(label)} too; give each set its own label",
            )
        variants.append((label, {**copy.deepcopy(base), "defences": copy.deepcopy(defences)}))
    return variants


def _in_set(exc: ScenarioError, index: int) -> ScenarioError:
    """``exc`` about a set's ``defences`` entry, its path inside ``defence_sets[index]``."""
    if exc.path[:1] != ("defences",):
        return exc
    return ScenarioError(exc.source, ("defence_sets", index, *exc.path), exc.message)


# ---------------------------------------------------------------- files and overrides


OVERRIDE_KEY = re.compile(r"[^.\[\]]+(?:\.[^.\[\]]+|\[\d+\])*")
"""A ``--set`` key: names joined by dots, each optionally followed by ``[index]``s."""
MAX_NESTING = 32
"""How deeply tables and arrays may nest in a scenario (and in a ``--set`` value)."""


def parse_override(text: str, source: str = "--set") -> tuple[KeyPath, Any]:
    """``"federation.rounds=2"`` or ``"defences[0].sigma=[0, 0.1]"`` → (path, value).

    The value is read as a TOML value; if that fails, as a plain string.
    """
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not OVERRIDE_KEY.fullmatch(key):
        raise ScenarioError(source, (), f"--set {text!r} must look like key.path=value")
    path: list[str | int] = []
    for part in key.replace("[", ".").replace("]", "").split("."):
        path.append(int(part) if part.isdigit() else part)
    try:
        value = tomllib.loads(f"v = {value_text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text.strip()
    except RecursionError:
        raise ScenarioError(source, (), f"--set {key}: value nested too deeply") from None
    return tuple(path), value


def check_nesting(raw: dict[str, Any], source: str) -> None:
    """Refuse tables and arrays nested more than :data:`MAX_NESTING` levels deep: no key
    needs them, and a scenario travels to the clients as JSON, which pydantic reads
    and writes only to about 200 levels.

    Raises:
        ScenarioError: naming the key under which the nesting is too deep.
    """
    stack: list[tuple[KeyPath, Any]] = [((), raw)]
    while stack:
        path, value = stack.pop()
        if len(path) > MAX_NESTING:
            key = path[: max(i for i, p in enumerate(path) if isinstance(p, str)) + 1]
            raise ScenarioError(source, key, f"nested more than {MAX_NESTING} levels deep")
        if isinstance(value, dict):
            stack.extend(((*path, k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend(((*path, i), v) for i, v in enumerate(value))


def apply_override(raw: dict[str, Any], path: KeyPath, value: Any, source: str) -> None:
    node: Any = raw
    for depth, part in enumerate(path[:-1]):
        try:
            node = node[part] if isinstance(part, int) else node.setdefault(part, {})
        except (IndexError, KeyError, TypeError, AttributeError):
            raise ScenarioError(source, path[: depth + 1], "--set: no such entry") from None
    if not isinstance(node, dict) or isinstance(path[-1], int):
        raise ScenarioError(source, path, "--set: no such key")
    node[path[-1]] = value


def read_raw(path: Path) -> dict[str, Any]:
    """Parse a scenario file, raising :class:`ScenarioError` for unreadable TOML."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ScenarioError(str(path), (), "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(str(path), (), f"invalid TOML: {exc}") from None
    except RecursionError:
        raise ScenarioError(
            str(path), (), "invalid TOML: arrays or tables nested too deeply"
        ) from None
    except UnicodeDecodeError:
        raise ScenarioError(str(path), (), "not a UTF-8 text file") from None
    except OSError as exc:
        raise ScenarioError(str(path), (), f"cannot read: {exc.strerror or exc}") from None


def load(path: Path, overrides: Sequence[str] = ()) -> tuple[dict[str, Any], list[Trial]]:
    """Read, override and expand a scenario file; returns the raw dict and its trials.

    Raises:
        ScenarioError: unreadable or invalid, or a file that sets nothing at all.
    """
    raw = read_raw(path)
    if not raw:
        raise ScenarioError(
            str(path),
            (),
            "the file sets nothing (it is empty or only comments): describe the federation "
            "([data], [model], [federation]) and the [[attacks]] to run, as in "
            "scenarios/quickstart.toml",
        )
    for text in overrides:
        key, value = parse_override(text, str(path))
        apply_override(raw, key, value, str(path))
    check_nesting(raw, str(path))
    return raw, expand(raw, str(path))
