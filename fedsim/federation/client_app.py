"""The Flower ClientApp: train on the private shard, defend the upload, reply.

A reply's ``RecordDict`` holds:

- ``update`` (ArrayRecord): the defended upload, keyed by parameter name —
  the gradient (``fedsgd``) or the weight delta θ_after − θ_before (``fedavg``);
- ``metrics`` (MetricRecord): ``num-examples``, ``partition-id``,
  ``local-steps``, ``batch-size``, ``train-loss`` and every defence's
  measurements as ``defence<i>.<key>``;
- ``truth`` (ArrayRecord, simulation only): the client's real batch, sent only
  when the server's config says ``share-truth``; it is used to score
  reconstructions and never reaches an attack.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.api import Update
from fedsim.federation.setup import derive_seed, federated_data, model_factory
from fedsim.registry import discover
from fedsim.scenario import Scenario

ScenarioSource = Callable[[Context], Scenario]


def _fedsgd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[Update, float]:
    loss = F.cross_entropy(model(x), y)
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(loss, params)
    return {n: g.detach() for n, g in zip(names, grads, strict=True)}, loss.item()


def _fedavg(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
) -> tuple[Update, float, int]:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    steps, loss_sum = 0, 0.0
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            steps += 1
            loss_sum += loss.item()
    delta = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    return delta, loss_sum / steps, steps


def local_update(
    scenario: Scenario, partition_id: int, server_round: int, state: ArrayRecord
) -> tuple[Update, dict[str, float], tuple[torch.Tensor, torch.Tensor]]:
    """One client's round: returns the defended upload, metrics, and the true batch."""
    data = federated_data(scenario)
    shard = data.shards[partition_id]
    fed = scenario.federation
    model = model_factory(scenario, data)()
    model.load_state_dict(state.to_torch_state_dict())
    model.train()
    generator = torch.Generator().manual_seed(
        derive_seed(scenario.seed, "batch", server_round, partition_id)
    )
    if fed.protocol == "fedsgd":
        if fed.batch_size > len(shard.labels):
            raise ValueError(
                f"batch_size {fed.batch_size} exceeds client {partition_id}'s "
                f"{len(shard.labels)} samples"
            )
        idx = torch.randperm(len(shard.labels), generator=generator)[: fed.batch_size]
        x, y = shard.batch(idx)
        update, loss = _fedsgd(model, x, y)
        steps = 1
    else:
        x, y = shard.batch(torch.arange(len(shard.labels)))
        update, loss, steps = _fedavg(
            model,
            x,
            y,
            lr=fed.lr,
            epochs=fed.local_epochs,
            batch_size=fed.batch_size,
            generator=generator,
        )
    metrics: dict[str, float] = {
        "num-examples": len(y),
        "partition-id": partition_id,
        "local-steps": steps,
        "batch-size": fed.batch_size if fed.protocol == "fedsgd" else len(y),
        "train-loss": loss,
    }
    plugins = discover().defences
    for i, config in enumerate(scenario.defences):
        defence = plugins[config.name](plugins[config.name].Params(**config.params))
        noise = torch.Generator().manual_seed(
            derive_seed(scenario.seed, "defence", i, server_round, partition_id)
        )
        update, measured = defence.apply(update, noise)
        metrics.update({f"defence{i}.{k}": v for k, v in measured.items() if math.isfinite(v)})
    return update, metrics, (x, y)


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
        update, metrics, (x, y) = local_update(
            scenario,
            int(context.node_config["partition-id"]),
            int(config["server-round"]),
            msg.content["arrays"],
        )
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
