"""The Flower ClientApp: train on the private shard, defend the upload, reply;
score reconstructions of its own batch on request.

A train reply's ``RecordDict`` holds:

- ``update`` (ArrayRecord): the defended upload, keyed by parameter name —
  the gradient (``fedsgd``) or the weight delta θ_after − θ_before (``fedavg``);
- ``metrics`` (MetricRecord): ``num-examples``, ``partition-id``,
  ``local-steps``, ``batch-size``, ``train-loss`` and every defence's
  measurements as ``defence<i>.<key>``;
- ``truth`` (ArrayRecord, simulation only): the client's real batch, sent only
  when the server's config says ``share-truth``; it is used to score
  reconstructions and never reaches an attack.

The other messages are described in :mod:`fedsim.federation.protocol`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.api import Update
from fedsim.federation import protocol
from fedsim.federation.setup import derive_seed, federated_data, model_factory
from fedsim.metrics import pair_scores
from fedsim.registry import discover
from fedsim.scenario import Scenario


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


def training_batch(
    scenario: Scenario, partition_id: int, server_round: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """The samples client ``partition_id`` trains on in ``server_round``: the seeded
    batch (``fedsgd``) or the whole shard (``fedavg``), as ``(B, C, H, W)`` images in
    [0, 1] and ``(B,)`` labels, with the generator that then orders FedAvg's epochs.

    Deterministic in (seed, round, partition), so the client can re-derive its
    batch later to score a reconstruction of it.
    """
    shard = federated_data(scenario).shards[partition_id]
    fed = scenario.federation
    generator = torch.Generator().manual_seed(
        derive_seed(scenario.seed, "batch", server_round, partition_id)
    )
    if fed.protocol == "fedavg":
        x, y = shard.batch(torch.arange(len(shard.labels)))
        return x, y, generator
    if fed.batch_size > len(shard.labels):
        raise ValueError(
            f"batch_size {fed.batch_size} exceeds client {partition_id}'s "
            f"{len(shard.labels)} samples"
        )
    x, y = shard.batch(torch.randperm(len(shard.labels), generator=generator)[: fed.batch_size])
    return x, y, generator


def local_update(
    scenario: Scenario, partition_id: int, server_round: int, state: ArrayRecord
) -> tuple[Update, dict[str, float], tuple[torch.Tensor, torch.Tensor]]:
    """One client's round: returns the defended upload, metrics, and the true batch."""
    fed = scenario.federation
    model = model_factory(scenario, federated_data(scenario))()
    model.load_state_dict(state.to_torch_state_dict())
    model.train()
    x, y, generator = training_batch(scenario, partition_id, server_round)
    if fed.protocol == "fedsgd":
        update, loss = _fedsgd(model, x, y)
        steps = 1
    else:
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


def _partition(config: ConfigRecord, context: Context, simulated: bool) -> int:
    """The partition a message is for; on a real node it must be the node's own."""
    requested = int(config[protocol.PARTITION_ID])  # type: ignore[arg-type]
    if simulated:
        return requested
    own = int(context.node_config["partition-id"])
    if requested != own:
        raise ValueError(f"this node holds partition {own}, not {requested}")
    return own


def make_client_app(simulated: bool) -> ClientApp:
    """fedsim's ClientApp; its scenario and round come with every message.

    Args:
        simulated: ``True`` in Flower's simulation engine as ``fedsim run``
            drives it: nodes are interchangeable stand-ins, each message names the
            partition to act as, and the client sends its true batch when asked
            (``share-truth`` scoring). ``False`` on real machines: the node acts
            only as its own ``--node-config partition-id``, and its batch never
            leaves it (a ``share-truth`` request fails); reconstructions are scored
            here through ``query.score``.
    """
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = msg.content["config"]
        partition = _partition(config, context, simulated)
        update, metrics, (x, y) = local_update(
            protocol.scenario_of(config),
            partition,
            int(config[protocol.SERVER_ROUND]),  # type: ignore[arg-type]
            msg.content["arrays"],
        )
        content = RecordDict(
            {
                "update": ArrayRecord.from_torch_state_dict(update),
                "metrics": MetricRecord(metrics),
            }
        )
        if bool(config.get(protocol.SHARE_TRUTH, False)):
            if not simulated:
                raise PermissionError(
                    "this client does not send its data; score reconstructions on the client"
                )
            content["truth"] = ArrayRecord.from_torch_state_dict({"images": x, "labels": y})
        return Message(content=content, reply_to=msg)

    @app.query("partition")
    def partition(msg: Message, context: Context) -> Message:
        own = int(context.node_config["partition-id"])
        return Message(RecordDict({"metrics": MetricRecord({"partition-id": own})}), reply_to=msg)

    @app.query("score")
    def score(msg: Message, context: Context) -> Message:
        config = msg.content["config"]
        x, y, _ = training_batch(
            protocol.scenario_of(config),
            _partition(config, context, simulated),
            int(config[protocol.SERVER_ROUND]),  # type: ignore[arg-type]
        )
        images, labels = protocol.reconstruction_of(msg.content["reconstruction"])
        scores = pair_scores(x, y, images, labels)
        return Message(RecordDict({"scores": protocol.scores_record(scores)}), reply_to=msg)

    return app
