"""The audit of a scenario: one report per distinct model among its sweep points."""

from __future__ import annotations

import json
from typing import Any

import torch

from fedsim.analytic.chain import UnsupportedModel
from fedsim.analytic.rank import RankError
from fedsim.audit.cm import Method, ScenarioAudit, audit_model
from fedsim.data.source import DataError
from fedsim.scenario import ScenarioError, Trial
from fedsim.trial_inputs import federated_data, model_factory


def _point_label(trial: Trial) -> str:
    return ", ".join(f"{k}={v}" for k, v in trial.point.items() if k.startswith("model.")) or "-"


def audit_scenario(
    trials: list[Trial], source: str, method: Method | None = None
) -> list[ScenarioAudit]:
    """Audit each distinct model of ``trials`` (the parameters of round 1, as the
    scenario builds them) on client 0's first training sample.

    Raises:
        ScenarioError: the model cannot be built or is unsupported, a rank does not fit
            the memory budget, or the data cannot be loaded (one line).
    """
    seen: dict[str, ScenarioAudit] = {}
    for trial in trials:
        scenario = trial.scenario
        key = (
            scenario.model.model_dump_json() + scenario.data.model_dump_json() + str(scenario.seed)
        )
        if key in seen:
            continue
        where = ("audit",) if scenario.audit is not None else ("model",)
        chosen: Method = method or (scenario.audit.method if scenario.audit else "structured")
        try:
            data = federated_data(scenario)
        except (DataError, ValueError) as exc:
            raise ScenarioError(source, ("data",), str(exc)) from None
        x, y = data.shards[0].batch(torch.tensor([0]))
        sample = (
            f"client 0's first training sample ({scenario.data.dataset}, class "
            f"{data.test.class_names[int(y[0])]!r})"
        )
        try:
            model = model_factory(scenario, data)()
        except ValueError as exc:  # an import path, kwargs or input shape that does not fit
            raise ScenarioError(source, ("model",), str(exc)) from None
        config = scenario.model
        description = config.name + (f" {config.preset}" if config.preset else "")
        description += f" ({config.activation}"
        description += (
            f", output {config.output_activation})" if config.output_activation != "none" else ")"
        )
        try:
            report = audit_model(model, data.input_shape, (x, y), sample, chosen, description)
        except (UnsupportedModel, RankError) as exc:
            raise ScenarioError(source, where, str(exc)) from None
        seen[key] = ScenarioAudit(point=_point_label(trial), **dict(report))
    return list(seen.values())


def audits_json(audits: list[ScenarioAudit]) -> str:
    """One audit as a JSON object; several (a sweep over models) as a list of them."""
    payload: Any = (
        audits[0].model_dump(mode="json")
        if len(audits) == 1
        else [a.model_dump(mode="json") for a in audits]
    )
    return json.dumps(payload, indent=1)
