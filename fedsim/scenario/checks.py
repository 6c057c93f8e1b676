"""The scenario's checks across sections and plugins: what each attack needs of its
threat model, which defences may act together, and what secure aggregation can run
with. They run on every sweep point when the scenario is loaded; the checks that need
the data and the model run after (:mod:`fedsim.scenario.preflight`).

A plugin's parameters are validated by its ``Params``; what an attack needs and where a
defence acts are class-level answers (:meth:`Attack.knowledge_needed`,
:meth:`Defence.stage_for`), so no plugin is built here but a secure-aggregation
defence, to ask its protocol for the round's size.
"""

from __future__ import annotations

from typing import Any

from fedsim import registry
from fedsim.api import Stage, UpdateKind
from fedsim.scenario.errors import ScenarioError
from fedsim.scenario.model import Scenario
from fedsim.threat import knowledge_key, ordered


def defence_stage(name: str, params: dict[str, Any]) -> Stage:
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


MASK_MODULUS = 2**32
"""R: the modulus of the masks of Flower's SecAgg+ (its default); the round's quantised
uploads must sum below it."""

MIN_SECURE_CLIENTS = 3
"""The fewest clients per round secure aggregation hides an upload among: with two,
each client learns the other's update from the sum and its own."""


def check_secure_aggregation(scenario: Scenario, source: str) -> None:
    """Reject, under a ``secure_aggregation``-stage defence: an ``aggregate``-stage
    defence (it combines the individual uploads, which the server then never holds);
    fewer than :data:`MIN_SECURE_CLIENTS` clients per round; a protocol that does not
    fit the round's clients (the defence says why) or whose sum would reach
    :data:`MASK_MODULUS`; and attacks that need an individual upload at the server:
    a server attack choosing ``clients`` (its ``max_clients`` does not apply: it attacks
    the round's mean once), and a ``participant_client``, whose own upload fedsim would
    subtract at the server."""
    stages = [defence_stage(d.name, d.params) for d in scenario.defences]
    if "secure_aggregation" not in stages:
        return
    i = stages.index("secure_aggregation")
    secure = f"secure aggregation (defences[{i}])"
    if "aggregate" in stages:
        j = stages.index("aggregate")
        raise ScenarioError(
            source,
            ("defences", j),
            f"{scenario.defences[j].name} combines the individual uploads on the server, "
            f"which {secure} hides from it",
        )
    fed = scenario.federation
    if fed.clients_per_round < MIN_SECURE_CLIENTS:
        raise ScenarioError(
            source,
            ("federation", "clients_per_round"),
            f"{secure} needs at least {MIN_SECURE_CLIENTS} clients per round: with "
            f"{fed.clients_per_round}, a client's update follows from the sum",
        )
    config = scenario.defences[i]
    try:
        protocol = registry.instantiate_defence(config.name, config.params).secure_aggregation(
            fed.clients_per_round
        )
    except ValueError as exc:
        raise ScenarioError(source, ("defences", i), str(exc)) from None
    if fed.clients_per_round * protocol.quantization_range >= MASK_MODULUS:
        raise ScenarioError(
            source,
            ("federation", "clients_per_round"),
            f"{fed.clients_per_round} clients × quantization_range {protocol.quantization_range} "
            f"of {secure} reach the masks' modulus 2^32: the sum would overflow",
        )
    for k, attack in enumerate(scenario.attacks):
        if attack.clients is not None:
            reason, key = "the server sees only the round's sum, no client's upload", "clients"
        elif attack.participant_client is not None:
            reason = (
                "fedsim runs attacks at the server, which holds the participant's own upload "
                "only masked, so it cannot subtract it: attack the aggregate instead"
            )
            key = "participant_client"
        else:
            continue
        raise ScenarioError(source, ("attacks", k, key), f"under {secure}, {reason}")


REPLACING_STAGES = ("training", "aggregate", "secure_aggregation")
"""Stages whose defence replaces a step (local training, FedAvg's mean, the exchange of
uploads): one defence each."""


def check_defence_stages(defences: list[dict[str, Any]], federation: Any, source: str) -> None:
    """Reject two defences that would both replace local training, or both the aggregation,
    and a training-stage defence with racecar training (``federation``: the raw
    ``[federation]`` table)."""
    seen: dict[str, int] = {}
    for i, entry in enumerate(defences):
        stage = defence_stage(entry["name"], entry["params"])
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
