"""fedsim's ClientApp called directly: the simulation/deployment switch and on-client scoring."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedsim.federation.client_app import make_client_app, training_batch
from fedsim.federation.protocol import (
    Addressee,
    ScoreQuery,
    ScoreReply,
    TrainInstruction,
    TrainReply,
)
from fedsim.registry import registered_models
from fedsim.scenario import ModelConfig, Scenario, expand
from fedsim.trial_inputs import federated_data, model_factory

NODE_PARTITION = 1


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    """Flower's Message needs the identity a running Flower process would set."""
    saved = {k: getattr(TaskIdentity, f"_{k}", None) for k in ("task_id", "run_id", "node_id")}
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    for key, value in saved.items():
        setattr(TaskIdentity, f"_{key}", value)


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    raw = {
        "data": {"dataset": "digits", "image_size": 8, "max_samples": 100},
        "model": {"name": "convnet", "layers": [[3, 4, 2]], "activation": "tanh"},
        "federation": {"num_clients": 3, "batch_size": 2},
    }
    return expand(raw, "test")[0].scenario


def context() -> Context:
    return Context(
        run_id=1,
        node_id=5,
        node_config={"partition-id": NODE_PARTITION},
        state=RecordDict(),
        run_config={},
    )


def to(scenario: Scenario, partition: int) -> Addressee:
    return Addressee(scenario.model_dump_json(), 2, partition)


def instruction(
    scenario: Scenario,
    partition: int,
    share_truth: bool,
    client_state: dict[str, Any] | None = None,
) -> TrainInstruction:
    arrays = ArrayRecord.from_torch_state_dict(
        model_factory(scenario, federated_data(scenario))().state_dict()
    )
    return TrainInstruction(to(scenario, partition), arrays, share_truth, client_state)


def train_message(
    scenario: Scenario,
    partition: int,
    share_truth: bool,
    client_state: dict[str, Any] | None = None,
) -> Message:
    return instruction(scenario, partition, share_truth, client_state).to_message(5)


def test_simulated_client_acts_as_the_named_partition_and_shares_its_batch(
    scenario: Scenario,
) -> None:
    reply = TrainReply.from_message(
        make_client_app(simulated=True)(train_message(scenario, 2, True), context())
    )

    assert reply.partition_id == 2
    assert reply.truth is not None
    x, y, _ = training_batch(scenario, 2, 2)
    assert torch.equal(reply.truth[0], x) and torch.equal(reply.truth[1], y)


def test_deployed_client_keeps_its_batch_and_serves_only_its_partition(
    scenario: Scenario,
) -> None:
    app = make_client_app(simulated=False)

    reply = TrainReply.from_message(app(train_message(scenario, NODE_PARTITION, False), context()))
    assert reply.truth is None and reply.client_state is None
    assert reply.partition_id == NODE_PARTITION
    with pytest.raises(PermissionError, match="does not send its data"):
        app(train_message(scenario, NODE_PARTITION, True), context())
    with pytest.raises(ValueError, match="holds partition 1, not 2"):
        app(train_message(scenario, 2, False), context())


def test_client_scores_a_reconstruction_of_its_own_batch(scenario: Scenario) -> None:
    x, y, _ = training_batch(scenario, NODE_PARTITION, 2)
    # The reconstruction: the batch in reverse order, the second image perturbed,
    # and labels of which only the first is right.
    images = x.flip(0).clone()
    images[1] = (images[1] + 0.1).clamp(0, 1)
    labels = torch.stack([y[1], (y[0] + 1) % 10])
    query = ScoreQuery(to(scenario, NODE_PARTITION), images, labels)

    reply = make_client_app(simulated=False)(query.to_message(5), context())

    scores = ScoreReply.from_message(reply).scores
    assert len(reply.content) == 1 and not reply.content.metric_records  # numbers only
    (scored,) = reply.content.array_records.values()
    assert all(tuple(array.shape) == (2, 2) for array in scored.values())  # no images
    assert scores.mse.shape == scores.ssim.shape == (2, 2)
    assert scores.mse[1, 0] == 0.0 and scores.ssim[1, 0] == pytest.approx(1.0)
    assert 0.0 < scores.mse[0, 1] <= 0.01
    assert scores.label_equal is not None
    assert np.array_equal(np.diag(np.fliplr(scores.label_equal)), [False, True])


def test_client_state_follows_the_partition_across_stand_in_nodes(scenario: Scenario) -> None:
    """A local-DP client's accountant persists per partition: in simulation the state
    comes back in the reply and is handed to whichever stand-in node serves the
    partition next; on a real node it stays in ``Context.state``."""
    dp = scenario.model_copy(
        update={"defences": expand(
            {"defences": [{"name": "dp_gaussian", "clip_norm": 1.0, "noise_multiplier": 1.0}]},
            "test",
        )[0].scenario.defences}
    )  # fmt: skip

    def epsilon(reply: Message) -> float:
        (report,) = TrainReply.from_message(reply).defences
        assert report.index == 0
        return report.values["epsilon"]

    app = make_client_app(simulated=True)
    first = app(train_message(dp, 2, False, {}), context())
    state = TrainReply.from_message(first).client_state
    assert state
    # another node's context: the state travels
    second = app(train_message(dp, 2, False, state), context())
    fresh = app(train_message(dp, 2, False, {}), context())
    eps = [epsilon(r) for r in (first, second, fresh)]
    assert eps[1] > eps[0] and eps[2] == pytest.approx(eps[0])

    deployed, node = make_client_app(simulated=False), context()
    eps_node = [epsilon(deployed(train_message(dp, NODE_PARTITION, False), node)) for _ in range(2)]
    assert eps_node[1] > eps_node[0] == pytest.approx(eps[0])


SIDE_EFFECT_MODEL = """
import pathlib

from torch import nn

pathlib.Path(__file__).with_name("imported").touch()  # the side effect: proof the module ran


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))
"""


@pytest.fixture
def side_effect_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An importable module (1×8×8 images → 10 classes) that leaves a file when it runs."""
    name = f"fedsim_side_effect_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(SIDE_EFFECT_MODEL, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    registered_models.cache_clear()  # entry points the test adds under tmp_path are read
    yield name
    registered_models.cache_clear()
    sys.modules.pop(name, None)


def with_model(scenario: Scenario, name: str) -> Scenario:
    return scenario.model_copy(update={"model": ModelConfig(name=name)})


def deployed_context(**node_config: object) -> Context:
    ctx = context()
    ctx.node_config.update(node_config)
    return ctx


def test_deployed_client_refuses_a_model_the_node_does_not_allow(
    scenario: Scenario, side_effect_module: str, tmp_path: Path
) -> None:
    zoo = instruction(scenario, NODE_PARTITION, False)  # the arrays of the zoo model
    for name in (f"{side_effect_module}:Net", "this:Foo"):
        msg = dataclasses.replace(zoo, to=to(with_model(scenario, name), NODE_PARTITION))
        with pytest.raises(PermissionError, match=f"this node does not build model '{name}'"):
            make_client_app(simulated=False)(msg.to_message(5), deployed_context())

    assert side_effect_module not in sys.modules and "this" not in sys.modules
    assert not (tmp_path / "imported").exists()


def test_deployed_client_builds_a_model_its_node_config_allows(
    scenario: Scenario, side_effect_module: str
) -> None:
    user = with_model(scenario, f"{side_effect_module}:Net")
    ctx = deployed_context(**{"allow-models": f"other.module:Cnn, {side_effect_module}:Net"})

    reply = make_client_app(simulated=False)(train_message(user, NODE_PARTITION, False), ctx)

    assert set(TrainReply.from_message(reply).update) == {"fc.weight", "fc.bias"}


def test_deployed_client_builds_a_model_registered_by_an_entry_point(
    scenario: Scenario, side_effect_module: str, tmp_path: Path
) -> None:
    info = tmp_path / "fakemodels-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fakemodels\nVersion: 0.1\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        f"[fedsim.models]\nside = {side_effect_module}:Net\n", encoding="utf-8"
    )
    user = with_model(scenario, f"{side_effect_module}:Net")

    reply = make_client_app(simulated=False)(
        train_message(user, NODE_PARTITION, False), deployed_context()
    )

    assert set(TrainReply.from_message(reply).update) == {"fc.weight", "fc.bias"}
