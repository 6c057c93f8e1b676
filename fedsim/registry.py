"""Plugin discovery through Python entry points.

A package adds an attack by declaring, in its ``pyproject.toml``::

    [project.entry-points."fedsim.attacks"]
    my_attack = "my_package.module:MyAttack"

and likewise ``fedsim.defences`` for defences. The entry-point name is the name
used in scenario files. fedsim's built-ins register the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from fedsim.api import STAGE_HOOKS, Attack, Defence, missing_hooks

ATTACK_GROUP = "fedsim.attacks"
DEFENCE_GROUP = "fedsim.defences"


@dataclass(frozen=True)
class Plugins:
    """Discovered plugins by entry-point name, and the ones that failed to load."""

    attacks: dict[str, type[Attack]]
    defences: dict[str, type[Defence]]
    broken: dict[str, str]


def _load(group: str, base: type, broken: dict[str, str]) -> dict[str, type]:
    found: dict[str, type] = {}
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break fedsim
            broken[f"{group}:{ep.name}"] = f"{type(exc).__name__}: {exc}"
            continue
        if not (isinstance(obj, type) and issubclass(obj, base)):
            broken[f"{group}:{ep.name}"] = f"{ep.value} is not a subclass of {base.__name__}"
            continue
        if base is Defence and (problem := _defence_problem(obj)):
            broken[f"{group}:{ep.name}"] = f"{ep.value}: {problem}"
            continue
        found[ep.name] = obj
    return found


def _defence_problem(cls: type[Defence]) -> str | None:
    """Why a defence class cannot be used, or ``None``."""
    unknown = [s for s in cls.stages if s not in STAGE_HOOKS]
    if not cls.stages or unknown:
        return f"stages must be among {sorted(STAGE_HOOKS)}, got {list(cls.stages)}"
    missing = missing_hooks(cls)
    if missing:
        return f"declares stages {list(cls.stages)} but does not implement {', '.join(missing)}()"
    return None


@cache
def discover() -> Plugins:
    """All installed plugins (cached for the process)."""
    broken: dict[str, str] = {}
    attacks = _load(ATTACK_GROUP, Attack, broken)
    defences = _load(DEFENCE_GROUP, Defence, broken)
    return Plugins(attacks, defences, broken)


def instantiate_attack(name: str, params: Mapping[str, Any]) -> Attack:
    """An attack plugin ``name`` built with ``params`` (validated by its ``Params``)."""
    cls = discover().attacks[name]
    return cls(cls.Params(**params))


def instantiate_defence(name: str, params: Mapping[str, Any]) -> Defence:
    """A defence plugin ``name`` built with ``params`` (validated by its ``Params``)."""
    cls = discover().defences[name]
    return cls(cls.Params(**params))
