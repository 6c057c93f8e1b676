"""Gaussian noise on the upload (on the client) or on the aggregate (on the server).

Without clipping this gives no formal differential-privacy guarantee. It is the
noise defence the DLG paper (L. Zhu, Z. Liu and S. Han, "Deep Leakage from
Gradients", NeurIPS 2019, arXiv:1906.08935) and the WDLG paper (Z. Wang, C. Peng,
X. He and W. Tan, "Wasserstein Distance-Based Deep Leakage from Gradients",
Entropy 25(5):810, 2023, doi:10.3390/e25050810, §4.5) test their attacks
against. ``placement`` chooses where it acts: ``client`` adds the noise to each
upload before it leaves the client; ``server`` adds it to the aggregate (FedAvg's
weighted mean), which a participant sees but an attacker at the server does not
(it sees raw uploads).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from pydantic import Field

from fedsim.api import Defence, DefenceParams, Stage, Update
from fedsim.privacy.noise import add_gaussian_noise, global_norm, weighted_mean


class GaussianNoiseParams(DefenceParams):
    sigma: float = Field(0.0, ge=0.0, description="noise standard deviation")
    relative: bool = Field(
        False, description="if true, the std is sigma × the update's global L2 norm"
    )
    placement: Literal["client", "server"] = Field(
        "client", description="client: on each upload; server: on the round's aggregate"
    )


class GaussianNoise(Defence[GaussianNoiseParams]):
    name = "gaussian_noise"
    summary = (
        "Adds N(0, sigma²) to every coordinate of the upload or of the aggregate "
        "(no clipping, no guarantee)."
    )
    formal_guarantee = False
    stages = ("upload", "aggregate")
    Params = GaussianNoiseParams

    @classmethod
    def stage_for(cls, params: GaussianNoiseParams) -> Stage:
        return "upload" if params.placement == "client" else "aggregate"

    def apply(self, update: Update, generator: torch.Generator) -> tuple[Update, dict[str, float]]:
        std = self.params.sigma * global_norm(update) if self.params.relative else self.params.sigma
        return add_gaussian_noise(update, std, generator)

    def aggregate(
        self,
        updates: Sequence[Mapping[str, torch.Tensor]],
        weights: Sequence[float],
        generator: torch.Generator,
    ) -> tuple[Update, dict[str, float]]:
        return self.apply(weighted_mean(updates, weights), generator)
