"""The gradient-matching engine shared by the optimisation attacks (DLG family).

Given the parameters a client started from and the gradient it uploaded, find a
dummy batch (images and, unless given, soft labels) whose gradient under the
same model matches the upload. Gradients are matched by parameter *name*, never
by position.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Init = Literal["normal", "uniform"]


@dataclass
class MatchResult:
    """Outcome of :func:`match_gradients`.

    Attributes:
        images: ``(B, C, H, W)`` best dummy images, clamped to [0, 1]; ``None``
            if every restart diverged.
        labels: ``(B,)`` int64 labels (given ones, or argmax of the dummy logits).
        loss_curve: gradient distance after each optimiser step of the best restart.
        iterations: optimiser steps taken by the best restart.
        evaluations: objective evaluations (forward + double backward) over all restarts.
        seconds: wall time over all restarts.
        restart_losses: final distance of each restart (``inf`` where it diverged).
        failure: why no restart produced a finite result; empty otherwise.
    """

    images: torch.Tensor | None
    labels: torch.Tensor | None
    loss_curve: list[float] = field(default_factory=list)
    iterations: int = 0
    evaluations: int = 0
    seconds: float = 0.0
    restart_losses: list[float] = field(default_factory=list)
    failure: str = ""


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k p_k log softmax(logits)_k``."""
    return torch.mean(torch.sum(-target_probs * F.log_softmax(logits, dim=-1), dim=-1))


def _dummy_images(shape: tuple[int, ...], init: Init, generator: torch.Generator) -> torch.Tensor:
    if init == "normal":
        return torch.randn(shape, generator=generator)
    return torch.rand(shape, generator=generator)


class _Objective:
    """The L-BFGS closure: gradient distance of the dummy batch; sets the leaves' ``.grad``.

    Only the dummy leaves get gradients; the model's parameters accumulate nothing.
    """

    def __init__(
        self,
        model: nn.Module,
        params: list[torch.Tensor],
        targets: list[torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        soft_labels: bool,
    ) -> None:
        self.model, self.params, self.targets = model, params, targets
        self.x, self.y, self.soft_labels = x, y, soft_labels
        self.leaves = [x, y] if soft_labels else [x]
        self.calls = 0

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        probs = F.softmax(self.y, dim=-1) if self.soft_labels else self.y
        loss = soft_cross_entropy(self.model(self.x), probs)
        grads = torch.autograd.grad(loss, self.params, create_graph=True)
        distance = sum(((g - t) ** 2).sum() for g, t in zip(grads, self.targets, strict=True))
        for leaf, grad in zip(self.leaves, torch.autograd.grad(distance, self.leaves), strict=True):
            leaf.grad = grad
        return distance.detach()


def match_gradients(
    model: nn.Module,
    target: Mapping[str, torch.Tensor],
    *,
    input_shape: tuple[int, int, int],
    batch_size: int,
    num_classes: int,
    labels: torch.Tensor | None = None,
    iterations: int = 300,
    lr: float = 1.0,
    init: Init = "normal",
    restarts: int = 1,
    loss_threshold: float = 0.0,
    max_seconds: float | None = None,
    seed: int = 0,
) -> MatchResult:
    """Minimise ``sum_l ||grad_l(x', y') - target_l||^2`` over dummy data with L-BFGS.

    Args:
        model: the model under attack, carrying the parameters the client
            started from. Its parameters are not modified.
        target: the observed gradient, keyed by parameter name; only parameters
            named here are matched.
        input_shape: ``(C, H, W)`` of one image.
        batch_size: number of images to reconstruct.
        num_classes: size of the label space.
        labels: ``(B,)`` known labels; when ``None`` soft labels are optimised
            jointly (DLG).
        iterations: L-BFGS steps per restart (each up to 20 evaluations).
        lr: L-BFGS learning rate.
        init: dummy image initialisation, ``normal`` = N(0, 1), ``uniform`` = U(0, 1).
        restarts: independent trials; the one with the lowest final distance wins.
        loss_threshold: stop a restart once the distance falls to or below this.
        max_seconds: wall-time budget over all restarts (``None``: no limit).
        seed: seeds the dummy initialisation.
    """
    named = dict(model.named_parameters())
    unknown = sorted(set(target) - set(named))
    if unknown:
        raise KeyError(f"update names parameters the model lacks: {unknown}")
    names = [n for n in named if n in target]
    params = [named[n] for n in names]
    device = params[0].device
    targets = [target[n].to(device=device, dtype=params[0].dtype) for n in names]

    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    best = MatchResult(images=None, labels=None)
    best_loss = math.inf
    evaluations = 0

    for _ in range(restarts):
        x = _dummy_images((batch_size, *input_shape), init, generator).to(device).requires_grad_()
        if labels is None:
            y = torch.randn(batch_size, num_classes, generator=generator).to(device)
            y.requires_grad_()
            leaves = [x, y]
        else:
            y = F.one_hot(labels.to(device), num_classes).float()
            leaves = [x]
        optimizer = torch.optim.LBFGS(leaves, lr=lr, line_search_fn=None)
        closure = _Objective(model, params, targets, x, y, soft_labels=labels is None)
        curve: list[float] = []
        diverged = False
        for _step in range(iterations):
            value = float(optimizer.step(closure))
            if not math.isfinite(value) or not torch.isfinite(x).all():
                diverged = True
                break
            curve.append(value)
            if value <= loss_threshold:
                break
            if max_seconds is not None and time.perf_counter() - start > max_seconds:
                break

        final = math.inf if diverged or not curve else float(closure())
        if not math.isfinite(final):
            final = math.inf
        best.restart_losses.append(final)
        if final < best_loss:
            best_loss = final
            best.images = x.detach().clamp(0, 1)
            best.labels = (y.argmax(dim=-1) if labels is None else labels).detach().long()
            best.loss_curve = curve
            best.iterations = len(curve)
        evaluations += closure.calls
        if best_loss <= loss_threshold:
            break
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break

    best.evaluations = evaluations
    best.seconds = time.perf_counter() - start
    if best.images is None:
        best.failure = "every restart diverged (non-finite gradient distance)"
    return best
