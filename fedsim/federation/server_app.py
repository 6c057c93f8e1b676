"""The Flower ServerApp: seeded client sampling, aggregation, and the attack tap.

The strategy subclasses Flower's ``FedAvg`` and overrides two steps:
``configure_train`` (sample ``clients_per_round`` clients with a seeded RNG
and remember the parameters they start from) and ``aggregate_train`` (split
ground truth off every reply, average the uploads — or let the scenario's
``aggregate``-stage defence combine them — apply the result, and hand the
round to the :class:`~fedsim.federation.observer.AttackTap`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedsim.api import Update
from fedsim.federation.defences import ServerAggregation
from fedsim.federation.observer import AttackTap, ClientUpload
from fedsim.federation.setup import FederatedData, ModelFactory, derive_seed
from fedsim.models.start import start_model
from fedsim.scenario import Scenario

RoundHook = Callable[[int, float], None]
"""Called after each round's central evaluation with (round, test accuracy)."""


def partition_nodes(grid: Grid, num_clients: int, timeout: float = 600.0) -> dict[int, int]:
    """Ask every node for its partition id; returns partition id → node id.

    Sampling by partition id (not by Flower's random node ids) makes the same
    seed pick the same clients, and so the same batches, in every sweep point.
    """
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {num_clients} clients connected")
        time.sleep(0.2)
    queries = [
        Message(
            RecordDict({"config": ConfigRecord()}), dst_node_id=n, message_type=MessageType.QUERY
        )
        for n in nodes
    ]
    found = {}
    for reply in grid.send_and_receive(queries, timeout=timeout):
        if not reply.has_error():
            found[int(reply.content["metrics"]["partition-id"])] = reply.metadata.src_node_id
    if len(found) < num_clients:
        raise RuntimeError(f"only {len(found)} of {num_clients} clients reported a partition id")
    return found


class AttackedFedAvg(FedAvg):
    """FedSGD/FedAvg whose every round is observed by the configured attackers."""

    def __init__(
        self, scenario: Scenario, tap: AttackTap, failures: Callable[[int, list[str]], None]
    ) -> None:
        fed = scenario.federation
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=fed.clients_per_round,
            min_available_nodes=fed.num_clients,
        )
        self.scenario, self.tap, self.failures = scenario, tap, failures
        self.aggregation = ServerAggregation(scenario)
        self._start: Update = {}
        self._nodes: dict[int, int] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if not self._nodes:
            self._nodes = partition_nodes(grid, self.scenario.federation.num_clients)
        rng = random.Random(derive_seed(self.scenario.seed, "sample", server_round))
        partitions = rng.sample(sorted(self._nodes), self.scenario.federation.clients_per_round)
        chosen = [self._nodes[p] for p in sorted(partitions)]
        self._start = {k: v.clone() for k, v in arrays.to_torch_state_dict().items()}
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, chosen, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        errors = [
            f"node {m.metadata.src_node_id}: {m.error.reason}" for m in replies if m.has_error()
        ]
        if errors:
            self.failures(server_round, errors)
        uploads = [_upload(m) for m in replies if not m.has_error()]
        if not uploads:
            return None, None
        aggregate, aggregate_measurements = self.aggregation(
            server_round, [u.update for u in uploads], [u.num_examples for u in uploads]
        )
        fed = self.scenario.federation
        step = -fed.lr if fed.protocol == "fedsgd" else 1.0
        new_state = {
            k: v + step * aggregate[k] if k in aggregate else v for k, v in self._start.items()
        }
        self.tap.on_round(server_round, self._start, uploads, aggregate, aggregate_measurements)
        loss = sum(u.metrics["train-loss"] * u.num_examples for u in uploads) / sum(
            u.num_examples for u in uploads
        )
        return ArrayRecord.from_torch_state_dict(new_state), MetricRecord(
            {"train-loss": loss, "clients": len(uploads)}
        )


def _upload(message: Message) -> ClientUpload:
    content = message.content
    metrics = {k: float(v) for k, v in content["metrics"].items()}  # type: ignore[arg-type]
    truth = None
    if "truth" in content.array_records:
        t = content["truth"].to_torch_state_dict()
        truth = (t["images"], t["labels"])
    return ClientUpload(
        client=int(metrics["partition-id"]),
        update=dict(content["update"].to_torch_state_dict()),
        num_examples=int(metrics["num-examples"]),
        batch_size=int(metrics["batch-size"]),
        local_steps=int(metrics["local-steps"]),
        metrics=metrics,
        truth=truth,
    )


def test_accuracy(
    factory: ModelFactory, data: FederatedData, state: dict[str, torch.Tensor]
) -> float:
    """Fraction of the held-out test split the model with ``state`` classifies correctly."""
    model = factory()
    model.load_state_dict(state)
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data.test.labels), 512):
            x, y = data.test.batch(torch.arange(start, min(start + 512, len(data.test.labels))))
            correct += int((F.softmax(model(x), dim=-1).argmax(-1) == y).sum())
    return correct / len(data.test.labels)


def make_server_app(
    scenario_source: Callable[[Context], Scenario],
    tap_source: Callable[[Context], AttackTap],
    on_accuracy: RoundHook,
    on_failures: Callable[[int, list[str]], None],
    share_truth: bool,
) -> ServerApp:
    """A ServerApp running the scenario's federation with its attack tap."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        scenario = scenario_source(context)
        tap = tap_source(context)
        strategy = AttackedFedAvg(scenario, tap, on_failures)

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            accuracy = test_accuracy(tap.factory, tap.data, arrays.to_torch_state_dict())
            on_accuracy(server_round, accuracy)
            return MetricRecord({"accuracy": accuracy})

        model, start_info = start_model(
            tap.factory,
            scenario.model,
            tap.data.test,
            derive_seed(scenario.seed, "pretrain"),
        )
        tap.store.set_trial_info(tap.trial.index, "model_start", start_info)
        strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord.from_torch_state_dict(model.state_dict()),
            num_rounds=scenario.federation.rounds,
            train_config=ConfigRecord({"share-truth": share_truth}),
            evaluate_fn=evaluate,
        )

    return app
