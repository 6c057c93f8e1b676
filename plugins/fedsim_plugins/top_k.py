"""Top-k sparsification of the upload, optionally with error feedback across rounds.

The client sends only the ``fraction`` of its update's entries with the largest
magnitude, chosen over the whole update (all tensors together, as in Aji and
Heafield, "Sparse Communication for Distributed Gradient Descent", EMNLP 2017,
arXiv:1704.05021); the rest are sent as zeros. With ``error_feedback`` the
client keeps what it did not send and adds it to its next update before
choosing (Stich, Cordonnier and Jaggi, "Sparsified SGD with Memory", NeurIPS
2018, arXiv:1809.07599), so every coordinate's mass is sent eventually and
training still converges at a small fraction. The residual lives in the
client's defence state (kept in Flower's ``Context.state`` between rounds, on
the client), never in the upload.

As a defence against gradient inversion this is the DLG paper's pruning over
the whole update instead of per tensor (Zhu, Liu and Han, "Deep Leakage from
Gradients", NeurIPS 2019, arXiv:1906.08935). No noise, no formal guarantee.
With error feedback the upload also carries earlier rounds' residual, which
is no longer the gradient of this round's batch alone.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch
from pydantic import Field

from fedsim.api import Defence, DefenceParams, Update
from fedsim.privacy.noise import global_norm


class TopKParams(DefenceParams):
    fraction: float = Field(
        0.1, gt=0.0, le=1.0, description="fraction of the update's entries sent (largest |value|)"
    )
    error_feedback: bool = Field(
        False, description="add the entries not sent to the next round's update before choosing"
    )


class TopK(Defence[TopKParams]):
    name = "top_k"
    summary = (
        "Sends only the fraction of the update's largest-magnitude entries, optionally "
        "with error feedback across rounds (no guarantee)."
    )
    formal_guarantee = False
    Params = TopKParams

    def __init__(self, params: TopKParams) -> None:
        super().__init__(params)
        self.residual: Update = {}
        """Per parameter, what earlier rounds chose not to send (error feedback)."""

    def apply(self, update: Update, generator: torch.Generator) -> tuple[Update, dict[str, float]]:
        """Keep the ``round(fraction × n)`` (at least one) largest-magnitude of the
        update's ``n`` entries (ties broken by ``torch.topk``), zero the rest."""
        carried = {
            k: v + self.residual[k].to(v)
            if self.params.error_feedback and k in self.residual
            else v
            for k, v in update.items()
        }
        flat = torch.cat([v.reshape(-1) for v in carried.values()])
        kept = max(1, round(self.params.fraction * flat.numel()))
        mask = torch.zeros_like(flat, dtype=torch.bool)
        mask[torch.topk(flat.abs(), kept, sorted=False).indices] = True
        sent: Update = {}
        offset = 0
        for name, value in carried.items():
            sent[name] = value * mask[offset : offset + value.numel()].view_as(value)
            offset += value.numel()
        if self.params.error_feedback:
            self.residual = {k: carried[k] - sent[k] for k in carried}
        norm = global_norm(carried)
        return sent, {
            "kept_fraction": kept / flat.numel(),
            "kept_norm_fraction": global_norm(sent) / norm if norm > 0 else 1.0,
            "residual_norm": global_norm(self.residual) if self.residual else 0.0,
        }

    def state_dict(self) -> dict[str, Any]:
        """The residual, each tensor as its shape and base64 float32 bytes."""
        return {
            name: {
                "shape": list(value.shape),
                "float32": base64.b64encode(
                    value.detach().cpu().float().numpy().tobytes()
                ).decode(),
            }
            for name, value in self.residual.items()
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.residual = {
            name: torch.from_numpy(
                np.frombuffer(base64.b64decode(item["float32"]), dtype=np.float32).copy()
            ).view(item["shape"])
            for name, item in state.items()
        }
