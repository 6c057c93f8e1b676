"""ε of repeated Gaussian releases, by Flower's RDP accountant.

:class:`GaussianAccountant` wraps ``flwr.serverapp.RdpAccountant`` (Google's
``dp-accounting`` underneath, Flower's ``[dp]`` extra) for the releases a
clip-and-noise defence makes: one Gaussian mechanism per round, composed
without amplification by sampling (the only model Flower's fixed-clipping
accounting supports, and the conservative one). Its state is JSON-serialisable
so that a client can keep it between rounds in Flower's ``Context.state``.
"""

from __future__ import annotations

import math
from typing import Any

from flwr.serverapp import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    RdpAccountant,
    SamplingMethod,
)


class GaussianAccountant:
    """Composes Gaussian releases and reports the ε spent at ``delta``.

    A release with noise multiplier ``z`` is a Gaussian mechanism whose noise
    std is ``z`` times the L2 sensitivity of what is released. A release with
    ``z = 0`` (no noise) makes ε infinite from then on.

    The state is the count of releases per noise multiplier; :meth:`epsilon` composes
    each multiplier once with its count in a fresh Flower accountant (RDP composes
    additively, so this is the same ε as one composition per release), which keeps
    a client's per-round cost flat: restoring Flower's own state replays every
    release ever made (a fifth of a client's round after 40 rounds).
    """

    def __init__(self, delta: float) -> None:
        self.delta = delta
        self._config = PrivacyConfig(
            target_delta=delta,
            population_size=1,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
        self._counts: dict[float, int] = {}
        self._noiseless = 0

    @property
    def releases(self) -> int:
        """Number of releases composed so far (noiseless ones included)."""
        return sum(self._counts.values()) + self._noiseless

    def release(self, noise_multiplier: float) -> None:
        """Compose one Gaussian release with this noise multiplier (≥ 0)."""
        if noise_multiplier <= 0:
            self._noiseless += 1
            return
        self._counts[noise_multiplier] = self._counts.get(noise_multiplier, 0) + 1

    def epsilon(self) -> float:
        """ε spent so far at :attr:`delta` (0 before any release, ``inf`` after a noiseless one)."""
        if self._noiseless:
            return math.inf
        if not self._counts:
            return 0.0
        rdp = RdpAccountant(self._config)
        for noise_multiplier, count in self._counts.items():
            rdp.compose(GaussianPrivacyEvent(noise_multiplier, 1, 1), count)
        return rdp.get_epsilon(self.delta)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable: ``{"releases": [[z, count], ...], "noiseless": n}``."""
        return {"releases": [[z, n] for z, n in self._counts.items()], "noiseless": self._noiseless}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._counts = {float(z): int(n) for z, n in state["releases"]}
        self._noiseless = int(state["noiseless"])
