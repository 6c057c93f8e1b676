"""Plugin discovery through Python entry points.

A package adds an attack by declaring, in its ``pyproject.toml``::

    [project.entry-points."fedsim.attacks"]
    my_attack = "my_package.module:MyAttack"

and likewise ``fedsim.defences`` for defences. The entry-point name is the name
used in scenario files. fedsim's built-ins register the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points

from fedsim.api import Attack, Defence

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
        found[ep.name] = obj
    return found


@cache
def discover() -> Plugins:
    """All installed plugins (cached for the process)."""
    broken: dict[str, str] = {}
    attacks = _load(ATTACK_GROUP, Attack, broken)
    defences = _load(DEFENCE_GROUP, Defence, broken)
    return Plugins(attacks, defences, broken)
