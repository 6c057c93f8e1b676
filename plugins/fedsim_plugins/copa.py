"""COPA — Combined Optimisation Attack (Algorithm 1 of C. Chen and N. D. F. Campbell,
"Understanding Training-Data Leakage from Gradients in Neural Networks for Image
Classification", 2021, arXiv:2111.10178).

Top-down like R-GAP (closed-form head, back-propagated ``dJ/dZ``), but at a
conv layer ``i`` above the first it minimises, over the pre-activation ``X``
of the layer below (the reparameterisation of eq. 5, so the answer is always
invertible by that activation)::

    f(X) = ‖U A(X) − V‖² + ‖P⊥ (X − b_below)‖² / ‖X₀‖²

with ``U = [W; G]`` and ``V = [Z; dJ/dW]`` (each block scaled to unit norm)
and the pull-back constraint of Appendix B: ``X − b_below = W_below X_below``
lies in the range of the layer below's weight, ``P⊥`` projecting onto its
orthogonal complement (the appendix absorbs the bias by augmentation;
subtracting it first is the same constraint). As in Appendix B the term is
used when ``W_below`` has full column rank and more rows than columns (then
the range is a proper subspace); Algorithm 1's printed branch condition reads
the other way round, but the appendix's derivation needs exactly this case.
At the first layer ``f`` is the quadratic of eq. 6, solved by least squares.
``L-BFGS`` starts from the least-squares solution mapped through the inverse
activation (``init = "least_squares"``) or from zero. Optional
post-processing: total variation denoising (scikit-image's Chambolle, the
paper's weight 0.15).

SciPy's optimiser and scikit-image are imported when COPA runs: every process that
discovers the plugins (each deployed ClientApp among them) imports this module.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from fedsim.analytic.banded import BandedCholesky, spatial_major
from fedsim.analytic.chain import Layer
from fedsim.analytic.conv import ConvGeometry, ConvOperator
from fedsim.analytic.layers import Constraints, solve_conv_input
from fedsim.analytic.recursive import ConvResult, ConvStep, least_squares_step
from fedsim.api import Attack, AttackParams, Observation, Reconstruction
from fedsim.inversion.analytic_attack import reconstruct_analytically


class COPAParams(AttackParams):
    iterations: int = Field(
        3000, ge=1, le=1_000_000, description="L-BFGS iterations per conv layer"
    )
    init: Literal["least_squares", "zeros"] = Field(
        "least_squares", description="start of the per-layer optimisation"
    )
    pullback: bool = Field(True, description="add Appendix B's pull-back constraint where it holds")
    tv_weight: float = Field(
        0.0, ge=0.0, description="total-variation denoising weight afterwards (0: off; paper: 0.15)"
    )


class PullBack:
    """``X ↦ P⊥ (X − b)``: the part of the layer below's pre-activation output ``X``
    (flat, ``|Z|``) that its weight ``W`` (``|Z| × n``, full column rank) cannot
    produce. ``X = W X_below + b``, so ``X − b`` (not ``X``) lies in the range of
    ``W``, with ``P⊥ v = v − W (WᵀW)⁻¹ Wᵀ v`` (Appendix B absorbs ``b`` by augmenting
    ``W`` with it and ``X_below`` with a fixed 1: the same affine constraint).
    ``P⊥`` is a symmetric projector, so the gradient of ``‖P⊥ (X − b)‖²`` is
    ``2 P⊥ (X − b)``."""

    def __init__(self, layer: Layer) -> None:
        geometry: ConvGeometry = layer.geometry()
        self.op = ConvOperator(geometry, layer.module.weight.detach())
        self.bias = layer.flat_bias().numpy()
        self.perm = spatial_major(*geometry.input_shape)
        w = self.op.weight_matrix()[:, self.perm].tocsc()
        self.chol = BandedCholesky((w.T @ w).tocsr())  # raises LinAlgError if rank deficient

    def __call__(self, x: np.ndarray) -> np.ndarray:
        v = x - self.bias
        back = self.op.weight_adjoint(torch.from_numpy(v)[None]).numpy()[0]
        solved = np.empty_like(back)
        solved[self.perm] = self.chol.solve(back[self.perm])
        return v - self.op.weight_apply(torch.from_numpy(solved)[None]).numpy()[0]


def pull_back_for(below: Layer) -> tuple[PullBack | None, str]:
    """The pull-back operator for ``below`` and a one-line note on whether it applies."""
    if below.kind != "conv":
        return None, "not applicable: the layer below is not a conv layer"
    geometry = below.geometry()
    if geometry.n_outputs <= geometry.n_inputs:
        return None, (
            f"not applicable: the layer below has {geometry.n_outputs} outputs ≤ "
            f"{geometry.n_inputs} inputs"
        )
    try:
        return PullBack(below), "used"
    except np.linalg.LinAlgError:
        return None, "not applicable: the layer below's weight is rank deficient"


def copa_step(step: ConvStep, params: COPAParams) -> ConvResult:
    """Solve one conv layer as COPA does (eq. 6 at the first layer, eq. 5/7 above it)."""
    from scipy.optimize import minimize

    if step.below is None:
        return least_squares_step(step)
    constraints = Constraints.of(step.op, step.z, step.grad_weight)
    activation = step.below.activation
    pullback, note = pull_back_for(step.below) if params.pullback else (None, "switched off")
    if params.init == "least_squares":
        start = activation.inverse(torch.from_numpy(solve_conv_input(constraints).x))[0].numpy()
    else:
        start = np.zeros(constraints.u.shape[1])
    scale = 1.0 / max(float(start @ start), 1.0)
    u, v = constraints.u, constraints.v

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        z = torch.from_numpy(x)
        a = activation.forward(z).numpy()
        r = u @ a - v
        value = float(r @ r)
        grad = 2.0 * (u.T @ r) * activation.derivative(z).numpy()
        if pullback is not None:
            p = pullback(x)
            value += scale * float(p @ p)
            grad += 2.0 * scale * p
        return value, grad

    result = minimize(
        objective, start, jac=True, method="L-BFGS-B",
        options={"maxiter": params.iterations, "ftol": 1e-20, "gtol": 1e-14, "maxcor": 50},
    )  # fmt: skip
    x = activation.forward(torch.from_numpy(result.x)).numpy()
    wr, gr = constraints.residuals(x)
    diagnostics = {
        "method": "COPA objective (eq. 5/7), L-BFGS",
        "iterations": int(result.nit),
        "objective": float(result.fun),
        "weight_residual": wr,
        "gradient_residual": gr,
        "pullback": note,
    }
    return ConvResult(x, result.x, diagnostics)


def tv_denoise(weight: float):
    """Chambolle total-variation denoising of ``(1, C, H, W)`` images in [0, 1]."""

    from skimage.restoration import denoise_tv_chambolle

    def apply(images: torch.Tensor) -> torch.Tensor:
        image = images[0].permute(1, 2, 0).double().numpy()
        out = denoise_tv_chambolle(image, weight=weight, channel_axis=-1)
        return torch.from_numpy(out).permute(2, 0, 1)[None].float().clamp(0, 1)

    return apply


class COPA(Attack[COPAParams]):
    name = "copa"
    summary = "COPA: per-layer combined weight/gradient objective with pull-back; optional TV."
    uses = frozenset({"labels", "batch_size"})
    Params = COPAParams

    def reconstruct(self, observation: Observation) -> Reconstruction:

        def solver(step: ConvStep) -> ConvResult:
            return copa_step(step, self.params)

        post = tv_denoise(self.params.tv_weight) if self.params.tv_weight > 0 else None
        result = reconstruct_analytically(observation, solver, post)
        result.diagnostics["tv_weight"] = self.params.tv_weight
        return result
