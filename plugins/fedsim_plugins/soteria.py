"""Soteria: perturbing the data representation of one fully-connected layer (J. Sun, A. Li,
B. Wang, H. Yang, H. Li & Y. Chen, "Soteria: Provable Defense against Privacy Leakage in
Federated Learning from Representation Perspective", CVPR 2021, arXiv:2012.06043).

The defended layer is one ``nn.Linear`` (``layer``, by default the model's first); its
input ``r`` (``(B, d)``, the representation) is what the paper perturbs. Its weight
gradient is ``∂L/∂W = δ rᵀ`` (``δ = ∂L/∂z`` of its output), so column ``f`` carries the
feature ``r_f`` of every sample and zeroing that column is the upload of a
representation whose feature ``f`` was removed. Each training step the client prunes
``round(prune_rate · d)`` feature columns of that step's weight gradient; the forward
pass, the loss and every other parameter's gradient are those of plain training (as in
the authors' code).

Which features (the criterion's direction). The paper asks for a perturbed ``r'`` that
changes few features (``‖r − r'‖₀`` small) yet moves the input an attacker reconstructs
from it, ``X'``, far from ``X``. Linearised, removing feature ``f`` (``δr_f = −r_f``)
moves the reconstruction by ``δX ≈ r_f (∂r_f/∂X)⁻¹``, whose norm the paper approximates
by ``|r_f| / ‖∂r_f/∂X‖``: the features worth removing are those with the *largest*
``|r_f| / ‖∂r_f/∂X‖``, whose value would take the largest change of ``X`` to produce,
so that a reconstruction that has lost them lands far from ``X``. Soteria therefore
prunes the features of *smallest* score (input sensitivity relative to the value)::

    s_f = Σ_b ‖∂r_{b,f}/∂X_b‖₂ / |r_{b,f}|        (X_b: sample b's image, all pixels)

summed over the step's batch (the authors' code ranks features so, and prunes those
below the ``prune_rate`` percentile). A feature that is exactly 0 for a sample gets
``s_f = ∞`` (its column is zero already: removing it moves nothing), so it is never
preferred; ties go to the lower index.

The Jacobian ``∂r/∂X`` comes from the very forward pass the loss uses, run under
:func:`torch.func.vjp` (its logits keep the ordinary autograd graph, so the step's
gradients are plain training's; dropout masks are the step's), its pullback mapped
with :func:`torch.func.vmap` over one-hot cotangents, a chunk of features at a time and
every sample at once (LeNet at 32×32, 768 features: about 0.08 s per sample on 2 CPU cores;
the first call in a process also imports ``torch._dynamo``, about 2 s). Samples are
taken as independent; a model whose layers track running statistics (BatchNorm in
training) is refused: its forward pass mutates buffers, which torch.func cannot
differentiate, and couples the samples. No noise, no formal guarantee.

Known adaptive answer: the remaining gradients still determine the input (Balunović,
Dimitrov, Staab & Vechev, "Bayesian Framework for Gradient Leakage", ICLR 2022,
arXiv:2111.04706, broke Soteria by leaving the defended layer out of the matching
objective): every gradient-matching attack does so with ``ignore_layers``.

Measurements: ``defended_features`` (``d``), ``pruned_features`` (per step) and
``kept_norm_fraction`` (L2 norm of the defended weight's pruned gradients over that of
the unpruned ones, all local steps together; 1 when they are all zero).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from fedsim.api import Defence, DefenceParams, LocalTraining, TrainingResult
from fedsim.training.local import train_locally

JACOBIAN_CHUNK_ELEMENTS = 2**24
"""Entries of ``∂r/∂X`` (float32: 64 MiB) and of the one-hot cotangents held at once:
features are scored in chunks of ``max(1, JACOBIAN_CHUNK_ELEMENTS // (B · max(C·H·W, d)))``."""


class SoteriaParams(DefenceParams):
    prune_rate: float = Field(
        0.6, ge=0.0, lt=1.0,
        description="fraction of the defended layer's input features whose weight-gradient "
        "columns are zeroed each step (rounded to the nearest count); 0.6 is the rate of the "
        "authors' example against Inverting Gradients",
    )  # fmt: skip
    layer: str | None = Field(
        None,
        description="name of the defended nn.Linear in model.named_modules(); "
        "default: the first nn.Linear",
    )


def defended_layer(model: nn.Module, name: str | None) -> nn.Linear:
    """The module Soteria defends: ``name`` in ``model.named_modules()``, or the first
    ``nn.Linear`` when ``name`` is ``None``.

    Raises:
        ValueError: no such module, not an ``nn.Linear``, or (``None``) no ``nn.Linear``
            at all; the message is one line.
    """
    modules = dict(model.named_modules())
    linear = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
    if name is None:
        if not linear:
            raise ValueError("soteria defends an nn.Linear layer, and the model has none")
        name = linear[0]
    elif name not in modules:
        raise ValueError(
            f"soteria: the model has no module {name!r}; its nn.Linear layers: "
            f"{', '.join(linear) or 'none'}"
        )
    module = modules[name]
    if not isinstance(module, nn.Linear):
        raise ValueError(
            f"soteria: {name!r} is a {type(module).__name__}, not an nn.Linear; its "
            f"nn.Linear layers: {', '.join(linear) or 'none'}"
        )
    return module


def representation_and_logits(
    model: nn.Module, layer: nn.Linear, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``model``'s logits on ``images`` and the input of ``layer`` in that forward pass.

    Raises:
        ValueError: ``layer`` did not run exactly once, or not on a ``(B, d)`` input.
    """
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _module, args: captured.append(args[0]))
    try:
        logits = model(images)
    finally:
        handle.remove()
    if len(captured) != 1 or captured[0].dim() != 2:
        shapes = [tuple(c.shape) for c in captured]
        raise ValueError(
            "soteria needs the defended layer to run once per forward pass, on a "
            f"(batch, features) input; it ran on {shapes}"
        )
    return captured[0], logits


def soteria_scores(
    model: nn.Module, layer: nn.Linear, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` on ``images`` ``(B, C, H, W)`` and score the features of ``layer``'s
    input ``r`` ``(B, d)``: ``s_f = Σ_b ‖∂r_{b,f}/∂X_b‖₂ / |r_{b,f}|``, ``∞`` where some
    ``r_{b,f} = 0`` (module docstring; the smallest are pruned).

    Returns ``(scores (d,), logits (B, K))``; the scores are detached, the logits carry
    the ordinary autograd graph to ``model``'s parameters (the loss is built on them).
    ``∂r/∂X`` comes from one :func:`torch.func.vjp` of the forward pass, its pullback
    mapped (:func:`torch.func.vmap`) over the one-hot cotangents of a chunk of
    features at a time, every sample at once: row ``b`` of the pullback of feature
    ``f`` is the gradient of ``Σ_b r_{b,f}``, i.e. ``∂r_{b,f}/∂X_b`` for independent
    samples.
    """
    # vjp's declared return type is a union over has_aux; with has_aux it is a triple.
    representation, pullback, logits = cast(
        tuple[torch.Tensor, Callable[[torch.Tensor], tuple[torch.Tensor]], torch.Tensor],
        torch.func.vjp(partial(representation_and_logits, model, layer), images, has_aux=True),
    )
    batch, features = representation.shape
    chunk = max(1, JACOBIAN_CHUNK_ELEMENTS // (batch * max(images[0].numel(), features)))
    norms = []
    for start in range(0, features, chunk):
        selected = torch.arange(start, min(start + chunk, features), device=images.device)
        basis = F.one_hot(selected, features).to(representation.dtype)
        (rows,) = torch.func.vmap(pullback)(basis[:, None, :].expand(-1, batch, -1))
        norms.append(rows.flatten(2).norm(dim=2))
    magnitude = representation.detach().abs()
    ratio = torch.cat(norms).T / magnitude
    return torch.where(magnitude > 0, ratio, math.inf).sum(dim=0), logits


def pruned_features(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` features of smallest score (ties: lower index first), for
    ``scores`` of shape ``(d,)``."""
    return torch.argsort(scores, stable=True)[:count]


class _PrunedTraining:
    """One client's Soteria training: :meth:`objective` (the cross-entropy, which also
    scores the defended layer's features on the step's own forward pass) and
    :meth:`prune` (the gradient hook that zeroes the chosen columns), for
    :func:`~fedsim.training.local.train_locally`."""

    def __init__(self, model: nn.Module, layer: nn.Linear, prune_rate: float) -> None:
        self.model, self.layer = model, layer
        self.count = round(prune_rate * layer.in_features)
        self.scores: torch.Tensor | None = None
        self.kept_squares = self.total_squares = 0.0

    def objective(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.scores, logits = soteria_scores(self.model, self.layer, x)
        return F.cross_entropy(logits, y)

    def prune(self, x: torch.Tensor, y: torch.Tensor) -> None:
        grad = self.layer.weight.grad
        if grad is None or self.scores is None:
            raise ValueError("soteria: the defended layer got no gradient in this step")
        self.total_squares += float(grad.pow(2).sum())
        grad[:, pruned_features(self.scores, self.count)] = 0
        self.kept_squares += float(grad.pow(2).sum())

    def measurements(self) -> dict[str, float]:
        kept = math.sqrt(self.kept_squares / self.total_squares) if self.total_squares else 1.0
        return {
            "defended_features": float(self.layer.in_features),
            "pruned_features": float(self.count),
            "kept_norm_fraction": kept,
        }


class Soteria(Defence[SoteriaParams]):
    name = "soteria"
    summary = (
        "Soteria: each step, zeroes the defended linear layer's weight-gradient columns of "
        "the features of least input sensitivity per unit value (no guarantee)."
    )
    formal_guarantee = False
    stages = ("training",)
    Params = SoteriaParams

    def supports(self, model: nn.Module) -> str | None:
        try:
            defended_layer(model, self.params.layer)
        except ValueError as exc:
            return str(exc)
        modules = model.named_modules()
        tracking = [n for n, m in modules if getattr(m, "track_running_stats", False)]
        if tracking:
            return (
                f"soteria cannot score a model whose layers track running statistics "
                f"({', '.join(tracking)}): torch.func cannot differentiate a forward pass "
                "that updates them"
            )
        return None

    def train(self, task: LocalTraining) -> TrainingResult:
        layer = defended_layer(task.model, self.params.layer)
        pruning = _PrunedTraining(task.model, layer, self.params.prune_rate)
        result = train_locally(task, pruning.objective, pruning.prune)
        result.measurements.update(pruning.measurements())
        return result
