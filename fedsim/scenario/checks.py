"""The scenario's checks across sections and plugins: what each attack needs of its
threat model, and which defences may act together. They run on every sweep point
when the scenario is loaded; the checks that need the data and the model run after
(:mod:`fedsim.scenario.preflight`).

A plugin's parameters are validated by its ``Params``; what an attack needs and where a
defence acts are class-level answers (:meth:`Attack.knowledge_needed`,
:meth:`Defence.stage_for`), so no plugin is built here.
"""

from __future__ import annotations

from typing import Any

from fedsim import registry
from fedsim.api import Stage, UpdateKind
from fedsim.scenario.errors import ScenarioError
from fedsim.scenario.model import Scenario
from fedsim.threat import knowledge_key, ordered


def _stage(name: str, params: dict[str, Any]) -> Stage:
    """Where defence ``name`` with ``params`` (validated by its ``Params``) acts."""
    cls = registry.discover().defences[name]
    return cls.stage_for(cls.Params.model_validate(params))


def check_knowledge(scenario: Scenario, source: str) -> None:
    """Reject an attack whose threat model lacks knowledge the attack needs."""
    kind: UpdateKind = "gradient" if scenario.federation.protocol == "fedsgd" else "delta"
    for i, config in enumerate(scenario.attacks):
        needed = set(registry.discover().attacks[config.name].knowledge_needed(kind))
        if config.participant_client is not None:
            needed |= {"batch_size"}  # the clients' example counts weigh FedAvg's mean
        missing = ordered(needed - config.knowledge)
        if missing:
            keys = ", ".join(f"{knowledge_key(flag)} = true" for flag in missing)
            raise ScenarioError(
                source,
                ("attacks", i),
                f"attack {config.name!r} needs knowledge its threat model does not grant: "
                f"{', '.join(missing)} (set {keys})",
            )


REPLACING_STAGES = ("training", "aggregate")
"""Stages whose defence replaces a step (local training, FedAvg's mean): one defence each."""


def check_defence_stages(defences: list[dict[str, Any]], federation: Any, source: str) -> None:
    """Reject two defences that would both replace local training, or both the aggregation,
    and a training-stage defence with racecar training (``federation``: the raw
    ``[federation]`` table)."""
    seen: dict[str, int] = {}
    for i, entry in enumerate(defences):
        stage = _stage(entry["name"], entry["params"])
        if stage not in REPLACING_STAGES:
            continue
        if stage in seen:
            raise ScenarioError(
                source,
                ("defences", i),
                f"only one defence may act at stage {stage!r}; defences[{seen[stage]}] "
                "already does",
            )
        seen[stage] = i
    racecar = isinstance(federation, dict) and federation.get("training") == "racecar"
    if racecar and "training" in seen:
        i = seen["training"]
        raise ScenarioError(
            source,
            ("federation", "training"),
            f"racecar training cannot be combined with defences[{i}] "
            f"({defences[i]['name']}), which runs the clients' training itself",
        )
