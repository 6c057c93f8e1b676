"""Secure aggregation in a scenario: whether the clients mask their uploads, with which
protocol, how they are weighted, and what the masked sum adds to a client's privacy.

Shared by both sides; the ClientApp's mod is in
:mod:`~fedsim.federation.secure_client`, the ServerApp's round in
:mod:`~fedsim.federation.secure_server`.

**Weights.** SecAgg+ sums each client's update times its weight and the weights
themselves, and the server divides: FedAvg's weighted mean by example counts.
While a client defence with a formal guarantee acts, every client weighs 1
instead (the uniform mean, as central DP-FedAvg takes it), so that every
client's noise counts the same in the sum.

**Distributed DP** (:func:`sum_privacy`). A client that clips its update and adds
N(0, σ²) noise before masking is, alone, a Gaussian mechanism with noise
multiplier z_c (σ over its sensitivity). The server sees only the sum of at
least t = ``reconstruction_threshold`` such uploads (fewer, and it cannot unmask
it), which carries at least t independent noises, N(0, tσ²), while one client's
data still moves it by the same sensitivity: multiplier z_c·√t. The ε of the
sum composes the client's releases at z_c·√t, under the same neighbouring
relation as its own ε. This assumes that no client colludes with the server (a
colluder's noise is known to it and does not count), that the clients' noise
is unknown to the server (in simulation it is seeded from the scenario), and
treats the sum as exactly Gaussian, whereas SecAgg+'s clipping to [−c, c],
stochastic rounding and modular sum make it only approximately so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedsim.api import CLIENT_STAGES, Defence, SecureAggregation
from fedsim.privacy.accounting import GaussianAccountant
from fedsim.registry import discover, instantiate_defence
from fedsim.scenario import Scenario
from fedsim.scenario.checks import defence_stage


@dataclass(frozen=True)
class SecureSum:
    """The scenario's secure aggregation: ``defences[index]``, its protocol for the
    federation's ``clients_per_round``, and whether every client weighs 1 (``uniform``)."""

    index: int
    protocol: SecureAggregation
    uniform: bool

    def weight(self, num_examples: int) -> int:
        """A client's weight in the sum: its example count, or 1 when ``uniform``."""
        return 1 if self.uniform else num_examples

    def max_weight(self, largest: int) -> float:
        """The protocol's ``max_weight``: 1 when ``uniform``, else the defence's own,
        else ``largest`` (:func:`largest_examples`)."""
        if self.uniform:
            return 1.0
        return float(largest) if self.protocol.max_weight is None else self.protocol.max_weight


def secure_sum(scenario: Scenario) -> SecureSum | None:
    """The scenario's ``secure_aggregation``-stage defence, resolved; ``None`` without one.

    Raises:
        ValueError: the defence's protocol cannot run with the federation's
            ``clients_per_round`` (scenario validation refuses such scenarios).
    """
    stages = [defence_stage(c.name, c.params) for c in scenario.defences]
    if "secure_aggregation" not in stages:
        return None
    index = stages.index("secure_aggregation")
    known = discover().defences
    uniform = any(
        stage in CLIENT_STAGES and c.name in known and known[c.name].formal_guarantee
        for c, stage in zip(scenario.defences, stages, strict=True)
    )
    config = scenario.defences[index]
    defence = instantiate_defence(config.name, config.params)
    protocol = defence.secure_aggregation(scenario.federation.clients_per_round)
    return SecureSum(index, protocol, uniform)


def largest_examples(scenario: Scenario, shard_sizes: Sequence[int]) -> int:
    """The largest example count a client reports: the batch size (``fedsgd``) or the
    largest shard (``fedavg``)."""
    fed = scenario.federation
    return fed.batch_size if fed.protocol == "fedsgd" else max(shard_sizes)


def sum_privacy(defence: Defence[Any], contributors: int) -> dict[str, float]:
    """ε (``epsilon_sum``, at ``delta_sum``) of ``defence``'s releases so far against an
    observer who sees only the sum of at least ``contributors`` clients' uploads.

    Applies to an ``upload``-stage defence keeping a
    :class:`~fedsim.privacy.accounting.GaussianAccountant` as ``accountant``, one
    release per upload (``dp_gaussian`` on the client); every release's noise
    multiplier is taken √``contributors`` times larger (see the module). Any other
    defence: ``{}``.
    """
    accountant = getattr(defence, "accountant", None)
    if defence.stage != "upload" or not isinstance(accountant, GaussianAccountant):
        return {}
    state = accountant.state_dict()
    scale = math.sqrt(contributors)
    summed = GaussianAccountant(accountant.delta)
    summed.load_state_dict(
        {
            "releases": [[z * scale, count] for z, count in state["releases"]],
            "noiseless": state["noiseless"],
        }
    )
    return {"epsilon_sum": summed.epsilon(), "delta_sum": summed.delta}
