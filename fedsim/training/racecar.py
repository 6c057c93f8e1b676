"""Racecar training (Xie & Thuerey): a reverse pass that reuses every layer's weights.

For a chain of layers ``d_{m+1} = f_m(L_m(d_m))`` (``d_1`` the input image,
``L_m`` a convolution or a matrix ``M_m``, plus a bias ``b_m``; ``f_m`` the
activation after layer ``m``), the reverse pass runs the transposed layers,
each followed by the activation of the layer *below* it (the paper's
appendix A.2, so that ``d_m`` and ``d′_m`` hold the same kind of content):

    d′_m = f_{m−1}(L_mᵀ(x_{m+1} − b_m)),     f_0 = identity,

where ``L_mᵀ`` is ``M_mᵀ`` for a linear layer and the transposed convolution
with the same weights, stride and padding for a conv layer. The *full* variant
chains it from the model's output down (``x_{n+1} = d_{n+1}``, then
``x_{m+1} = d′_{m+1}``); the *layer-wise* variant feeds every layer its own
forward output (``x_{m+1} = d_{m+1}``). The loss is

    L_racecar = Σ_m λ_m · mean over the batch of ‖d_m − d′_m‖²

(squared L2 over each sample's features, m = 1 … n from the input upwards);
for one linear layer it is ``λ‖(MᵀM − I)d‖²``, the paper's data-driven
orthogonality constraint, which drives the right singular vectors of ``M``
towards the dominant structures of the training data.

The model must be a plain conv/linear chain (:func:`fedsim.analytic.chain.extract_chain`):
``lenet`` and ``convnet`` qualify; pooling, normalisation, dropout and branches
are refused with a one-line :class:`UnsupportedModel`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.analytic.chain import Activation, Chain, Layer, UnsupportedModel, extract_chain

Variant = Literal["full", "layerwise"]
VARIANTS: tuple[Variant, ...] = ("full", "layerwise")


@dataclass(frozen=True)
class RacecarPass:
    """One forward and reverse pass of a batch.

    Attributes:
        output: ``(B, num_classes)``: the model's output (logits, or the head's
            activation if the model has one), equal to ``model(x)``.
        forward: ``d_1 … d_n``: each layer's input in the forward pass, in the
            shape the layer consumes it (``(B, C, H, W)`` or ``(B, n)``).
        reverse: ``d′_1 … d′_n``: the reverse pass's reconstructions, same shapes.
        terms: ``(n,)``: mean over the batch of ``‖d_m − d′_m‖²`` per layer (unweighted).
    """

    output: torch.Tensor
    forward: tuple[torch.Tensor, ...]
    reverse: tuple[torch.Tensor, ...]
    terms: torch.Tensor


def transposed(layer: Layer, y: torch.Tensor) -> torch.Tensor:
    """``L_mᵀ(y − b_m)``: the layer's transpose applied to its output minus its bias.

    ``y`` has the layer's (pre-activation) output shape, ``(B, out)`` or
    ``(B, C_out, H_out, W_out)``; the result has its input shape ``(B, *layer.input_shape)``.
    """
    bias = layer.module.bias
    if bias is not None:
        y = y - (bias.view(1, -1, 1, 1) if layer.kind == "conv" else bias)
    return layer.adjoint(y)


def racecar_pass(chain: Chain, x: torch.Tensor, variant: Variant) -> RacecarPass:
    """Run ``x`` (``(B, C, H, W)``) forward through ``chain`` and back (see the module doc)."""
    forward: list[torch.Tensor] = []
    out_shapes: list[torch.Size] = []
    d = x
    for layer in chain.layers:
        d = d.reshape(d.shape[0], *layer.input_shape)
        forward.append(d)
        z = layer.module(d)
        out_shapes.append(z.shape)
        d = layer.activation.forward(z)
    output = d
    below = [Activation(), *(layer.activation for layer in chain.layers[:-1])]
    reverse: list[torch.Tensor] = [output] * len(chain.layers)
    above = output
    for m in reversed(range(len(chain.layers))):
        source = above if variant == "full" or m == len(chain.layers) - 1 else forward[m + 1]
        z = transposed(chain.layers[m], source.reshape(out_shapes[m]))
        reverse[m] = below[m].forward(z)
        above = reverse[m]
    terms = torch.stack(
        [(d - r).flatten(1).pow(2).sum(1).mean() for d, r in zip(forward, reverse, strict=True)]
    )
    return RacecarPass(output, tuple(forward), tuple(reverse), terms)


class RacecarTerm:
    """The racecar loss ``Σ_m λ_m · term_m`` of one model (the model's own modules, so
    gradients reach its parameters); :meth:`objective` adds the mean cross-entropy.

    Args:
        model: a conv/linear chain mapping ``(B, *input_shape)`` to ``(B, num_classes)``.
        input_shape: ``(C, H, W)``.
        variant: ``full`` or ``layerwise``.
        lambdas: one weight for every layer, or one per layer from the input
            upwards (λ_1 weighs the reconstruction of the image).

    Raises:
        UnsupportedModel: the model is not such a chain (one-line reason).
        ValueError: ``lambdas`` has the wrong length or a negative entry.
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, int, int],
        variant: Variant,
        lambdas: float | Sequence[float],
    ) -> None:
        self.chain = extract_chain(model, input_shape)
        self.variant = variant
        self.lambdas = layer_weights(lambdas, len(self.chain.layers))

    def _weighted(self, result: RacecarPass) -> torch.Tensor:
        weights = torch.as_tensor(
            self.lambdas, dtype=result.terms.dtype, device=result.terms.device
        )
        return (weights * result.terms).sum()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The racecar loss of the batch ``x`` (``(B, C, H, W)``), a scalar."""
        return self._weighted(racecar_pass(self.chain, x, self.variant))

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch: mean cross-entropy + the racecar loss (one pass)."""
        result = racecar_pass(self.chain, x, self.variant)
        return F.cross_entropy(result.output, y) + self._weighted(result)


@dataclass(frozen=True)
class RacecarRegulariser:
    """Builds :class:`RacecarTerm` for a given model: what a server that set the
    clients' training plan knows of their loss beyond cross-entropy (picklable)."""

    input_shape: tuple[int, int, int]
    variant: Variant
    lambdas: float | tuple[float, ...]

    def __call__(self, model: nn.Module) -> RacecarTerm:
        return RacecarTerm(model, self.input_shape, self.variant, self.lambdas)


def layer_weights(lambdas: float | Sequence[float], num_layers: int) -> tuple[float, ...]:
    """``lambdas`` as one non-negative weight per layer (a scalar is repeated)."""
    values = (
        [float(lambdas)] * num_layers
        if isinstance(lambdas, int | float)
        else [float(v) for v in lambdas]
    )
    if len(values) != num_layers:
        raise ValueError(
            f"lambdas has {len(values)} entries; the model has {num_layers} conv/linear layers "
            "(give one per layer from the input upwards, or a single number)"
        )
    if any(v < 0 for v in values):
        raise ValueError("lambdas must be non-negative")
    return tuple(values)


def check_racecar_model(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """The number of conv/linear layers racecar training will constrain in ``model``.

    Raises:
        UnsupportedModel: with a one-line reason (e.g. a pooling layer).
    """
    return len(extract_chain(model, input_shape).layers)


__all__ = [
    "VARIANTS",
    "RacecarPass",
    "RacecarRegulariser",
    "RacecarTerm",
    "UnsupportedModel",
    "Variant",
    "check_racecar_model",
    "layer_weights",
    "racecar_pass",
    "transposed",
]
