"""R-GAP — Recursive Gradient Attack on Privacy (Zhu & Blaschko, ICLR 2021).

From the head down, each layer's input is recovered from two linear systems:
the weight constraint ``W x = a⁻¹(x_above) − b`` and the gradient constraint
``G(dJ/dZ) x = dJ/dW``, solved jointly by least squares (minimum norm where
they leave freedom). The head's input comes in closed form (bias trick);
conv constraints are built from the convolution's index structure (sparse),
never from dense autograd Jacobians. Tanh/sigmoid outputs outside the open
range are clipped before inversion (counted in the diagnostics).

Supports plain chains of convs and linear layers with invertible activations
(tanh, sigmoid, leaky ReLU), a head with bias, and batch size 1.
"""

from __future__ import annotations

from pydantic import Field

from fedsim.analytic.recursive import ConvResult, ConvStep, least_squares_step
from fedsim.api import Attack, AttackParams, Observation, Reconstruction
from fedsim.inversion.analytic_attack import reconstruct_analytically


class RGAPParams(AttackParams):
    tolerance: float = Field(1e-12, gt=0, lt=1, description="LSMR relative tolerance per layer")
    max_iterations: int = Field(20_000, ge=1, description="LSMR iterations per layer")


class RGAP(Attack[RGAPParams]):
    name = "rgap"
    summary = (
        "R-GAP: recursive closed-form inversion, least squares on weight + gradient constraints."
    )
    uses = frozenset({"labels", "batch_size"})
    Params = RGAPParams

    def reconstruct(self, observation: Observation) -> Reconstruction:

        def solver(step: ConvStep) -> ConvResult:
            return least_squares_step(step, self.params.tolerance, self.params.max_iterations)

        return reconstruct_analytically(observation, solver)
