"""Gaussian noise on the upload, added on the client before it leaves.

Without clipping this gives no formal differential-privacy guarantee; it is the
noise defence of the DLG and COPA papers' experiments.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedsim.api import Defence, DefenceParams, Update, global_norm


class GaussianNoiseParams(DefenceParams):
    sigma: float = Field(0.0, ge=0.0, description="noise standard deviation")
    relative: bool = Field(
        False, description="if true, the std is sigma × the update's global L2 norm"
    )


class GaussianNoise(Defence):
    name = "gaussian_noise"
    summary = "Adds N(0, sigma²) to every coordinate of the upload (no clipping, no guarantee)."
    formal_guarantee = False
    Params = GaussianNoiseParams

    def apply(self, update: Update, generator: torch.Generator) -> tuple[Update, dict[str, float]]:
        p: GaussianNoiseParams = self.params  # type: ignore[assignment]
        norm = global_norm(update)
        std = p.sigma * norm if p.relative else p.sigma
        noisy: Update = {}
        total, sq, count = 0.0, 0.0, 0
        for name, value in update.items():
            noise = torch.randn(value.shape, generator=generator, dtype=value.dtype) * std
            noisy[name] = value + noise.to(value.device)
            total += float(noise.sum())
            sq += float(noise.double().pow(2).sum())
            count += noise.numel()
        mean = total / count
        measured = max(sq / count - mean * mean, 0.0) ** 0.5
        noise_norm = sq**0.5
        return noisy, {
            "noise_std": std,
            "measured_noise_std": measured,
            "update_norm": norm,
            "noise_to_update_norm": noise_norm / norm if norm > 0 else float("inf"),
        }
