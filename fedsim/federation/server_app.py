"""The Flower ServerApp's federation: seeded client sampling, aggregation, the attack tap.

The strategy subclasses Flower's ``FedAvg`` and overrides two steps:
``configure_train`` (sample ``clients_per_round`` clients with a seeded RNG,
route them to nodes, remember the parameters they start from) and
``aggregate_train`` (record failed and timed-out clients and what the
replies carried, split ground truth off every reply, average the uploads —
or let the scenario's ``aggregate``-stage defence combine them — apply the
result, and hand the round to the :class:`~fedsim.federation.observer.AttackTap`).

:func:`run_federation` runs one trial on a Flower ``Grid``; the ServerApps of
the simulation (``runner.py``) and of the deployment engine (``deployment.py``)
both call it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim.api import Update
from fedsim.federation import protocol
from fedsim.federation.defences import ServerAggregation
from fedsim.federation.nodes import NodePlacement, error_summary
from fedsim.federation.observer import AttackTap, ClientUpload, Progress
from fedsim.federation.scoring import OnClientScorer, Scorer, ScoringMode, SharedTruthScorer
from fedsim.federation.threads import torch_threads
from fedsim.federation.trial_inputs import (
    FederatedData,
    ModelFactory,
    derive_seed,
    federated_data,
    model_factory,
    resolve_device,
)
from fedsim.models.checkpoint import start_model
from fedsim.privacy.noise import NoiseSource
from fedsim.results.store import ResultsStore
from fedsim.scenario import Scenario, Trial


@dataclass(frozen=True)
class ClientFailure:
    """A sampled client whose round produced no upload; the round went on without it."""

    round: int
    client: int
    kind: Literal["error", "timeout"]
    error: str


class AttackedFedAvg(FedAvg):
    """FedSGD/FedAvg whose every round is observed by the configured attackers."""

    def __init__(
        self,
        scenario: Scenario,
        tap: AttackTap,
        nodes: NodePlacement,
        failures: Callable[[list[ClientFailure]], None],
        sent: Callable[[set[str]], None],
        noise: NoiseSource,
    ) -> None:
        """``failures`` receives each round's failed clients; ``sent`` the names of what
        the round's train replies carried (:func:`reply_contents`); ``noise`` is where the
        aggregate defence draws its noise from."""
        fed = scenario.federation
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=fed.clients_per_round,
            min_available_nodes=fed.clients_per_round,
        )
        self.scenario, self.tap, self.nodes, self.failures = scenario, tap, nodes, failures
        self.report_sent = sent
        self.scenario_json = scenario.model_dump_json()
        self.aggregation = ServerAggregation(scenario, noise)
        self._start: Update = {}
        self._sent: dict[int, int] = {}
        self._client_state: dict[int, str] = {}
        """Each partition's state across rounds (JSON), kept for stand-in nodes."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        fed = self.scenario.federation
        rng = random.Random(derive_seed(self.scenario.seed, "sample", server_round))
        partitions = sorted(rng.sample(range(fed.num_clients), fed.clients_per_round))
        route = self.nodes.nodes_for(grid, partitions)
        self._sent = {route[p]: p for p in partitions}
        self._start = {k: v.clone() for k, v in arrays.to_torch_state_dict().items()}
        return [
            Message(
                RecordDict(
                    {
                        self.arrayrecord_key: arrays,
                        self.configrecord_key: ConfigRecord(
                            {
                                **config,
                                **protocol.message_config(self.scenario_json, server_round, p),
                                **self._state_for(p),
                            }
                        ),
                    }
                ),
                dst_node_id=route[p],
                message_type=MessageType.TRAIN,
            )
            for p in partitions
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        failures = self._failures(server_round, replies)
        if failures:
            self.failures(failures)
        answered = [m for m in replies if not m.has_error()]
        self.report_sent(set().union(*(reply_contents(m) for m in answered)))
        uploads = [_upload(m) for m in answered]
        if self.nodes.stand_ins:
            for m in replies:
                if not m.has_error() and protocol.CLIENT_STATE in m.content.config_records:
                    partition = self._sent[m.metadata.src_node_id]
                    state = m.content.config_records[protocol.CLIENT_STATE]["json"]
                    self._client_state[partition] = str(state)
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
        summary: dict[str, float] = {"clients": len(uploads)}
        reported = [u for u in uploads if "train-loss" in u.metrics]
        if reported:  # none under a client-side formal guarantee
            summary["train-loss"] = sum(
                u.metrics["train-loss"] * u.num_examples for u in reported
            ) / sum(u.num_examples for u in reported)
        return ArrayRecord.from_torch_state_dict(new_state), MetricRecord(summary)

    def _state_for(self, partition: int) -> dict[str, str]:
        """The ``client-state`` entry of ``partition``'s train config (stand-in nodes only)."""
        if not self.nodes.stand_ins:
            return {}
        return {protocol.CLIENT_STATE: self._client_state.get(partition, "{}")}

    def _failures(self, server_round: int, replies: list[Message]) -> list[ClientFailure]:
        """Error replies, and sampled clients with no reply within ``round_timeout``."""
        failures = [
            ClientFailure(
                server_round,
                self._sent[m.metadata.src_node_id],
                "error",
                error_summary(m.error.reason),
            )
            for m in replies
            if m.has_error()
        ]
        answered = {m.metadata.src_node_id for m in replies}
        timeout = self.scenario.federation.round_timeout
        failures += [
            ClientFailure(server_round, p, "timeout", f"no reply within {timeout:g} s")
            for node, p in self._sent.items()
            if node not in answered
        ]
        return sorted(failures, key=lambda f: f.client)


def reply_contents(message: Message) -> set[str]:
    """The names of what a reply carried: its records' names and its metrics' keys."""
    content = message.content
    names = set(content)
    for record in content.metric_records.values():
        names.update(record)
    return names


def _upload(message: Message) -> ClientUpload:
    """The server's view of a train reply. Without ``batch-size`` (a client under a
    formal guarantee keeps its realised batch size), the batch size taken is
    ``num-examples``: the expected size of a Poisson-sampled batch."""
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
        batch_size=int(metrics.get("batch-size", metrics["num-examples"])),
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


def run_federation(
    grid: Grid,
    trial: Trial,
    store: ResultsStore,
    run_dir: Path,
    nodes: NodePlacement,
    scoring: ScoringMode,
    progress: Progress,
) -> None:
    """Run ``trial``'s federation on ``grid``: rounds, central test accuracy, attacks.

    Accuracy, client failures and scored attack records land in ``store`` as
    rounds finish; ``progress`` receives one-line notes.
    """
    scenario = trial.scenario
    fed = scenario.federation
    data = federated_data(scenario)
    factory = model_factory(scenario, data)
    scorer: Scorer = (
        SharedTruthScorer()
        if scoring == "shared-truth"
        else OnClientScorer(grid, nodes, scenario.model_dump_json(), fed.round_timeout)
    )
    device = resolve_device(scenario.device)
    tap = AttackTap(trial, data, factory, store, run_dir, device, scorer, progress)

    def on_failures(failures: list[ClientFailure]) -> None:
        store.add_client_failures(trial.index, [asdict(f) for f in failures])
        progress(f"round {failures[0].round}: {len(failures)} client(s) failed")

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        accuracy = test_accuracy(factory, data, arrays.to_torch_state_dict())
        store.set_accuracy(trial.index, server_round, accuracy)
        if server_round:
            progress(f"round {server_round}/{fed.rounds} done, test accuracy {accuracy:.3f}")
        return MetricRecord({"accuracy": accuracy})

    with torch_threads(scenario.threads):
        model, start_info = start_model(
            factory, scenario.model, data.test, derive_seed(scenario.seed, "pretrain")
        )
        store.set_trial_info(trial.index, "model_start", start_info)
        AttackedFedAvg(
            scenario,
            tap,
            nodes,
            on_failures,
            lambda names: store.add_client_sent(trial.index, names),
            store.client_noise,
        ).start(
            grid=grid,
            initial_arrays=ArrayRecord.from_torch_state_dict(model.state_dict()),
            num_rounds=fed.rounds,
            timeout=fed.round_timeout,
            train_config=ConfigRecord({protocol.SHARE_TRUTH: scoring == "shared-truth"}),
            evaluate_fn=evaluate,
        )
