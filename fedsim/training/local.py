"""A client's local training: FedSGD's one gradient of one batch, FedAvg's epochs of SGD.

The ClientApp trains with :func:`train_locally` when no ``training``-stage
defence is configured; a defence that changes what a step computes (MixUp's
mixed batches, Soteria's pruned gradient) calls the same function with its own
``objective`` and ``on_gradients`` instead of rewriting the loop, so its
batches, step count and upload are those of plain training.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedsim.api import LocalTraining, TrainingResult

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(images (B, C, H, W) in [0, 1], labels (B,))`` → the scalar loss of the batch."""

GradientHook = Callable[[torch.Tensor, torch.Tensor], None]
"""Called after each step's backward pass, before the update, with the step's batch
``(images, labels)``; it may change the model's parameters' ``.grad`` in place."""


def fedsgd_positions(n: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Positions of a FedSGD batch among a shard of ``n`` samples (draws from ``generator``).

    Raises:
        ValueError: ``batch_size`` exceeds ``n``.
    """
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the client's {n} samples")
    return torch.randperm(n, generator=generator)[:batch_size]


def train_locally(
    task: LocalTraining, objective: Objective, on_gradients: GradientHook | None = None
) -> TrainingResult:
    """Train ``task.model`` as ``task.protocol`` says and return the upload.

    ``fedsgd``: one batch of ``task.batch_size`` drawn from ``task.generator``; the
    upload is the gradient of ``objective`` on it (the server applies the learning
    rate), one step, ``batch`` that batch. ``fedavg``: ``task.epochs`` passes over the
    shard in an order drawn from ``task.generator``, plain SGD at ``task.lr`` in
    batches of ``task.batch_size`` (the last one smaller); the upload is the weight
    delta θ_after − θ_before, ``batch`` the whole shard, ``loss`` the mean over steps.
    ``on_gradients`` sees every step's gradients before they are used.
    """
    model = task.model
    params = dict(model.named_parameters())

    def gradient_step(x: torch.Tensor, y: torch.Tensor) -> float:
        model.zero_grad(set_to_none=True)
        loss = objective(x, y)
        loss.backward()
        if on_gradients is not None:
            on_gradients(x, y)
        return loss.item()

    if task.protocol == "fedsgd":
        idx = fedsgd_positions(len(task.labels), task.batch_size, task.generator)
        x, y = task.images[idx], task.labels[idx]
        loss = gradient_step(x, y)
        gradient = {n: _grad(p) for n, p in params.items()}
        return TrainingResult(gradient, loss, 1, (x, y), len(y))
    before = {n: p.detach().clone() for n, p in params.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=task.lr)
    steps, loss_sum = 0, 0.0
    for _ in range(task.epochs):
        order = torch.randperm(len(task.labels), generator=task.generator)
        for start in range(0, len(task.labels), task.batch_size):
            idx = order[start : start + task.batch_size]
            loss_sum += gradient_step(task.images[idx], task.labels[idx])
            optimizer.step()
            steps += 1
    delta = {n: p.detach() - before[n] for n, p in params.items()}
    shard = (task.images, task.labels)
    return TrainingResult(delta, loss_sum / steps, steps, shard, len(task.labels))


def _grad(param: torch.nn.Parameter) -> torch.Tensor:
    """``param``'s gradient, zeros where the objective does not reach it."""
    return param.grad.detach().clone() if param.grad is not None else torch.zeros_like(param)
