"""Plugin discovery through Python entry points.

A package adds an attack by declaring, in its ``pyproject.toml``::

    [project.entry-points."fedsim.attacks"]
    my_attack = "my_package.module:MyAttack"

and likewise ``fedsim.defences`` for defences and ``fedsim.datasets`` for datasets
(:class:`fedsim.data.source.DatasetSource`). The entry-point name is the name used
in scenario files. fedsim's built-ins register the same way.

A plugin that fails to load (any exception, ``sys.exit`` included, on import) is
set aside as broken and reported by ``fedsim plugins``; the others work. Two
distributions declaring the same name in one group is a clash: the built-in
(distribution ``fedsim``) keeps its name and the other is ignored; between two
third-party distributions neither is loaded, and a scenario naming it is refused.
Both cases are listed by ``fedsim plugins``.

The ``fedsim.models`` group declares models (``my_net = "my_package.nets:Net"``), the
built-in ``lenet`` and ``convnet`` among them: a scenario names one by its entry-point
name (or by an import path), and a deployed client agrees to build them
(:mod:`fedsim.models.allowed`). These entry points are read here, never loaded: a model
is imported only when a scenario builds it (:mod:`fedsim.models.imports`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Any

from fedsim.api import STAGE_HOOKS, Attack, Defence, missing_hooks
from fedsim.data.source import DatasetSource

ATTACK_GROUP = "fedsim.attacks"
DEFENCE_GROUP = "fedsim.defences"
DATASET_GROUP = "fedsim.datasets"
MODEL_GROUP = "fedsim.models"
BUILTIN_DISTRIBUTION = "fedsim"


@dataclass(frozen=True)
class Plugins:
    """Discovered plugins by entry-point name, the ones that failed to load, and name
    clashes between distributions (both keyed ``"group:name"``, valued by one line)."""

    attacks: dict[str, type[Attack[Any]]]
    defences: dict[str, type[Defence[Any]]]
    datasets: dict[str, type[DatasetSource]]
    broken: dict[str, str]
    clashes: dict[str, str]


def _distribution(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "an unknown distribution"


def _unambiguous(group: str, clashes: dict[str, str]) -> list[EntryPoint]:
    """The group's entry points, one per name: a name declared by several distributions
    keeps only the built-in's entry point, or none if no built-in declares it."""
    by_name: defaultdict[str, list[EntryPoint]] = defaultdict(list)
    for ep in entry_points(group=group):
        by_name[ep.name].append(ep)
    kept: list[EntryPoint] = []
    for name, eps in sorted(by_name.items()):
        dists = sorted({_distribution(ep) for ep in eps})
        if len(dists) == 1:
            kept.append(eps[0])
            continue
        builtin = [ep for ep in eps if _distribution(ep) == BUILTIN_DISTRIBUTION]
        others = " and ".join(repr(d) for d in dists if d != BUILTIN_DISTRIBUTION)
        if builtin:
            kept.append(builtin[0])
            clashes[f"{group}:{name}"] = (
                f"declared by {BUILTIN_DISTRIBUTION!r} (built in, used) and by {others} (ignored)"
            )
        else:
            clashes[f"{group}:{name}"] = (
                f"declared by {others}: none is used; uninstall all but one"
            )
    return kept


def _load(
    group: str, base: type, broken: dict[str, str], clashes: dict[str, str]
) -> dict[str, type]:
    found: dict[str, type] = {}
    for ep in _unambiguous(group, clashes):
        try:
            obj = ep.load()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a plugin that fails, even by sys.exit, is set aside
            broken[f"{group}:{ep.name}"] = f"{type(exc).__name__}: {exc}"
            continue
        if not (isinstance(obj, type) and issubclass(obj, base)):
            broken[f"{group}:{ep.name}"] = f"{ep.value} is not a subclass of {base.__name__}"
            continue
        if issubclass(obj, Defence) and (problem := _defence_problem(obj)):
            broken[f"{group}:{ep.name}"] = f"{ep.value}: {problem}"
            continue
        found[ep.name] = obj
    return found


def _defence_problem(cls: type[Defence[Any]]) -> str | None:
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
    clashes: dict[str, str] = {}
    attacks = _load(ATTACK_GROUP, Attack, broken, clashes)
    defences = _load(DEFENCE_GROUP, Defence, broken, clashes)
    datasets = _load(DATASET_GROUP, DatasetSource, broken, clashes)
    return Plugins(attacks, defences, datasets, broken, clashes)


@cache
def registered_models() -> Mapping[str, str]:
    """Import paths declared in the ``fedsim.models`` group, by entry-point name (not
    loaded; read once per process, like :func:`discover`: every client builds its model
    every round). A name several distributions declare keeps the built-in's path, or is
    left out if no built-in declares it (as for the other groups)."""
    return MappingProxyType({ep.name: ep.value for ep in _unambiguous(MODEL_GROUP, {})})


def instantiate_attack(name: str, params: Mapping[str, Any]) -> Attack[Any]:
    """An attack plugin ``name`` built with ``params`` (validated by its ``Params``)."""
    cls = discover().attacks[name]
    return cls(cls.Params(**params))


def instantiate_defence(name: str, params: Mapping[str, Any]) -> Defence[Any]:
    """A defence plugin ``name`` built with ``params`` (validated by its ``Params``)."""
    cls = discover().defences[name]
    return cls(cls.Params(**params))
