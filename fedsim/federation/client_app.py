"""The Flower ClientApp: train on the private shard, defend the upload, reply;
score reconstructions of its own batch on request.

A train reply's ``RecordDict`` holds:

- ``update`` (ArrayRecord): the defended upload, keyed by parameter name —
  the gradient (``fedsgd``) or the weight delta θ_after − θ_before (``fedavg``);
- ``metrics`` (MetricRecord): ``num-examples``, ``partition-id``,
  ``local-steps``, ``batch-size``, ``train-loss`` and every defence's
  measurements as ``defence<i>.<key>`` (from the ``training``-stage defence,
  if any, and the ``upload``-stage ones). While a client defence with a
  formal guarantee acts, ``batch-size`` (under Poisson sampling, the realised
  size) and ``train-loss`` stay on the client, and so do the measurements
  that would reveal the data or the noise drawn
  (:meth:`~fedsim.federation.defences.ClientDefences.report`);
- ``truth`` (ArrayRecord, simulation only): the client's real batch, sent only
  when the server's config says ``share-truth``; it is used to score
  reconstructions and never reaches an attack.

The other messages are described in :mod:`fedsim.federation.protocol`.
"""

from __future__ import annotations

import json
from collections.abc import MutableMapping
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.api import LocalTraining, TrainingResult, Update
from fedsim.federation import protocol
from fedsim.federation.defences import ClientDefences
from fedsim.federation.threads import torch_threads
from fedsim.federation.trial_inputs import derive_seed, federated_data, model_factory
from fedsim.metrics import pair_scores
from fedsim.models.allowed import check_allowed
from fedsim.privacy.noise import ENGINE_NOISE, NoiseSource, noise_generator
from fedsim.scenario import Scenario
from fedsim.training.objective import Objective, training_objective


def round_generator(scenario: Scenario, partition_id: int, server_round: int) -> torch.Generator:
    """The generator of client ``partition_id``'s sampling in ``server_round``."""
    return torch.Generator().manual_seed(
        derive_seed(scenario.seed, "batch", server_round, partition_id)
    )


def fedsgd_positions(n: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Positions of a FedSGD batch among a shard of ``n`` samples (draws from ``generator``).

    Raises:
        ValueError: ``batch_size`` exceeds ``n``.
    """
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the client's {n} samples")
    return torch.randperm(n, generator=generator)[:batch_size]


def _fedsgd(task: LocalTraining, objective: Objective) -> TrainingResult:
    idx = fedsgd_positions(len(task.labels), task.batch_size, task.generator)
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
    generator = round_generator(scenario, partition_id, server_round)
    if fed.protocol == "fedavg":
        x, y = shard.batch(torch.arange(len(shard.labels)))
        return x, y, generator
    x, y = shard.batch(fedsgd_positions(len(shard.labels), fed.batch_size, generator))
    return x, y, generator


def local_update(
    scenario: Scenario,
    partition_id: int,
    server_round: int,
    state: ArrayRecord,
    defence_state: MutableMapping[str, Any] | None = None,
    noise: NoiseSource = "seeded",
) -> tuple[Update, dict[str, float], tuple[torch.Tensor, torch.Tensor]]:
    """One client's round: returns the defended upload, the reply's metrics, and the
    true batch.

    ``defence_state`` carries the client's defences' state (e.g. an accountant's
    history) from one round to the next; it is read and updated in place.
    ``noise`` is where the defences draw their randomness from (a
    ``training``-stage defence's sampling included).
    """
    data = federated_data(scenario)
    shard = data.shards[partition_id]
    fed = scenario.federation
    model = model_factory(scenario, data)()
    model.load_state_dict(state.to_torch_state_dict())
    model.train()
    images, labels = shard.batch(torch.arange(len(shard.labels)))
    defences = ClientDefences(scenario, defence_state if defence_state is not None else {}, noise)
    trainer = defences.trainer
    seeded = round_generator(scenario, partition_id, server_round)
    generator = seeded if trainer is None else noise_generator(noise, seeded)
    task = LocalTraining(
        model, images, labels, fed.protocol, fed.batch_size, fed.lr, fed.local_epochs, generator
    )
    if trainer is not None:
        result = trainer.defence.train(task)
        result.measurements = defences.report(trainer, result.measurements)
    else:
        objective = training_objective(fed, model, data.input_shape)
        result = (_fedsgd if fed.protocol == "fedsgd" else _fedavg)(task, objective)
    x, y = result.batch
    metrics: dict[str, float] = {
        "num-examples": result.num_examples,
        "partition-id": partition_id,
        "local-steps": result.steps,
    }
    if not defences.guarded:
        metrics["batch-size"] = len(y) if fed.protocol == "fedsgd" else len(labels)
        metrics["train-loss"] = result.loss
    metrics.update(result.measurements)
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
            (``share-truth`` scoring); defences draw ``seeded`` noise, so runs
            are reproducible. ``False`` on real machines: the node acts only as
            its own ``--node-config partition-id``, its batch never leaves it (a
            ``share-truth`` request fails), reconstructions are scored here
            through ``query.score``, defences draw their noise from the node's OS
            entropy (``os-entropy``), which the server cannot know, and it builds
            only the models the node allows (:mod:`fedsim.models.allowed`).
    """
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = msg.content["config"]
        partition = _partition(config, context, simulated)
        defence_state = (
            json.loads(str(config.get(protocol.CLIENT_STATE, "{}")))
            if simulated
            else load_defence_state(context)
        )
        scenario = protocol.scenario_of(config)
        if not simulated:  # the server chose this model: build it only if the node allows it
            check_allowed(scenario.model.name, context.node_config)
        with torch_threads(scenario.threads):
            update, metrics, (x, y) = local_update(
                scenario,
                partition,
                int(config[protocol.SERVER_ROUND]),  # type: ignore[arg-type]
                msg.content["arrays"],
                defence_state,
                ENGINE_NOISE["simulation" if simulated else "deployment"],
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
        if simulated:
            content[protocol.CLIENT_STATE] = ConfigRecord({"json": json.dumps(defence_state)})
        else:
            save_defence_state(context, defence_state)
        return Message(content=content, reply_to=msg)

    @app.query("partition")
    def partition(msg: Message, context: Context) -> Message:
        own = int(context.node_config["partition-id"])
        return Message(RecordDict({"metrics": MetricRecord({"partition-id": own})}), reply_to=msg)

    @app.query("score")
    def score(msg: Message, context: Context) -> Message:
        config = msg.content["config"]
        scenario = protocol.scenario_of(config)
        x, y, _ = training_batch(
            scenario,
            _partition(config, context, simulated),
            int(config[protocol.SERVER_ROUND]),  # type: ignore[arg-type]
        )
        images, labels = protocol.reconstruction_of(msg.content["reconstruction"])
        with torch_threads(scenario.threads):
            scores = pair_scores(x, y, images, labels)
        return Message(RecordDict({"scores": protocol.scores_record(scores)}), reply_to=msg)

    return app
