"""The Flower ClientApp: train on the private shard, defend the upload, reply;
score reconstructions of its own batch on request.

A train reply (:class:`~fedsim.federation.protocol.TrainReply`) carries the
defended upload, the example count and local steps, and every defence's
measurements that may leave the client (from the ``training``-stage defence,
if any, and the ``upload``-stage ones). While a client defence with a formal
guarantee acts, the batch size (under Poisson sampling, the realised size) and
the training loss stay on the client, and so do the measurements that would
reveal the data or the noise drawn
(:meth:`~fedsim.federation.defence_stages.ClientDefences.report`). The true
batch goes along (simulation only) when the server asks for it
(``share_truth``); it is used to score reconstructions and never reaches an
attack.

Under secure aggregation the train instruction comes in SecAgg+'s masking stage,
the reply leaves masked (:mod:`fedsim.federation.secure_client`), and a train
message outside the protocol is refused: the update never leaves in clear.

The messages are defined in :mod:`fedsim.federation.protocol`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import MutableMapping
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from fedsim.api import LocalTraining
from fedsim.federation import protocol
from fedsim.federation.defence_stages import ClientDefences
from fedsim.federation.protocol import (
    DefenceReport,
    PartitionReply,
    ScoreQuery,
    ScoreReply,
    TrainInstruction,
    TrainReply,
    Truth,
)
from fedsim.federation.secure_client import masking_mod
from fedsim.federation.threads import torch_threads
from fedsim.metrics import pair_scores
from fedsim.models.allowed import check_allowed
from fedsim.privacy.noise import ENGINE_NOISE, NoiseSource, noise_generator
from fedsim.scenario import Scenario
from fedsim.scenario.secure_aggregation import secure_sum
from fedsim.training.local import fedsgd_positions, train_locally
from fedsim.training.objective import training_objective
from fedsim.trial_inputs import derive_seed, federated_data, model_factory


def round_generator(scenario: Scenario, partition_id: int, server_round: int) -> torch.Generator:
    """The generator of client ``partition_id``'s sampling in ``server_round``."""
    return torch.Generator().manual_seed(
        derive_seed(scenario.seed, "batch", server_round, partition_id)
    )


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
) -> tuple[TrainReply, Truth]:
    """One client's round: the reply to ``train`` (without truth or state) and the
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
    reports: list[DefenceReport] = []
    if trainer is not None:
        result = trainer.defence.train(task)
        reports.append(defences.report(trainer, result.measurements))
    else:
        objective = training_objective(fed, model, data.input_shape)
        result = train_locally(task, objective)
    x, y = result.batch
    update, measured = defences.defend_upload(result.update, server_round, partition_id)
    if defence_state is not None:
        defences.save_state(defence_state)
    guarded = defences.guarded
    return TrainReply(
        partition_id=partition_id,
        update=update,
        num_examples=result.num_examples,
        local_steps=result.steps,
        batch_size=None if guarded else len(y) if fed.protocol == "fedsgd" else len(labels),
        train_loss=None if guarded else result.loss,
        defences=tuple(reports + measured),
    ), (x, y)


DEFENCE_STATE_KEY = "fedsim-defences"
"""Key of the ConfigRecord in ``Context.state`` holding the client's defence state."""


def load_defence_state(context: Context) -> dict[str, Any]:
    """The defence state this client saved in an earlier round (empty at first)."""
    if DEFENCE_STATE_KEY not in context.state.config_records:
        return {}
    return protocol.state_of(context.state.config_records[DEFENCE_STATE_KEY])


def save_defence_state(context: Context, state: dict[str, Any]) -> None:
    """Keep ``state`` in ``Context.state``, which Flower hands back next round."""
    context.state.config_records[DEFENCE_STATE_KEY] = protocol.state_record(state)


def _partition(to: protocol.Addressee, context: Context, simulated: bool) -> int:
    """The partition a message is for; on a real node it must be the node's own."""
    if simulated:
        return to.partition_id
    own = node_partition(context)
    if to.partition_id != own:
        raise ValueError(f"this node holds partition {own}, not {to.partition_id}")
    return own


def node_partition(context: Context) -> int:
    """The partition a real node holds: its ``--node-config partition-id``."""
    return int(context.node_config["partition-id"])


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
    noise = ENGINE_NOISE["simulation" if simulated else "deployment"]

    @app.train(mods=[masking_mod(noise)])
    def train(msg: Message, context: Context) -> Message:
        instruction = TrainInstruction.from_message(msg)
        partition = _partition(instruction.to, context, simulated)
        defence_state = (
            dict(instruction.client_state or {}) if simulated else load_defence_state(context)
        )
        scenario = instruction.to.scenario
        if not simulated:  # the server chose this model: build it only if the node allows it
            check_allowed(scenario.model.name, context.node_config)
        if instruction.share_truth and not simulated:
            raise PermissionError(
                "this client does not send its data; score reconstructions on the client"
            )
        secure = secure_sum(scenario)
        if secure is not None and protocol.secagg_stage(msg) is None:
            raise PermissionError(
                "this scenario aggregates securely: the update leaves only masked, in a "
                "SecAgg+ round"
            )
        with torch_threads(scenario.threads):
            reply, batch = local_update(
                scenario,
                partition,
                instruction.to.server_round,
                instruction.parameters,
                defence_state,
                noise,
            )
        if not simulated:
            save_defence_state(context, defence_state)
        reply = dataclasses.replace(
            reply,
            truth=batch if instruction.share_truth else None,
            client_state=defence_state if simulated else None,
        )
        content = (
            reply.to_content()
            if secure is None
            else reply.to_masked_content(secure.weight(reply.num_examples))
        )
        return Message(content=content, reply_to=msg)

    @app.query(protocol.PARTITION_QUERY_ACTION)
    def partition(msg: Message, context: Context) -> Message:
        return Message(PartitionReply(node_partition(context)).to_content(), reply_to=msg)

    @app.query(protocol.SCORE_QUERY_ACTION)
    def score(msg: Message, context: Context) -> Message:
        query = ScoreQuery.from_message(msg)
        scenario = query.to.scenario
        x, y, _ = training_batch(
            scenario, _partition(query.to, context, simulated), query.to.server_round
        )
        with torch_threads(scenario.threads):
            scores = pair_scores(x, y, query.images, query.labels)
        return Message(ScoreReply(scores).to_content(), reply_to=msg)

    return app
