"""The scenario's defences at run time: which one acts where, and their state between rounds.

On a client: at most one ``training``-stage defence replaces plain local
training, then the ``upload``-stage defences transform the upload in the
scenario's order. On the server: at most one ``aggregate``-stage defence
replaces FedAvg's weighted mean. A client defence's state (e.g. an
accountant's history) is restored from, and saved back to, a JSON-able
mapping that the ClientApp keeps in Flower's ``Context.state``.

Defences draw their randomness (noise, Poisson sampling) from generators
seeded by the scenario's seed in simulation (``seeded``: runs are
reproducible, and anyone who knows the scenario could replay the noise), and
from the OS entropy of the process that adds it on the deployment engine
(``os-entropy``): nothing the server knows, or receives, determines a client's
noise, and nothing a client receives (the scenario travels with every message)
determines the server's.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fedsim.api import CLIENT_STAGES, Defence, Update
from fedsim.federation.protocol import DefenceReport
from fedsim.privacy.noise import NoiseSource, noise_generator, weighted_mean
from fedsim.registry import instantiate_defence
from fedsim.scenario import Scenario
from fedsim.scenario.secure_aggregation import secure_sum, sum_privacy
from fedsim.trial_inputs import derive_seed


@dataclass(frozen=True)
class ActiveDefence:
    """A scenario's ``defences[index]``, instantiated."""

    index: int
    defence: Defence[Any]

    def report(self, measurements: Mapping[str, float]) -> DefenceReport:
        """``measurements`` as this defence's report; NaN values are dropped
        (infinities stay: ``epsilon = inf`` means noise-free, no guarantee)."""
        return DefenceReport.finite_or_inf(self.index, measurements)


def active_defences(scenario: Scenario, stages: Sequence[str]) -> list[ActiveDefence]:
    """The scenario's defences acting at one of ``stages``, in scenario order."""
    found = []
    for index, config in enumerate(scenario.defences):
        defence = instantiate_defence(config.name, config.params)
        if defence.stage in stages:
            found.append(ActiveDefence(index, defence))
    return found


class ClientDefences:
    """One client's defences for one round, their state restored from ``state``.

    ``noise`` chooses their randomness: ``seeded`` (simulation) or ``os-entropy``
    (deployment). While a defence with a formal guarantee acts (:attr:`guarded`),
    only what :meth:`report` lets through of the measurements leaves the client.
    Under secure aggregation an upload defence's report also gives its ε against
    the server, which sees only the sum (:func:`~fedsim.scenario.secure_aggregation.sum_privacy`).
    """

    def __init__(
        self, scenario: Scenario, state: Mapping[str, Any], noise: NoiseSource = "seeded"
    ) -> None:
        self.scenario = scenario
        self.noise = noise
        self.active = active_defences(scenario, CLIENT_STAGES)
        for item in self.active:
            if str(item.index) in state:
                item.defence.load_state_dict(state[str(item.index)])
        self._acting = sorted(self.active, key=lambda a: a.defence.stage != "training")
        """The defences in the order they act: the trainer, then the uploads' in order."""
        secure = secure_sum(scenario)
        self._summed_by = None if secure is None else secure.protocol.reconstruction_threshold
        """The fewest uploads in the sum the server sees, under secure aggregation."""

    @property
    def trainer(self) -> ActiveDefence | None:
        """The ``training``-stage defence, if the scenario has one."""
        return next((a for a in self.active if a.defence.stage == "training"), None)

    @property
    def guarded(self) -> bool:
        """Whether a client defence with a formal guarantee acts: then no statistic of
        the private data (training loss, realised batch size, norms) leaves the client."""
        return any(a.defence.formal_guarantee for a in self.active)

    def report(self, item: ActiveDefence, measured: Mapping[str, float]) -> DefenceReport:
        """The measurements of ``item`` that leave the client.

        Unguarded: all of them. Guarded: a formal defence's
        :attr:`~fedsim.api.Defence.public_measurements` only; nothing from a
        defence acting before the first formal one (it measured the raw update);
        all from one acting after it (they describe a private release, and
        post-processing keeps the guarantee).
        """
        formal = [i for i, a in enumerate(self._acting) if a.defence.formal_guarantee]
        if not formal or self._acting.index(item) > formal[0]:
            return item.report(measured)
        if item.defence.formal_guarantee:
            public = item.defence.public_measurements
            return item.report({k: v for k, v in measured.items() if k in public})
        return item.report({})

    def defend_upload(
        self, update: Update, server_round: int, partition_id: int
    ) -> tuple[Update, list[DefenceReport]]:
        """Apply the ``upload``-stage defences in order; returns the upload and, in
        that order, the measurements that may leave the client (:meth:`report`, and
        under secure aggregation the ε of the sum, which depends only on the
        defence's parameters and accountant)."""
        reports: list[DefenceReport] = []
        for item in self.active:
            if item.defence.stage != "upload":
                continue
            seeded = torch.Generator().manual_seed(
                derive_seed(self.scenario.seed, "defence", item.index, server_round, partition_id)
            )
            update, measured = item.defence.apply(update, noise_generator(self.noise, seeded))
            report = self.report(item, measured)
            if self._summed_by is not None:
                summed = sum_privacy(item.defence, self._summed_by)
                report = DefenceReport(item.index, {**report.values, **summed})
            reports.append(report)
        return update, reports

    def save_state(self, state: MutableMapping[str, Any]) -> None:
        """Write every defence's state into ``state`` (keyed by defence index)."""
        for item in self.active:
            saved = item.defence.state_dict()
            if saved:
                state[str(item.index)] = saved


class ServerAggregation:
    """FedAvg's weighted mean, or the scenario's ``aggregate``-stage defence (one
    instance for the whole federation, so its accountant spans every round), its
    noise from ``noise``: on the deployment engine, OS entropy, since every client
    receives the scenario and its seed."""

    def __init__(self, scenario: Scenario, noise: NoiseSource) -> None:
        self.scenario, self.noise = scenario, noise
        central = active_defences(scenario, ("aggregate",))
        self.central = central[0] if central else None

    def __call__(
        self, server_round: int, updates: Sequence[Update], weights: Sequence[float]
    ) -> tuple[Update, list[DefenceReport]]:
        """The round's aggregate and the aggregate defence's measurements (none
        without an aggregate defence)."""
        if self.central is None:
            return weighted_mean(updates, weights), []
        seeded = torch.Generator().manual_seed(
            derive_seed(self.scenario.seed, "defence", self.central.index, server_round, "server")
        )
        aggregate, measured = self.central.defence.aggregate(
            updates, weights, noise_generator(self.noise, seeded)
        )
        return aggregate, [self.central.report(measured)]
