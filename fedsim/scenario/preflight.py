"""Scenario checks that need the data, the model or the machine, run before anything
is written.

:func:`preflight` loads each distinct data split and builds its model once, so that a
scenario whose data, model, checkpoint, training or defences do not fit, or (in the
simulation engine) whose clients this machine could not schedule, is refused with a
:class:`~fedsim.scenario.ScenarioError` before a run directory exists. The checks that
need none of these (keys, values, plugin names and parameters, threat models, defence
stages) run when the scenario is loaded (:mod:`fedsim.scenario`).

Not imported by :mod:`fedsim.scenario` itself: it builds data and models, which sit
above the scenario's definition.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from fedsim.data.source import DataError
from fedsim.models.checkpoint import CheckpointError, load_checkpoint
from fedsim.registry import instantiate_defence
from fedsim.scenario import Scenario, ScenarioError, Trial
from fedsim.scenario.secure_aggregation import largest_examples, secure_sum
from fedsim.training.racecar import UnsupportedModel, check_racecar_model, layer_weights
from fedsim.trial_inputs import federated_data, model_factory


def preflight(
    trials: list[Trial], source: str, engine: Literal["simulation", "deployment"]
) -> None:
    """Load each distinct data split and build the model once, and in the ``simulation``
    engine check the clients' resources, so that errors come before any directory is
    created."""
    seen: set[str] = set()
    for trial in trials:
        scenario = trial.scenario
        if engine == "simulation":
            check_resources(scenario, source)
        key = (
            scenario.data.model_dump_json()
            + scenario.model.model_dump_json()
            + str((scenario.federation.num_clients, scenario.seed))
            + scenario.federation.training
            + scenario.federation.racecar.model_dump_json()
        )
        if key in seen:
            continue
        seen.add(key)
        try:
            data = federated_data(scenario)
        except (DataError, ValueError) as exc:
            raise ScenarioError(source, ("data",), str(exc)) from None
        try:
            model = model_factory(scenario, data)()
        except (ValueError, TypeError) as exc:
            raise ScenarioError(source, ("model",), str(exc)) from None
        if scenario.model.checkpoint is not None:
            try:
                load_checkpoint(model, scenario.model.checkpoint.expanduser())
            except CheckpointError as exc:
                raise ScenarioError(source, ("model", "checkpoint"), str(exc)) from None
        _check_training(scenario, model, data.input_shape, source)
        for i, config in enumerate(scenario.defences):
            reason = instantiate_defence(config.name, config.params).supports(model)
            if reason:
                raise ScenarioError(source, ("defences", i), reason)
        if len(data.test.labels) == 0:
            raise ScenarioError(
                source,
                ("data", "test_fraction"),
                "leaves the test split empty; raise it or use more samples per class",
            )
        fed = scenario.federation
        smallest = min(data.shards.sizes())
        if fed.protocol == "fedsgd" and fed.batch_size > smallest:
            raise ScenarioError(
                source,
                ("federation", "batch_size"),
                f"{fed.batch_size} exceeds the smallest client shard ({smallest} samples)",
            )
    for trial in trials:
        _check_secure_weights(trial.scenario, source)


def _check_secure_weights(scenario: Scenario, source: str) -> None:
    """Secure aggregation's ``max_weight``, when set, must not be below a client's weight
    (SecAgg+ would clip that client's weighted update, and its sum may overflow)."""
    secure = secure_sum(scenario)
    if secure is None or secure.uniform or secure.protocol.max_weight is None:
        return
    largest = largest_examples(scenario, federated_data(scenario).shards.sizes())
    if secure.protocol.max_weight < largest:
        raise ScenarioError(
            source,
            ("defences", secure.index, "max_weight"),
            f"{secure.protocol.max_weight:g} is below the {largest} examples a client weighs "
            "with: SecAgg+ would clip its weighted update",
        )


def check_resources(scenario: Scenario, source: str) -> None:
    """Raise a one-line :class:`ScenarioError` if no client could be scheduled in the
    simulation engine (more CPU cores or GPUs per client than it may use)."""
    sim = scenario.simulation
    if sim.client_cpus > scenario.engine_cpus():
        raise ScenarioError(
            source,
            ("simulation", "client_cpus"),
            f"{sim.client_cpus:g} exceeds the {scenario.engine_cpus()} cores the engine may use",
        )
    gpus = torch.cuda.device_count()
    if sim.client_gpus > gpus:
        raise ScenarioError(
            source,
            ("simulation", "client_gpus"),
            f"{sim.client_gpus:g} GPUs per client, but {gpus} CUDA GPUs are visible",
        )


def _check_training(
    scenario: Scenario, model: nn.Module, input_shape: tuple[int, int, int], source: str
) -> None:
    """Racecar training needs a conv/linear chain and one λ per layer (or a single one)."""
    fed = scenario.federation
    if fed.training != "racecar":
        return
    try:
        layers = check_racecar_model(model, input_shape)
    except UnsupportedModel as exc:
        raise ScenarioError(source, ("model",), f"racecar training: {exc}") from None
    try:
        layer_weights(fed.racecar.lambdas, layers)
    except ValueError as exc:
        raise ScenarioError(source, ("federation", "racecar", "lambdas"), str(exc)) from None
