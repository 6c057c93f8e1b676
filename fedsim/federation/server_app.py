"""The Flower ServerApp's federation: seeded client sampling, aggregation, the attacks.

The strategy subclasses Flower's ``FedAvg`` and overrides two steps:
``configure_train`` (sample ``clients_per_round`` clients with a seeded RNG,
route them to nodes, remember the parameters they start from) and
``aggregate_train`` (record failed and timed-out clients and what the
replies carried, split ground truth off every reply, average the uploads —
or let the scenario's ``aggregate``-stage defence combine them — apply the
result (:class:`~fedsim.federation.server_step.ServerStep`), and hand the
round to the :class:`~fedsim.federation.observer.RoundAttacker`).

Under secure aggregation the strategy's grid is a
:class:`~fedsim.federation.secure_server.SecAggPlusGrid`: the train instructions
go out in a SecAgg+ round, and ``aggregate_train`` gets the unmasked mean with
the clear metadata of the uploads in it, never an upload itself.

:func:`run_federation` runs one trial on a Flower ``Grid``; the ServerApps of
the simulation (``runner.py``) and of the deployment engine (``deployment.py``)
both call it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, MetricRecordValues
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim.api import Update
from fedsim.federation import protocol
from fedsim.federation.defence_stages import ServerAggregation
from fedsim.federation.nodes import NodePlacement, error_summary
from fedsim.federation.observer import RoundAttacker
from fedsim.federation.progress import ClientsFailed, Progress, RoundDone
from fedsim.federation.protocol import Addressee, DefenceReport, TrainInstruction, TrainReply
from fedsim.federation.scoring import OnClientScorer, Scorer, ScoringMode, SharedTruthScorer
from fedsim.federation.secure_server import SecAggPlusGrid, round_report
from fedsim.federation.server_step import ServerStep
from fedsim.federation.threads import torch_threads
from fedsim.models.checkpoint import start_model
from fedsim.privacy.noise import NoiseSource
from fedsim.results.schema import FailedClient
from fedsim.results.store import ResultsStore
from fedsim.scenario import Scenario, Trial
from fedsim.scenario.secure_aggregation import largest_examples, secure_sum
from fedsim.trial_inputs import (
    FederatedData,
    ModelFactory,
    derive_seed,
    federated_data,
    model_factory,
    resolve_device,
)

Combined = tuple[list[TrainReply], Update, list[DefenceReport]]
"""A round's uploads as the server holds them, their aggregate, and the measurements of
whatever combined them on the server."""


class AttackedFedAvg(FedAvg):
    """FedSGD/FedAvg whose every round is observed by the configured attackers."""

    def __init__(
        self,
        scenario: Scenario,
        attacker: RoundAttacker,
        nodes: NodePlacement,
        failures: Callable[[list[FailedClient]], None],
        sent: Callable[[set[str]], None],
        noise: NoiseSource,
        share_truth: bool,
        secure_grid: SecAggPlusGrid | None = None,
    ) -> None:
        """``failures`` receives each round's failed clients; ``sent`` the names of what
        the round's train replies carried (:func:`~fedsim.federation.protocol.reply_contents`);
        ``noise`` is where the aggregate defence draws its noise from; ``share_truth``
        asks the clients for their true batch; ``secure_grid``, the grid the strategy
        is started on under secure aggregation, hands over each round's outcome."""
        fed = scenario.federation
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=fed.clients_per_round,
            min_available_nodes=fed.clients_per_round,
            arrayrecord_key=protocol.ARRAYS,
            configrecord_key=protocol.CONFIG,
        )
        self.scenario, self.attacker, self.nodes = scenario, attacker, nodes
        self.failures, self.report_sent, self.share_truth = failures, sent, share_truth
        self.secure_grid = secure_grid
        self.scenario_json = scenario.model_dump_json()
        self.aggregation = ServerAggregation(scenario, noise)
        self.server_step = ServerStep(fed.protocol, fed.lr, fed.server_momentum)
        self._start: Update = {}
        self._sent: dict[int, int] = {}
        self._client_state: dict[int, dict[str, Any]] = {}
        """Each partition's state across rounds, kept for stand-in nodes."""

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
            TrainInstruction(
                Addressee(self.scenario_json, server_round, p),
                arrays,
                self.share_truth,
                self._client_state.get(p, {}) if self.nodes.stand_ins else None,
            ).to_message(route[p])
            for p in partitions
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        combined = (
            self._averaged(server_round, list(replies))
            if self.secure_grid is None
            else self._unmasked(server_round, self.secure_grid)
        )
        if combined is None:
            return None, None
        uploads, aggregate, aggregate_measurements = combined
        new_state = self.server_step(self._start, aggregate)
        self.attacker.on_round(
            server_round, self._start, uploads, aggregate, aggregate_measurements
        )
        summary: dict[str, MetricRecordValues] = {"clients": len(uploads)}
        losses = [(u.train_loss, u.num_examples) for u in uploads if u.train_loss is not None]
        if losses:  # none under a client-side formal guarantee or secure aggregation
            summary["train-loss"] = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
        return ArrayRecord.from_torch_state_dict(new_state), MetricRecord(summary)

    def _averaged(self, server_round: int, replies: list[Message]) -> Combined | None:
        """The uploads, their aggregate (FedAvg's mean or the aggregate defence's) and
        the aggregate defence's measurements; ``None`` when no upload came."""
        answered = [m for m in replies if not m.has_error()]
        uploads = self._received(
            self._failures(server_round, replies), answered, TrainReply.from_message
        )
        if not uploads:
            return None
        aggregate, measurements = self.aggregation(
            server_round, [u.update for u in uploads], [u.num_examples for u in uploads]
        )
        return uploads, aggregate, measurements

    def _unmasked(self, server_round: int, grid: SecAggPlusGrid) -> Combined | None:
        """The round's SecAgg+ outcome: the uploads in the sum (metadata only), their
        unmasked mean in the model's dtypes, and the protocol's measurements; ``None``
        when the protocol halted."""
        outcome = grid.take_round()
        failures = [
            FailedClient(
                round=server_round, client=self._sent[node], kind=why.kind, error=why.reason
            )
            for node, why in outcome.dropped.items()
        ]
        uploads = self._received(failures, outcome.replies, TrainReply.from_masked_message)
        if outcome.mean is None:
            return None
        aggregate = {
            k: torch.from_numpy(v).to(self._start[k].dtype) for k, v in outcome.mean.items()
        }
        return uploads, aggregate, [round_report(grid.secure, len(uploads), len(failures))]

    def _received(
        self,
        failures: list[FailedClient],
        answered: list[Message],
        read: Callable[[Message], TrainReply],
    ) -> list[TrainReply]:
        """Report the round's ``failures`` and what the ``answered`` replies carried,
        keep the state of stand-in nodes' partitions, and return the replies read."""
        if failures:
            self.failures(sorted(failures, key=lambda f: f.client))
        self.report_sent(set().union(*(protocol.reply_contents(m.content) for m in answered)))
        received = [(m.metadata.src_node_id, read(m)) for m in answered]
        if self.nodes.stand_ins:
            for node, reply in received:
                if reply.client_state is not None:
                    self._client_state[self._sent[node]] = reply.client_state
        return [reply for _, reply in received]

    def _failures(self, server_round: int, replies: list[Message]) -> list[FailedClient]:
        """Error replies, and sampled clients with no reply within ``round_timeout``."""
        failures = [
            FailedClient(
                round=server_round,
                client=self._sent[m.metadata.src_node_id],
                kind="error",
                error=error_summary(m.error.reason or ""),
            )
            for m in replies
            if m.has_error()
        ]
        answered = {m.metadata.src_node_id for m in replies}
        timeout = self.scenario.federation.round_timeout
        failures += [
            FailedClient(
                round=server_round, client=p, kind="timeout", error=f"no reply within {timeout:g} s"
            )
            for node, p in self._sent.items()
            if node not in answered
        ]
        return failures


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
    rounds finish; ``progress`` receives the run's events (a round done, an attack
    started, clients failed).
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
    attacker = RoundAttacker(trial, data, factory, store, run_dir, device, scorer, progress)

    def on_failures(failures: list[FailedClient]) -> None:
        store.add_client_failures(trial.index, failures)
        progress(ClientsFailed(failures[0].round, len(failures)))

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        accuracy = test_accuracy(factory, data, arrays.to_torch_state_dict())
        store.set_accuracy(trial.index, server_round, accuracy)
        if server_round:
            progress(RoundDone(server_round, fed.rounds, accuracy))
        return MetricRecord({"accuracy": accuracy})

    secure = secure_sum(scenario)
    secure_grid = (
        None
        if secure is None
        else SecAggPlusGrid(
            grid, secure, secure.max_weight(largest_examples(scenario, data.shards.sizes()))
        )
    )
    with torch_threads(scenario.threads):
        model, start_info = start_model(
            factory, scenario.model, data.shards.train, derive_seed(scenario.seed, "pretrain")
        )
        store.set_trial_info(trial.index, "model_start", start_info)
        AttackedFedAvg(
            scenario,
            attacker,
            nodes,
            on_failures,
            lambda names: store.add_client_sent(trial.index, names),
            store.client_noise,
            share_truth=scoring == "shared-truth",
            secure_grid=secure_grid,
        ).start(
            grid=grid if secure_grid is None else secure_grid,
            initial_arrays=ArrayRecord.from_torch_state_dict(model.state_dict()),
            num_rounds=fed.rounds,
            timeout=fed.round_timeout,
            evaluate_fn=evaluate,
        )
