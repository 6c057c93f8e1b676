"""Gradient pruning: zero the smallest-magnitude fraction of the upload (DLG's defence).

Per parameter tensor, as in the DLG paper's experiment: the fraction ``p`` of
each tensor's entries with the smallest absolute value is set to zero (the
mask is PyTorch's ``L1Unstructured`` pruning method, which rounds ``p × n``
to the nearest count). No noise, no formal guarantee: a non-DP baseline.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch.nn.utils import prune

from fedsim.api import Defence, DefenceParams, Update
from fedsim.privacy.noise import global_norm


class PruningParams(DefenceParams):
    p: float = Field(0.0, ge=0.0, le=1.0, description="fraction of each tensor's entries zeroed")


class Pruning(Defence[PruningParams]):
    name = "pruning"
    summary = (
        "Zeroes the fraction p of smallest-magnitude entries of each upload tensor (no guarantee)."
    )
    formal_guarantee = False
    Params = PruningParams

    def apply(self, update: Update, generator: torch.Generator) -> tuple[Update, dict[str, float]]:
        method = prune.L1Unstructured(amount=self.params.p)
        pruned: Update = {}
        zeroed = total = 0
        for name, value in update.items():
            mask = method.compute_mask(value, default_mask=torch.ones_like(value))
            pruned[name] = value * mask
            zeroed += int((mask == 0).sum())
            total += value.numel()
        norm = global_norm(update)
        return pruned, {
            "pruned_fraction": zeroed / total,
            "update_norm": norm,
            "kept_norm_fraction": global_norm(pruned) / norm if norm > 0 else 1.0,
        }
