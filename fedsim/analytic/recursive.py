"""The top-down recursion shared by R-GAP and COPA (and FC inversion on its own).

From the head down: the head's input comes in closed form from its weight and
bias gradients; below it, each layer's pre-activation output is the inverse
activation of the input just recovered, its ``dJ/dZ`` follows by
back-propagation (``dJ/dZ = (Wᵀ_above dJ/dZ_above) ⊙ a'(Z)``), and its input is
solved for: in closed form for a linear layer, by a pluggable *conv solver*
for a conv layer (R-GAP: least squares; COPA: its combined objective).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedsim.analytic.chain import Chain, Layer, UnsupportedModel
from fedsim.analytic.conv import ConvOperator
from fedsim.analytic.layers import Constraints, Solve, invert_linear, solve_conv_input


@dataclass(frozen=True)
class ConvStep:
    """What a conv solver is given for one conv layer.

    Attributes:
        layer: the layer whose input is sought.
        op: its constraint operators, with the back-propagated ``dJ/dZ``.
        z: the target pre-activation output without bias, ``(C_out, H', W')``.
        grad_weight: the observed ``dJ/dw``.
        below: the layer underneath (whose activation produced this input), or ``None``
            for the first layer.
    """

    layer: Layer
    op: ConvOperator
    z: torch.Tensor
    grad_weight: torch.Tensor
    below: Layer | None


@dataclass(frozen=True)
class ConvResult:
    """A conv solver's answer: the layer's flat input ``x`` and, when the solver found
    it directly (COPA's reparameterisation), the pre-activation of the layer below."""

    x: np.ndarray
    z_below: np.ndarray | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)


ConvSolver = Callable[[ConvStep], ConvResult]


@dataclass(frozen=True)
class Inversion:
    """The recovered input ``(C, H, W)`` (float64, not clipped) and per-layer diagnostics."""

    image: torch.Tensor
    layers: list[dict[str, Any]]
    clipped: int


def invert_chain(
    chain: Chain, gradient: Mapping[str, torch.Tensor], conv_solver: ConvSolver | None
) -> Inversion:
    """Recover the chain's input from one sample's ``gradient`` (keyed by parameter name).

    Raises:
        UnsupportedModel: the head has no bias, an activation is not invertible, a
            gradient is missing, or a conv layer is met without ``conv_solver``.
        ValueError: a linear layer's ``dJ/dz`` is zero.
    """
    chain.require_invertible()
    head = chain.head
    if head.bias_key is None:
        raise UnsupportedModel(f"the head '{head.name}' has no bias: its input has no closed form")
    missing = [k for layer in chain.layers for k in (layer.weight_key,) if k not in gradient]
    if missing:
        raise UnsupportedModel(f"the update has no gradient for {missing[0]!r}")

    def grad(key: str) -> torch.Tensor:
        return gradient[key].detach().double().cpu()

    dz = grad(head.bias_key)
    x = invert_linear(grad(head.weight_key), dz)
    upstream = head.module.weight.detach().double().cpu().T @ dz
    reports: list[dict[str, Any]] = [{"layer": head.name, "method": "closed form (bias trick)"}]
    z_known: torch.Tensor | None = None
    clipped_total = 0
    for index in range(len(chain.layers) - 2, -1, -1):
        layer = chain.layers[index]
        if z_known is None:
            z, clipped = layer.activation.inverse(x)
        else:
            z, clipped = z_known, 0
        clipped_total += clipped
        dz = upstream * layer.activation.derivative(z)
        z = z - layer.flat_bias()
        weight = layer.module.weight.detach().double().cpu()
        if layer.kind == "linear":
            x = invert_linear(grad(layer.weight_key), dz)
            upstream = weight.T @ dz
            z_known = None
            reports.append(
                {"layer": layer.name, "method": "closed form (Lemma A.1)", "clipped": clipped}
            )
            continue
        if conv_solver is None:
            raise UnsupportedModel(
                f"'{layer.name}' is a conv layer; closed-form inversion covers linear layers only"
            )
        geometry = layer.geometry()
        op = ConvOperator(geometry, weight, dz.reshape(geometry.output_shape))
        below = chain.layers[index - 1] if index else None
        step = ConvStep(layer, op, z.reshape(geometry.output_shape), grad(layer.weight_key), below)
        result = conv_solver(step)
        x = torch.from_numpy(np.asarray(result.x, dtype=np.float64))
        z_known = None if result.z_below is None else torch.from_numpy(result.z_below)
        upstream = op.weight_adjoint(dz[None])[0]
        reports.append({"layer": layer.name, "clipped": clipped, **result.diagnostics})
    return Inversion(x.reshape(chain.input_shape), reports[::-1], clipped_total)


def least_squares_step(
    step: ConvStep, tol: float = 1e-12, max_iterations: int = 20_000
) -> ConvResult:
    """R-GAP's conv step (and COPA's at the first layer, eq. 6): least squares on
    ``[W; G] x = [z; dJ/dw]``."""
    constraints = Constraints.of(step.op, step.z, step.grad_weight)
    solved = solve_conv_input(constraints, tol, max_iterations)
    return ConvResult(solved.x, None, solve_diagnostics(solved))


def solve_diagnostics(solved: Solve) -> dict[str, Any]:
    """A :class:`Solve` as JSON-ready diagnostics."""
    return {
        "method": solved.method,
        "iterations": solved.iterations,
        "weight_residual": solved.weight_residual,
        "gradient_residual": solved.gradient_residual,
        "seconds": round(solved.seconds, 3),
    }
