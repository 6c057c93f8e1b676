"""Clip + Gaussian noise with an accountant (DP-FedAvg style), on the client or the server.

``placement = "client"`` (local DP): each client clips its update to L2 norm
``C`` and adds ``N(0, (z·C)²)`` before uploading. Any two datasets of a client
give clipped updates at most ``2C`` apart, so each upload is a Gaussian
mechanism with noise multiplier ``z / 2``; the client's accountant composes
one such release per round it takes part in and keeps its history in Flower's
``Context.state`` between rounds. ε protects the client's whole dataset
(client-level local DP) against the server and participants alike.

``placement = "server"`` (central DP, Flower's
``DifferentialPrivacyServerSideFixedClipping``): the server clips every upload
to ``C``, averages them uniformly and adds ``N(0, (z·C/m)²)`` to the mean of
``m`` uploads (the std of Flower's ``compute_stdv``). Adding or removing one client moves
the sum by at most ``C``, so each round is a Gaussian mechanism with
multiplier ``z``; ε (client-level central DP) holds for what leaves the
server, i.e. for participants, not against the server itself, which sees the
raw uploads.

Why not Flower's wrapper and mods themselves: fedsim's strategy
(``AttackedFedAvg``) overrides ``aggregate_train`` to hand each upload to the
round attacker, and Flower's accounted wrappers refuse any strategy whose
``aggregate_train`` is not FedAvg's; they clip ``reply − global weights``,
whereas fedsim's uploads are already gradients or deltas; and their noise
comes from NumPy's global random state. So this plugin follows Flower's flat
clipping rule (``fedsim.privacy.noise.clip_update``) and noise std, reuses its RDP
accountant (``fedsim.privacy.accounting.GaussianAccountant``) and draws the
noise from fedsim's generator (seeded from the scenario in simulation; from
the client's OS entropy on the deployment engine, so the server cannot replay
a client's noise).
Both placements account without amplification by sampling (as Flower's
fixed-clipping accounting does): ε is an upper bound.

With ``placement = "client"`` a reply carries only ``noise_std``, ``epsilon``
and ``delta`` of this defence's measurements: the norms before and after
clipping, whether it clipped, and the statistics of the noise drawn stay on
the client (so do the training loss and batch size; see
``fedsim.federation.client_app``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import Field

from fedsim.api import Defence, DefenceParams, Stage, Update
from fedsim.privacy.accounting import GaussianAccountant
from fedsim.privacy.noise import add_gaussian_noise, clip_update, weighted_mean


class DPGaussianParams(DefenceParams):
    clip_norm: float = Field(1.0, gt=0.0, description="C: L2 bound of each update")
    noise_multiplier: float = Field(
        1.0, ge=0.0, description="z: noise std z·C (client) or z·C/m on the mean of m (server)"
    )
    placement: Literal["client", "server"] = Field(
        "client", description="client: local DP on each upload; server: central DP on the mean"
    )
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="δ at which ε is reported")


class DPGaussian(Defence[DPGaussianParams]):
    name = "dp_gaussian"
    summary = (
        "Clips each update to C and adds Gaussian noise (z·C), on the client (local DP) or "
        "on the server's aggregate (central DP, z·C/m); RDP accountant (Flower) reports ε."
    )
    formal_guarantee = True
    public_measurements = frozenset({"noise_std", "epsilon", "delta"})
    stages = ("upload", "aggregate")
    Params = DPGaussianParams

    def __init__(self, params: DPGaussianParams) -> None:
        super().__init__(params)
        self.accountant = GaussianAccountant(params.delta)

    @classmethod
    def stage_for(cls, params: DPGaussianParams) -> Stage:
        return "upload" if params.placement == "client" else "aggregate"

    def apply(self, update: Update, generator: torch.Generator) -> tuple[Update, dict[str, float]]:
        clipped, norm = clip_update(update, self.params.clip_norm)
        noisy, measured = add_gaussian_noise(
            clipped, self.params.noise_multiplier * self.params.clip_norm, generator
        )
        self.accountant.release(self.params.noise_multiplier / 2)
        return noisy, {
            **measured,
            "update_norm_before_clipping": norm,
            "clipped": float(norm > self.params.clip_norm),
            **self._privacy(),
        }

    def aggregate(
        self,
        updates: Sequence[Mapping[str, torch.Tensor]],
        weights: Sequence[float],
        generator: torch.Generator,
    ) -> tuple[Update, dict[str, float]]:
        """Clip each upload, average uniformly (weights ignored: DP-FedAvg's sensitivity
        needs equal weights), add noise of std ``z·C/m``."""
        clipped, norms = zip(*(clip_update(u, self.params.clip_norm) for u in updates), strict=True)
        mean = weighted_mean(clipped, [1.0] * len(clipped))
        std = self.params.noise_multiplier * self.params.clip_norm / len(clipped)
        noisy, measured = add_gaussian_noise(mean, std, generator)
        self.accountant.release(self.params.noise_multiplier)
        return noisy, {
            **measured,
            "clipped_fraction": sum(n > self.params.clip_norm for n in norms) / len(norms),
            **self._privacy(),
        }

    def _privacy(self) -> dict[str, float]:
        return {"epsilon": self.accountant.epsilon(), "delta": self.accountant.delta}

    def state_dict(self) -> dict[str, Any]:
        return self.accountant.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accountant.load_state_dict(state)
