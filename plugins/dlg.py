"""DLG — Deep Leakage from Gradients (Zhu, Liu & Han, NeurIPS 2019).

Dummy images and dummy soft labels are optimised jointly with L-BFGS so that
their gradient matches the observed one in squared L2 distance.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fedsim.api import Attack, AttackParams, Observation, Reconstruction, match_gradients


class DLGParams(AttackParams):
    iterations: int = Field(300, ge=1, le=100_000, description="L-BFGS steps per restart")
    lr: float = Field(1.0, gt=0.0, description="L-BFGS learning rate")
    init: Literal["normal", "uniform"] = Field(
        "normal", description="dummy image initialisation: N(0,1) or U(0,1)"
    )
    restarts: int = Field(1, ge=1, le=100, description="independent trials; lowest loss wins")
    loss_threshold: float = Field(
        0.0, ge=0.0, description="stop a restart once the gradient distance is this low"
    )
    max_seconds: float | None = Field(None, gt=0.0, description="wall-time budget (all restarts)")


class DLG(Attack):
    name = "dlg"
    summary = "Deep Leakage from Gradients: L-BFGS on dummy images and soft labels, L2 distance."
    Params = DLGParams

    def reconstruct(self, observation: Observation) -> Reconstruction:
        p: DLGParams = self.params  # type: ignore[assignment]
        result = match_gradients(
            observation.model(),
            observation.gradient_estimate(),
            input_shape=observation.input_shape,
            batch_size=observation.batch_size,
            num_classes=observation.num_classes,
            iterations=p.iterations,
            lr=p.lr,
            init=p.init,
            restarts=p.restarts,
            loss_threshold=p.loss_threshold,
            max_seconds=p.max_seconds,
            seed=observation.seed,
        )
        diagnostics = {
            "loss_curve": result.loss_curve,
            "iterations": result.iterations,
            "evaluations": result.evaluations,
            "seconds": result.seconds,
            "restart_losses": result.restart_losses,
            "final_loss": result.restart_losses and min(result.restart_losses),
        }
        if result.images is None:
            return Reconstruction.failed(result.failure, **diagnostics)
        return Reconstruction(result.images, result.labels, diagnostics=diagnostics)
