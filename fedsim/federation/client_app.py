"""The Flower ClientApp: train on the private shard, defend the upload, reply.

A reply's ``RecordDict`` holds:

- ``update`` (ArrayRecord): the defended upload, keyed by parameter name —
  the gradient (``fedsgd``) or the weight delta θ_after − θ_before (``fedavg``);
- ``metrics`` (MetricRecord): ``num-examples``, ``partition-id``,
  ``local-steps``, ``batch-size``, ``train-loss`` and every defence's
  measurements as ``defence<i>.<key>`` (from the ``training``-stage defence,
  if any, and the ``upload``-stage ones);
- ``truth`` (ArrayRecord, simulation only): the client's real batch, sent only
  when the server's config says ``share-truth``; it is used to score
  reconstructions and never reaches an attack.
"""

from __future__ import annotations

import json
from collections.abc import Callable, MutableMapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.api import LocalTraining, TrainingResult, Update
from fedsim.federation.defences import ClientDefences
from fedsim.federation.setup import derive_seed, federated_data, model_factory
from fedsim.scenario import Scenario
from fedsim.training.objective import Objective, training_objective

ScenarioSource = Callable[[Context], Scenario]


def _fedsgd(task: LocalTraining, objective: Objective) -> TrainingResult:
    n = len(task.labels)
    if task.batch_size > n:
        raise ValueError(f"batch_size {task.batch_size} exceeds the client's {n} samples")
    idx = torch.randperm(n, generator=task.generator)[: task.batch_size]
    x, y = task.images[idx], task.labels[idx]
    loss = objective(x, y)
    names, params = zip(*task.model.named_parameters(), strict=True)
    grads = torch.autograd.grad(loss, params)
    gradient = {n: g.detach() for n, g in zip(names, grads, strict=True)}
    return TrainingResult(gradient, loss.item(), 1, (x, y), len(y))


def _fedavg(task: LocalTraining, objective: Objective) -> TrainingResult:
    model, x, y = task.model, task.images, task.labels
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=task.lr)
    steps, loss_sum = 0, 0.0
    for _ in range(task.epochs):
        order = torch.randperm(len(y), generator=task.generator)
        for start in range(0, len(y), task.batch_size):
            idx = order[start : start + task.batch_size]
            optimizer.zero_grad()
            loss = objective(x[idx], y[idx])
            loss.backward()
            optimizer.step()
            steps += 1
            loss_sum += loss.item()
    delta = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    return TrainingResult(delta, loss_sum / steps, steps, (x, y), len(y))


def local_update(
    scenario: Scenario,
    partition_id: int,
    server_round: int,
    state: ArrayRecord,
    defence_state: MutableMapping[str, Any] | None = None,
) -> tuple[Update, dict[str, float], tuple[torch.Tensor, torch.Tensor]]:
    """One client's round: returns the defended upload, metrics, and the true batch.

    ``defence_state`` carries the client's defences' state (e.g. an accountant's
    history) from one round to the next; it is read and updated in place.
    """
    data = federated_data(scenario)
    shard = data.shards[partition_id]
    fed = scenario.federation
    model = model_factory(scenario, data)()
    model.load_state_dict(state.to_torch_state_dict())
    model.train()
    generator = torch.Generator().manual_seed(
        derive_seed(scenario.seed, "batch", server_round, partition_id)
    )
    images, labels = shard.batch(torch.arange(len(shard.labels)))
    task = LocalTraining(
        model, images, labels, fed.protocol, fed.batch_size, fed.lr, fed.local_epochs, generator
    )
    defences = ClientDefences(scenario, defence_state if defence_state is not None else {})
    trainer = defences.trainer
    if trainer is not None:
        result = trainer.defence.train(task)
        result.measurements = trainer.prefixed(result.measurements)
    else:
        objective = training_objective(fed, model, data.input_shape)
        result = (_fedsgd if fed.protocol == "fedsgd" else _fedavg)(task, objective)
    x, y = result.batch
    metrics: dict[str, float] = {
        "num-examples": result.num_examples,
        "partition-id": partition_id,
        "local-steps": result.steps,
        "batch-size": len(y) if fed.protocol == "fedsgd" else len(labels),
        "train-loss": result.loss,
        **result.measurements,
    }
    update, measured = defences.defend_upload(result.update, server_round, partition_id)
    metrics.update(measured)
    if defence_state is not None:
        defences.save_state(defence_state)
    return update, metrics, (x, y)


DEFENCE_STATE_KEY = "fedsim-defences"
"""Key of the ConfigRecord in ``Context.state`` holding the client's defence state (JSON)."""


def load_defence_state(context: Context) -> dict[str, Any]:
    """The defence state this client saved in an earlier round (empty at first)."""
    if DEFENCE_STATE_KEY not in context.state.config_records:
        return {}
    return json.loads(str(context.state.config_records[DEFENCE_STATE_KEY]["json"]))


def save_defence_state(context: Context, state: dict[str, Any]) -> None:
    """Keep ``state`` in ``Context.state``, which Flower hands back next round."""
    context.state.config_records[DEFENCE_STATE_KEY] = ConfigRecord({"json": json.dumps(state)})


def make_client_app(scenario_source: ScenarioSource) -> ClientApp:
    """A ClientApp whose scenario comes from ``scenario_source(context)``.

    Its partition is ``context.node_config["partition-id"]`` (set by Flower's
    simulation engine, or by ``--node-config`` on a SuperNode).
    """
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        scenario = scenario_source(context)
        config = msg.content["config"]
        defence_state = load_defence_state(context)
        update, metrics, (x, y) = local_update(
            scenario,
            int(context.node_config["partition-id"]),
            int(config["server-round"]),
            msg.content["arrays"],
            defence_state,
        )
        save_defence_state(context, defence_state)
        content = RecordDict(
            {
                "update": ArrayRecord.from_torch_state_dict(update),
                "metrics": MetricRecord(metrics),
            }
        )
        if bool(config.get("share-truth", False)):
            content["truth"] = ArrayRecord.from_torch_state_dict({"images": x, "labels": y})
        return Message(content=content, reply_to=msg)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        return Message(
            RecordDict({"metrics": MetricRecord({"partition-id": partition})}), reply_to=msg
        )

    return app
