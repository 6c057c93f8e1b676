"""Quantisation of the upload: each tensor rounded to a uniform grid of ``bits`` bits.

Symmetric, per tensor: the grid step is ``max|v| / (2^(bits−1) − 1)`` and every
entry is rounded to the nearest grid point (PyTorch's
``fake_quantize_per_tensor_affine``: quantise and dequantise in one call).
Deterministic; no formal guarantee: a non-DP baseline. Flower's own
``quantize`` (secure aggregation) clips to a fixed range and rounds
stochastically with NumPy's global random state, so it is not used here.
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedsim.api import Defence, DefenceParams, Update
from fedsim.privacy.noise import global_norm


class QuantisationParams(DefenceParams):
    bits: int = Field(8, ge=2, le=16, description="bits per entry (sign included)")


class Quantisation(Defence[QuantisationParams]):
    name = "quantisation"
    summary = "Rounds each upload tensor to a symmetric uniform grid of `bits` bits (no guarantee)."
    formal_guarantee = False
    Params = QuantisationParams

    def apply(self, update: Update, generator: torch.Generator) -> tuple[Update, dict[str, float]]:
        levels = 2 ** (self.params.bits - 1) - 1
        quantised: Update = {}
        for name, value in update.items():
            peak = float(value.abs().max()) if value.numel() else 0.0
            if peak == 0.0:
                quantised[name] = value.clone()
                continue
            step = peak / levels
            quantised[name] = torch.fake_quantize_per_tensor_affine(
                value.float(), step, 0, -levels, levels
            ).to(value.dtype)
        error = {k: quantised[k] - update[k] for k in update}
        norm = global_norm(update)
        return quantised, {
            "update_norm": norm,
            "error_to_update_norm": global_norm(error) / norm if norm > 0 else 0.0,
        }
