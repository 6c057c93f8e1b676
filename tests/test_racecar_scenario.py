"""Racecar training as the clients' regime: the upload, and the scenario's one-line refusals."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from fedsim_plugins.idlg import IDLG
from flwr.app import ArrayRecord

from fedsim.api import Observation
from fedsim.federation.client_app import local_update
from fedsim.inversion.matching import MatchingParams
from fedsim.metrics import score_batch
from fedsim.scenario import Scenario, ScenarioError, expand
from fedsim.scenario.preflight import preflight
from fedsim.training.objective import known_regulariser
from fedsim.training.racecar import RacecarTerm
from fedsim.trial_inputs import federated_data, model_factory


def _raw(**federation: Any) -> dict[str, Any]:
    return {
        "data": {"dataset": "digits", "image_size": 16, "max_samples": 200},
        "model": {"name": "lenet", "activation": "sigmoid"},
        "federation": {"num_clients": 4, **federation},
    }


def _scenario(**federation: Any) -> Scenario:
    return expand(_raw(**federation), "test")[0].scenario


@pytest.mark.parametrize("variant", ["full", "layerwise"])
def test_racecar_fedsgd_upload_is_the_gradient_of_the_racecar_objective(variant: str) -> None:
    racecar = {"variant": variant, "lambdas": [0.5, 0.1, 0.1, 0.1]}
    scenario = _scenario(protocol="fedsgd", batch_size=3, training="racecar", racecar=racecar)
    model = model_factory(scenario, federated_data(scenario))()
    state = ArrayRecord.from_torch_state_dict(model.state_dict())
    reply, (x, y) = local_update(scenario, 1, 1, state)
    update = reply.update
    loss = RacecarTerm(model, (1, 16, 16), variant, racecar["lambdas"]).objective(x, y)  # type: ignore[arg-type]
    expected = torch.autograd.grad(loss, list(model.parameters()))
    for (name, _), grad in zip(model.named_parameters(), expected, strict=True):
        torch.testing.assert_close(update[name], grad)
    assert reply.train_loss == pytest.approx(loss.item(), rel=1e-5)
    standard, _ = local_update(_scenario(protocol="fedsgd", batch_size=3), 1, 1, state)
    assert not torch.allclose(standard.update["body.0.weight"], update["body.0.weight"])


def test_racecar_fedavg_trains_locally() -> None:
    scenario = _scenario(protocol="fedavg", batch_size=8, lr=0.05, training="racecar")
    model = model_factory(scenario, federated_data(scenario))()
    state = ArrayRecord.from_torch_state_dict(model.state_dict())
    reply, _ = local_update(scenario, 0, 1, state)
    assert reply.local_steps > 1
    assert all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in reply.update.values())


def test_racecar_with_dp_sgd_is_refused_in_one_line() -> None:
    raw = {**_raw(training="racecar"), "defences": [{"name": "dp_sgd"}]}
    with pytest.raises(ScenarioError) as info:
        expand(raw, "s.toml")
    assert str(info.value) == (
        "s.toml: federation.training: racecar training cannot be combined with defences[0] "
        "(dp_sgd), which runs the clients' training itself"
    )


def test_racecar_model_and_lambdas_are_checked_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trials = expand(_raw(training="racecar", racecar={"lambdas": [1, 1]}), "s.toml")
    with pytest.raises(ScenarioError, match=r"federation\.racecar\.lambdas: lambdas has 2 entries"):
        preflight(trials, "s.toml", "simulation")
    (tmp_path / "pooled_models.py").write_text(
        "from analytic_helpers import Pooled\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    raw = {
        "data": {"dataset": "photos", "image_size": 8, "classes": ["chelsea", "rocket"],
                 "test_fraction": 0.5},
        "model": {"name": "pooled_models:Pooled"},
        "federation": {"num_clients": 2, "training": "racecar"},
    }  # fmt: skip
    with pytest.raises(ScenarioError) as info:
        preflight(expand(raw, "s.toml"), "s.toml", "simulation")
    assert str(info.value) == (
        "s.toml: model: racecar training: unsupported layer 'pool' (MaxPool2d): pooling"
    )


def test_gradient_matching_with_the_known_racecar_term_recovers_a_racecar_upload() -> None:
    """The server sets the training plan, so it can simulate the racecar term too: iDLG
    then inverts a racecar upload; modelling cross-entropy alone it does not."""
    raw = _raw(protocol="fedsgd", batch_size=1, training="racecar", racecar={"lambdas": 0.05})
    raw["model"] = {"name": "convnet", "layers": [[3, 4, 1]], "activation": "tanh"}
    raw["data"]["image_size"] = 8
    scenario = expand(raw, "test")[0].scenario
    data = federated_data(scenario)
    factory = model_factory(scenario, data)
    model = factory()
    start = dict(model.state_dict())
    reply, (x, y) = local_update(scenario, 0, 1, ArrayRecord.from_torch_state_dict(start))
    update = reply.update
    known = known_regulariser(scenario.federation, data.input_shape)
    observation = Observation(
        position="server", round=1, client_id=0, model_factory=factory, parameters=start,
        update=update, kind="gradient", input_shape=data.input_shape,
        num_classes=data.num_classes, batch_size=1, lr=0.1, local_steps=1,
        device=torch.device("cpu"), seed=0, training_regulariser=known,
    )  # fmt: skip
    attack = IDLG(MatchingParams(iterations=200, init="uniform"))
    psnr = {}
    for name, seen in (
        ("known", observation),
        ("unknown", replace(observation, training_regulariser=None)),
    ):
        result = attack.reconstruct(seen)
        assert result.images is not None
        psnr[name] = score_batch(x, y, result.images, None)[0].psnr
    print(psnr)
    assert psnr["known"] > 40
    assert psnr["unknown"] < psnr["known"] - 15
