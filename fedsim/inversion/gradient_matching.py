"""The gradient-matching engine shared by the optimisation attacks (DLG family).

Given the parameters a client started from and the gradient it uploaded, find a
dummy batch (images and, unless given, soft labels) whose gradient under the
same model matches the upload. Gradients are matched by parameter *name*, never
by position. The parts are interchangeable: a gradient distance (a key of
:data:`DISTANCES`, or any :class:`Distance` factory), an image prior (total
variation), an optimiser (L-BFGS or Adam) and a budget. DLG, iDLG, WDLG and
Inverting Gradients are configurations of this one loop.

Contract of :func:`match_gradients`: the target gradient is keyed by parameter
name, each tensor shaped like the model's parameter of that name (a FedAvg delta
must be converted first, or matched through :class:`LocalSGD`); it returns
``(B, C, H, W)`` images clamped to [0, 1] and ``(B,)`` int64 labels
(:class:`MatchResult`), seeded by ``seed`` alone. Attacks run it on an
observation through :mod:`fedsim.inversion.matching`.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedsim.api import Regulariser
from fedsim.inversion.labels import find_head
from fedsim.inversion.lbfgs import LBFGS

Init = Literal["normal", "uniform"]
Optimizer = Literal["lbfgs", "adam"]
LabelInit = Literal["random", "gradient_sign"]
ConvBackend = Literal["default", "native", "auto"]
StopReason = Literal["threshold", "converged", "stalled", "budget", "time", "diverged"]
"""Why a restart stopped: the objective reached ``loss_threshold`` (or ``on_step``
asked to stop); it plateaued low (``converged``) or high (``stalled``, see
:func:`plateaued`); it used its ``iterations`` (``budget``) or the search its
``max_seconds`` (``time``); or it became non-finite (``diverged``)."""
StepCallback = Callable[[int, torch.Tensor], "bool | None"]
"""``on_step(step, images)`` of :func:`match_gradients`: called after every optimiser
step with the 0-based step index and the current dummy images (detached, not
clamped); returning ``True`` stops the search."""


class Distance(ABC):
    """A distance between a dummy gradient and the target, both lists of tensors
    in the same (parameter-name) order. One instance serves one restart, so it
    may keep state (e.g. a critic trained alongside the images)."""

    def __init__(self, targets: list[torch.Tensor]) -> None:
        self.targets = targets

    @abstractmethod
    def __call__(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """The distance, differentiable with respect to ``grads``."""


class SquaredL2(Distance):
    """``Σ_l ||g_l − t_l||²`` (DLG), computed on the concatenated gradient (one
    subtraction and one dot product instead of a chain of small ops per layer)."""

    def __init__(self, targets: list[torch.Tensor]) -> None:
        super().__init__(targets)
        self.flat_target = torch.cat([t.flatten() for t in targets])

    def __call__(self, grads: list[torch.Tensor]) -> torch.Tensor:
        diff = torch.cat([g.flatten() for g in grads]) - self.flat_target
        return torch.dot(diff, diff)


class Cosine(Distance):
    """``1 − <g, t> / (||g|| ||t||)`` over all matched parameters together (Geiping et al.)."""

    def __init__(self, targets: list[torch.Tensor]) -> None:
        super().__init__(targets)
        self.target_norm = torch.sqrt(sum((t**2).sum() for t in targets))  # type: ignore[arg-type]

    def __call__(self, grads: list[torch.Tensor]) -> torch.Tensor:
        dot = sum((g * t).sum() for g, t in zip(grads, self.targets, strict=True))
        norm = torch.sqrt(sum((g**2).sum() for g in grads))  # type: ignore[arg-type]
        return 1 - dot / (norm * self.target_norm + 1e-12)


class Wasserstein1D(Distance):
    """Closed-form W1 between the 1-D empirical distributions of each parameter's
    gradient entries (sort both, mean absolute difference), summed over parameters."""

    def __call__(self, grads: list[torch.Tensor]) -> torch.Tensor:
        return sum(  # type: ignore[return-value]
            (torch.sort(g.flatten())[0] - torch.sort(t.flatten())[0]).abs().mean()
            for g, t in zip(grads, self.targets, strict=True)
        )


DistanceFactory = Callable[[list[torch.Tensor]], Distance]

DISTANCES: dict[str, DistanceFactory] = {
    "l2": SquaredL2,
    "cosine": Cosine,
    "wasserstein_1d": Wasserstein1D,
}
"""Named gradient distances; an attack may also pass its own factory."""


@dataclass(frozen=True)
class LocalSGD:
    """A client's local training, as the unrolled objective simulates it.

    ``steps`` plain SGD steps of learning rate ``lr`` (the client's optimiser, no
    momentum) on mini-batches of ``batch_size`` taken in order from the dummy
    samples, wrapping round after the last one (a new epoch). The client shuffles
    its shard every epoch; the attacker does not know that order. Within one epoch
    the order costs nothing (the dummy samples are free), so the simulation is exact
    when the shard fits one mini-batch or the client ran a single epoch.
    """

    steps: int
    lr: float
    batch_size: int

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"local SGD needs steps ≥ 1, batch_size ≥ 1 and lr > 0, got {self}")


@dataclass(frozen=True)
class MatchConfig:
    """How to search for the dummy batch.

    Attributes:
        distance: a key of :data:`DISTANCES` or a factory ``targets -> Distance``.
        optimizer: ``lbfgs`` (each step up to 20 evaluations) or ``adam``.
        lr: optimiser learning rate.
        iterations: optimiser steps per restart.
        init: dummy images from N(0, 1) (``normal``) or U(0, 1) (``uniform``).
        restarts: independent trials; the lowest final distance wins.
        loss_threshold: stop a restart once the objective is at or below this.
        max_seconds: wall-time budget over all restarts.
        tolerance: convergence stop: a restart ends once its best objective so far
            improved by at most ``tolerance`` (relative) over the last ``window`` steps
            (:func:`plateaued`). ``0`` (or ``window=None``) disables it.
        window: steps over which the improvement is measured (optimiser steps of
            this config, i.e. what ``iterations`` counts).
        stall_loss: a plateau with the best objective above this value (the
            objective's own units, e.g. squared gradient distance for ``l2``) is a
            ``stalled`` restart: the next restart, if any, runs. At or below it the
            restart ``converged`` and, like the threshold, ends the search.
        tv_weight: weight of the total-variation prior on the images.
        clamp: project the images into [0, 1] after every step.
        signed: step on the sign of the image gradient (Inverting Gradients; Adam only).
        lr_schedule: ``multistep`` divides the lr by 10 at 3/8, 5/8 and 7/8 of the
            iterations; ``cosine`` anneals it as ``lr · (1 + cos(π t / iterations)) / 2``
            (Adam only).
        history_size: L-BFGS memory (curvature pairs kept).
        max_iter: L-BFGS iterations inside one optimiser step (PyTorch's ``max_iter``).
            The loss threshold, the time budget and ``on_step`` are checked between
            steps, so a small value stops sooner; L-BFGS keeps its memory across steps.
        line_search: ``None`` (fixed step ``lr``, as in DLG) or ``strong_wolfe`` (L-BFGS only).
        label_init: with soft labels, dummy label logits from N(0, 1) (``random``), or
            N(0, 1) plus ``label_boost`` on every class whose entry of the head's bias
            gradient (weight-row sum without a bias) is negative (``gradient_sign``;
            for one sample exactly the true class). Needs a linear head with
            ``num_classes`` outputs among the matched parameters.
        label_boost: logit added to the classes ``gradient_sign`` picks.
        ignored: names of parameters left out of the distance although the target holds
            them (an attack that ignores a defended layer); every other parameter named in
            the target is matched. ``label_init`` still reads the head's target gradient.
        unroll: ``None`` matches the dummy batch's gradient to the target (FedSGD, or a
            FedAvg delta treated as a gradient). A :class:`LocalSGD` matches instead the
            simulated local training's pseudo-gradient ``(θ₀ − θ_T) / (lr · T)`` (the
            unrolled objective for FedAvg updates; the target must be
            ``-delta / (lr · T)``, what :meth:`Observation.gradient_estimate` returns).
            With one step the two coincide.
        conv_backend: CPU convolutions through PyTorch's default (oneDNN when built in),
            ``native`` (oneDNN off: ATen's im2col kernels, far cheaper for tiny
            convolutions such as LeNet's double backward) or ``auto`` (time a few
            objective evaluations with each, once per call, and keep the faster). The
            flag is process-wide and only set while :func:`match_gradients` runs.
    """

    distance: str | DistanceFactory = "l2"
    optimizer: Optimizer = "lbfgs"
    lr: float = 1.0
    iterations: int = 300
    init: Init = "normal"
    restarts: int = 1
    loss_threshold: float = 0.0
    max_seconds: float | None = None
    tolerance: float = 0.0
    window: int | None = None
    stall_loss: float = math.inf
    tv_weight: float = 0.0
    clamp: bool = False
    signed: bool = False
    lr_schedule: Literal["none", "multistep", "cosine"] = "none"
    history_size: int = 100
    max_iter: int = 20
    line_search: Literal["strong_wolfe"] | None = None
    label_init: LabelInit = "random"
    label_boost: float = 5.0
    ignored: frozenset[str] = frozenset()
    unroll: LocalSGD | None = None
    conv_backend: ConvBackend = "default"


@dataclass
class MatchResult:
    """Outcome of :func:`match_gradients`.

    Attributes:
        images: ``(B, C, H, W)`` best dummy images, clamped to [0, 1]; ``None``
            if every restart diverged.
        labels: ``(B,)`` int64 labels (given ones, or argmax of the dummy logits).
        loss_curve: objective after each optimiser step of the best restart.
        iterations: optimiser steps taken by the best restart.
        evaluations: objective evaluations (forward + double backward) over all
            restarts, including those ``conv_backend="auto"`` spends on timing.
        conv_backend: the CPU convolution backend used (``default`` or ``native``).
        seconds: wall time over all restarts.
        restart_losses: final objective of each restart (``inf`` where it diverged).
        restart_stops: why each restart stopped (:data:`StopReason`) and after how
            many steps, as ``{"stop_reason": ..., "stopped_at": ...}``.
        stop_reason: why the best restart stopped (``""`` if none produced a result).
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
    conv_backend: str = "default"
    restart_stops: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str = ""

    def diagnostics(self) -> dict[str, object]:
        """The JSON-serialisable numbers attacks report."""
        return {
            "loss_curve": self.loss_curve,
            "iterations": self.iterations,
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "restart_losses": self.restart_losses,
            "stop_reason": self.stop_reason,
            "stopped_at": self.iterations,
            "restart_stops": self.restart_stops,
            "final_loss": min(self.restart_losses) if self.restart_losses else None,
        }


def plateaued(best: Sequence[float], tolerance: float, window: int | None) -> bool:
    """Whether a running best objective has stopped improving.

    ``best`` holds, per optimiser step so far, the lowest objective value reached
    (non-increasing). True when ``best[-1-window] - best[-1] <= tolerance ·
    |best[-1-window]|``: over the last ``window`` steps the best value improved by at
    most the fraction ``tolerance`` of itself. False while there are at most
    ``window`` steps, and always when ``tolerance <= 0`` or ``window`` is ``None``
    (the stop is off).
    """
    if tolerance <= 0 or window is None or len(best) <= window:
        return False
    before = best[-1 - window]
    return before - best[-1] <= tolerance * abs(before)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``-sum_k p_k log softmax(logits)_k``."""
    return torch.mean(torch.sum(-target_probs * F.log_softmax(logits, dim=-1), dim=-1))


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels of ``(B, C, H, W)`` images."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    return dx + dy


def unrolled_gradient(
    model: nn.Module,
    names: list[str],
    images: torch.Tensor,
    probs: torch.Tensor,
    local: LocalSGD,
) -> list[torch.Tensor]:
    """The pseudo-gradient ``(θ₀ − θ_T) / (lr · T)`` of ``local``'s SGD steps on a batch.

    Differentiable with respect to ``images`` and ``probs`` (the graph is kept):
    every step runs the model functionally (:func:`torch.func.functional_call`) on
    the current parameters, starting from ``model``'s own. Returns one tensor per
    name in ``names`` (parameters of ``model``).
    """
    start = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    theta: dict[str, torch.Tensor] = dict(start)
    per_epoch = math.ceil(len(images) / local.batch_size)
    for step in range(local.steps):
        first = (step % per_epoch) * local.batch_size
        batch = slice(first, first + local.batch_size)
        logits = functional_call(model, {**theta, **buffers}, (images[batch],))
        loss = soft_cross_entropy(logits, probs[batch])
        grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
        theta = {k: v - local.lr * g for (k, v), g in zip(theta.items(), grads, strict=True)}
    scale = 1.0 / (local.lr * local.steps)
    return [(start[k] - theta[k]) * scale for k in names]


class _Objective:
    """The optimiser's closure: distance (+ prior) of the dummy batch; sets the
    leaves' ``.grad``. Only the dummy leaves get gradients, never the model. Each
    closure gets a fresh distance (some distances keep state)."""

    def __init__(
        self,
        model: nn.Module,
        matched: _Matched,
        x: torch.Tensor,
        y: torch.Tensor,
        soft_labels: bool,
        config: MatchConfig,
        regulariser: Regulariser | None = None,
    ) -> None:
        self.model, self.matched = model, matched
        self.distance: Distance = matched.distance(matched.targets)
        self.x, self.y, self.soft_labels, self.config = x, y, soft_labels, config
        self.regulariser = regulariser
        self.leaves = [x, y] if soft_labels else [x]
        self.calls = 0

    def dummy_gradient(self, probs: torch.Tensor) -> list[torch.Tensor]:
        """What the dummy batch would upload, on the target's scale (kept in the graph)."""
        if self.config.unroll is not None:
            return unrolled_gradient(
                self.model, self.matched.names, self.x, probs, self.config.unroll
            )
        loss = soft_cross_entropy(self.model(self.x), probs)
        if self.regulariser is not None:
            loss = loss + self.regulariser(self.x)
        return list(torch.autograd.grad(loss, self.matched.params, create_graph=True))

    def __call__(self) -> torch.Tensor:
        self.calls += 1
        probs = F.softmax(self.y, dim=-1) if self.soft_labels else self.y
        objective = self.distance(self.dummy_gradient(probs))
        if self.config.tv_weight:
            objective = objective + self.config.tv_weight * total_variation(self.x)
        grads = torch.autograd.grad(objective, self.leaves)
        for leaf, grad in zip(self.leaves, grads, strict=True):
            leaf.grad = grad.sign() if self.config.signed and leaf is self.x else grad
        return objective.detach()


def _dummy_images(shape: tuple[int, ...], init: Init, generator: torch.Generator) -> torch.Tensor:
    if init == "normal":
        return torch.randn(shape, generator=generator)
    return torch.rand(shape, generator=generator)


def _optimizer(
    leaves: list[torch.Tensor], config: MatchConfig
) -> LBFGS | torch.optim.LBFGS | torch.optim.Adam:
    """L-BFGS with a fixed step is fedsim's (:mod:`fedsim.inversion.lbfgs`: PyTorch's
    algorithm, its history as matrices); with a line search, PyTorch's."""
    if config.optimizer == "adam":
        return torch.optim.Adam(leaves, lr=config.lr)
    if config.line_search is None:
        return LBFGS(
            leaves, lr=config.lr, max_iter=config.max_iter, history_size=config.history_size
        )
    return torch.optim.LBFGS(
        leaves, lr=config.lr, max_iter=config.max_iter, history_size=config.history_size,
        line_search_fn=config.line_search,
    )  # fmt: skip


def _scheduler(
    optimizer: torch.optim.Optimizer, config: MatchConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if config.lr_schedule == "multistep":
        milestones = [round(config.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.iterations)
    return None


def _dummy_logits(
    config: MatchConfig,
    batch_size: int,
    num_classes: int,
    model: nn.Module,
    target: Mapping[str, torch.Tensor],
    generator: torch.Generator,
) -> torch.Tensor:
    logits = torch.randn(batch_size, num_classes, generator=generator)
    if config.label_init == "gradient_sign":
        head = find_head(model, num_classes)
        if head.bias is not None and head.bias in target:
            signal = target[head.bias].detach().cpu()
        elif head.weight in target:
            signal = target[head.weight].detach().cpu().sum(dim=1)
        else:
            raise ValueError("label_init='gradient_sign' needs the head's gradient in the update")
        logits = logits + config.label_boost * (signal < 0).float()
    return logits


def _dummy_batch(
    config: MatchConfig,
    shape: tuple[int, ...],
    num_classes: int,
    labels: torch.Tensor | None,
    model: nn.Module,
    target: Mapping[str, torch.Tensor],
    generator: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A restart's starting point: images ``shape`` and, without ``labels``, soft-label
    logits (both leaves requiring grad); with ``labels``, their one-hot encoding."""
    x = _dummy_images(shape, config.init, generator).to(device).requires_grad_()
    if labels is not None:
        return x, F.one_hot(labels.to(device), num_classes).float()
    logits = _dummy_logits(config, shape[0], num_classes, model, target, generator)
    return x, logits.to(device).requires_grad_()


@contextmanager
def _onednn(enabled: bool) -> Iterator[None]:
    """Turn PyTorch's oneDNN (mkldnn) CPU kernels on or off, restoring the flag after."""
    # A property of the module object at run time (a bool), declared as its descriptor.
    mkldnn: Any = torch.backends.mkldnn
    before = mkldnn.enabled
    mkldnn.enabled = enabled
    try:
        yield
    finally:
        mkldnn.enabled = before


def _time_backends(evaluate: Callable[[], object], rounds: int = 3) -> tuple[ConvBackend, int]:
    """Fastest CPU convolution backend for ``evaluate`` and the evaluations spent.

    Alternates the two backends (so a change in machine load hits both) after one
    warm-up each and compares the best time of ``rounds`` evaluations.
    """
    best: dict[ConvBackend, float] = {"default": math.inf, "native": math.inf}
    for trial in range(rounds + 1):
        for backend in best:
            with _onednn(backend == "default"):
                tick = time.perf_counter()
                evaluate()
                if trial:
                    best[backend] = min(best[backend], time.perf_counter() - tick)
    return min(best, key=best.__getitem__), 2 * (rounds + 1)


def match_gradients(
    model: nn.Module,
    target: Mapping[str, torch.Tensor],
    *,
    input_shape: tuple[int, int, int],
    batch_size: int,
    num_classes: int,
    labels: torch.Tensor | None = None,
    config: MatchConfig = MatchConfig(),
    seed: int = 0,
    on_step: StepCallback | None = None,
    regulariser: Regulariser | None = None,
) -> MatchResult:
    """Search for a dummy batch whose gradient matches ``target``.

    Args:
        model: the model under attack, carrying the parameters the client
            started from. Its parameters are not modified.
        target: the observed gradient, keyed by parameter name; only parameters
            named here and not in ``config.ignored`` are matched.
        input_shape: ``(C, H, W)`` of one image.
        batch_size: number of images to reconstruct.
        num_classes: size of the label space.
        labels: ``(B,)`` known or recovered labels; when ``None`` soft labels are
            optimised jointly (DLG).
        config: distance, prior, optimiser and budget.
        seed: seeds the dummy initialisation.
        on_step: optional :data:`StepCallback`, called after every optimiser step
            of every restart; returning ``True`` ends the search as if the loss
            threshold had been reached (the current restart is scored as usual).
        regulariser: the clients' loss beyond cross-entropy as a function of the
            images, built on ``model`` (e.g. racecar training's); the dummy
            gradient is then that of cross-entropy + regulariser, like the upload.

    Raises:
        KeyError: ``target`` or ``config.ignored`` names a parameter the model lacks.
        ValueError: ``label_init="gradient_sign"`` without a usable head gradient, or
            ``config.ignored`` leaves no parameter of ``target`` to match.
    """
    backend = config.conv_backend
    evaluations = 0
    if backend == "auto":
        if next(model.parameters()).device.type != "cpu" or not torch.backends.mkldnn.enabled:
            backend = "default"
        else:
            # Time the objective at a throwaway start point (a fresh distance: some keep state).
            matched = _matched(model, target, config)
            x, y = _dummy_batch(
                config, (batch_size, *input_shape), num_classes, labels, model, target,
                torch.Generator().manual_seed(seed), matched.params[0].device,
            )  # fmt: skip
            probe = _Objective(model, matched, x, y, labels is None, config, regulariser)
            backend, evaluations = _time_backends(probe)
    with _onednn(bool(torch.backends.mkldnn.enabled) and backend != "native"):
        result = _match(
            model, target, input_shape, batch_size, num_classes, labels, config, seed, on_step,
            regulariser,
        )  # fmt: skip
    result.evaluations += evaluations
    result.conv_backend = backend
    return result


@dataclass(frozen=True)
class _Matched:
    """The matched parameters (names and tensors, in the model's order), their
    targets, and the distance factory."""

    names: list[str]
    params: list[torch.Tensor]
    targets: list[torch.Tensor]
    distance: DistanceFactory


def _matched(model: nn.Module, target: Mapping[str, torch.Tensor], config: MatchConfig) -> _Matched:
    named = dict(model.named_parameters())
    unknown = sorted(set(target) - set(named))
    if unknown:
        raise KeyError(f"update names parameters the model lacks: {unknown}")
    unknown = sorted(config.ignored - set(named))
    if unknown:
        raise KeyError(f"ignored names parameters the model lacks: {unknown}")
    names = [n for n in named if n in target and n not in config.ignored]
    if not names:
        raise ValueError("every parameter of the update is ignored: nothing left to match")
    params: list[torch.Tensor] = [named[n] for n in names]
    targets = [target[n].to(device=params[0].device, dtype=params[0].dtype) for n in names]
    make_distance = (
        DISTANCES[config.distance] if isinstance(config.distance, str) else config.distance
    )
    return _Matched(names, params, targets, make_distance)


def _match(
    model: nn.Module,
    target: Mapping[str, torch.Tensor],
    input_shape: tuple[int, int, int],
    batch_size: int,
    num_classes: int,
    labels: torch.Tensor | None,
    config: MatchConfig,
    seed: int,
    on_step: StepCallback | None,
    regulariser: Regulariser | None,
) -> MatchResult:
    matched = _matched(model, target, config)
    device = matched.params[0].device

    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    best = MatchResult(images=None, labels=None)
    best_loss = math.inf
    evaluations = 0

    def out_of_time() -> bool:
        return config.max_seconds is not None and time.perf_counter() - start > config.max_seconds

    for _ in range(config.restarts):
        x, y = _dummy_batch(
            config, (batch_size, *input_shape), num_classes, labels, model, target, generator,
            device,
        )  # fmt: skip
        closure = _Objective(model, matched, x, y, labels is None, config, regulariser)
        optimizer = _optimizer(closure.leaves, config)
        scheduler = _scheduler(optimizer, config)
        curve: list[float] = []
        running_best: list[float] = []
        reason: StopReason = "budget"
        stop = False
        for step in range(config.iterations):
            if isinstance(optimizer, LBFGS | torch.optim.LBFGS):  # config.optimizer == "lbfgs"
                value = float(optimizer.step(closure))
            else:
                value = float(closure())
                optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if config.clamp:
                with torch.no_grad():
                    x.clamp_(0, 1)
            if not math.isfinite(value) or not torch.isfinite(x).all():
                reason = "diverged"
                break
            curve.append(value)
            running_best.append(min(value, running_best[-1]) if running_best else value)
            if on_step is not None and on_step(step, x.detach()):
                stop = True
            if stop or value <= config.loss_threshold:
                reason = "threshold"
            elif plateaued(running_best, config.tolerance, config.window):
                reason = "stalled" if running_best[-1] > config.stall_loss else "converged"
            elif out_of_time():
                reason = "time"
            else:
                continue
            break

        final = math.inf if reason == "diverged" or not curve else float(closure())
        if not math.isfinite(final):
            final = math.inf
        best.restart_losses.append(final)
        best.restart_stops.append({"stop_reason": reason, "stopped_at": len(curve)})
        if final < best_loss:
            best_loss = final
            best.images = x.detach().clamp(0, 1)
            best.labels = (y.argmax(dim=-1) if labels is None else labels).detach().long()
            best.loss_curve = curve
            best.iterations = len(curve)
            best.stop_reason = reason
        evaluations += closure.calls
        if stop or reason == "converged" or best_loss <= config.loss_threshold or out_of_time():
            break

    best.evaluations = evaluations
    best.seconds = time.perf_counter() - start
    if best.images is None:
        best.failure = "every restart diverged (non-finite objective)"
    return best
