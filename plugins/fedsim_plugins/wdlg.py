"""WDLG — Wasserstein Deep Leakage from Gradients (Z. Wang, C. Peng, X. He and W. Tan,
"Wasserstein Distance-Based Deep Leakage from Gradients", Entropy 25(5):810, 2023,
doi:10.3390/e25050810).

DLG's loop with the labels recovered first (iDLG rule / batch counts) and the
squared L2 distance replaced by a Wasserstein-1 distance between the dummy and
the true gradient. Two variants:

``critic`` (the paper's algorithm, default): the dummy and true gradients are
point masses in gradient space, and W1 is estimated through the
Kantorovich–Rubinstein dual ``sup_{||f||_L ≤ 1} f(∇W') − f(∇W)`` by a critic
``f`` trained alongside the images, both on one function, the critic's
objective ``f(∇W') − f(∇W)`` (minus the gradient penalty under ``penalty``):
before every evaluation the critic takes ``critic_steps`` ascent steps on it
(warm-started from the previous evaluation), then the images descend it, and
its value is what the loss curve and ``loss_threshold`` see. The critic's
Lipschitz constraint is selectable (``constraint``):

- ``projection``: a linear critic ``f(v) = wᵀv`` whose Lipschitz constant ``||w||₂``
  is kept ≤ 1 by projecting ``w`` onto the unit ball after each normalised ascent
  step. Between two point masses the optimal 1-Lipschitz critic is linear, so this
  is the exact constraint, and the optimum is ``‖∇W' − ∇W‖₂``.
- ``clip`` (original WGAN, Arjovsky et al., ICML 2017, arXiv:1701.07875): every
  critic weight clipped to ``[−clip_value, clip_value]`` after each step. For a
  linear critic the box ``|w_i| ≤ c`` makes the optimum ``w = c·sign(∇W' − ∇W)`` and
  the critic an L1 distance ``c‖∇W' − ∇W‖₁``; with an MLP of width ``h`` on ``n``
  inputs the Lipschitz constant is bounded by ``c²·h·√n`` (product of the layers'
  spectral norms, each at most its Frobenius norm).
- ``penalty`` (WGAN-GP, Gulrajani et al., NeurIPS 2017, arXiv:1704.00028): the
  critic maximises ``f(∇W') − f(∇W) − λ·E[(‖∇f(v̂)‖₂ − 1)²]`` with ``v̂`` drawn
  uniformly on the segment between the two gradients. For a linear critic ``∇f = w``
  everywhere, so the penalty is ``λ(‖w‖ − 1)²`` on the weight norm: the maximiser is
  ``w = (1 + Δ/2λ)·u`` with ``Δ = ‖∇W' − ∇W‖₂`` and ``u`` the unit difference. The
  penalty is a soft, two-sided version of the projection (onto the unit sphere
  rather than the ball) that tends to it as ``λ → ∞``. At the maximiser the
  objective, ``wᵀ(∇W' − ∇W) − λ(‖w‖ − 1)²``, is ``Δ + Δ²/4λ``: W1 plus DLG's squared
  L2 distance with weight ``1/4λ``. Its gradient in ``∇W'`` is ``w`` (the penalty
  does not depend on ``∇W'``), ``(1 + Δ/2λ)·u``, the derivative of ``Δ + Δ²/4λ`` —
  the unpenalised part alone, ``wᵀ(∇W' − ∇W) = Δ + Δ²/2λ``, is not the function the
  images descend. A smooth MLP critic near-linear on the segment behaves alike (its
  gradient norm settles near ``1 + Δ/2λ``, not 1); its penalty depends on ``∇W'``
  through the interpolates, and the images get that part of the gradient too.

``critic`` picks the critic: ``linear`` (``wᵀv``, no bias: it would cancel) or
``mlp`` (one hidden layer of ``critic_width`` Softplus units; Softplus keeps the
image objective twice differentiable, which L-BFGS needs, and is 1-Lipschitz).
Between two point masses the linear critic loses nothing; the MLP is the WGAN
papers' form. Linear critics step in closed form (:class:`LinearCritic`); MLP
critics with their paper's optimiser: ``clip`` RMSProp (lr 5e-5), ``penalty``
Adam (lr 1e-4, betas (0, 0.9)); ``critic_lr`` overrides the lr.

Default: ``penalty`` with the linear critic and ``λ = 0.3``, measured best on the
``wdlg_vs_dlg`` scenario (``benchmarks/wdlg_constraints.py``,
docs/experiments/wdlg-critic-constraint.md; six digits, two runs): 6/6 digits recovered
at ≥ 30 dB in both, against 0–1/6 for the projection (which reaches 30 dB first but then
collapses: L-BFGS on the non-smooth ``‖·‖₂``), 2–3/6 for clipping, 0–1/6 for WGAN-GP's
``λ = 10`` and 0/6 for the MLP critics. Smaller ``λ`` weighs the squared-L2 part of ``Δ
+ Δ²/4λ`` more; the squared L2 alone did as well (6/6).

``exact_1d``: the gradient entries of each parameter are treated as 1-D
empirical distributions and W1 is computed in closed form (sort both, mean
absolute difference). It ignores which coordinate holds which value, and our
measurements (docs/experiments/wdlg-vs-dlg.md) show it does not reconstruct
images: it is kept as the comparison the paper's framing invites.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from fedsim.api import Observation
from fedsim.inversion.gradient_matching import Distance, MatchConfig
from fedsim.inversion.matching import MatchingAttack, MatchingParams

Constraint = Literal["projection", "clip", "penalty"]
CriticKind = Literal["linear", "mlp"]
INTERPOLATES = 4
"""Points ``v̂`` on the segment between the two gradients per gradient-penalty step."""
CLIP_LR = 5e-5
"""RMSProp lr of the weight-clipped MLP critic (Arjovsky et al. 2017, Algorithm 1)."""
PENALTY_LR = 1e-4
"""Adam lr of the gradient-penalised MLP critic (Gulrajani et al. 2017, Algorithm 1)."""


def _flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


class Critic(Distance):
    """KR-dual estimate of W1 between point masses at the dummy and the true gradient,
    with a critic ``f`` trained alongside the images under a Lipschitz constraint.

    One instance serves one restart. Critic and images play on one function, the
    critic's objective :meth:`value` (``f(dummy) − f(target)``, minus the gradient
    penalty where there is one): each call first trains the critic on the current
    dummy gradient (``steps`` ascent steps on it), then returns it, differentiable
    with respect to the dummy gradient. So the objective recorded (loss curve,
    threshold) is the function whose gradient the images follow; with the critic at
    its optimum that gradient is the one of the dual value ``max_f value``
    (envelope theorem).
    """

    def __init__(self, targets: list[torch.Tensor], steps: int) -> None:
        super().__init__(targets)
        self.target = _flatten(targets).detach()
        self.steps = steps

    @abstractmethod
    def value(self, dummy: torch.Tensor) -> torch.Tensor:
        """The critic's objective for a flattened gradient ``dummy``: ``f(dummy) −
        f(target)``, minus ``λ`` times the gradient penalty under ``penalty``."""

    @abstractmethod
    def train(self, dummy: torch.Tensor) -> None:
        """``steps`` ascent steps of the critic on ``dummy`` (detached)."""

    def __call__(self, grads: list[torch.Tensor]) -> torch.Tensor:
        dummy = _flatten(grads)
        self.train(dummy.detach())
        return self.value(dummy)


class LinearCritic(Critic):
    """``f(v) = wᵀv`` (no bias: it cancels), ``w`` starting at 0; its Lipschitz constant
    is ``‖w‖₂``. Ascent steps in closed form (``∂/∂w [wᵀ(d − t)] = d − t``):

    - ``projection``: a step of length ``step_size`` along ``d − t``, then ``w`` onto the
      unit ball;
    - ``clip``: the same step, then every ``w_i`` into ``[−c, c]``;
    - ``penalty``: a plain gradient step of ``1/2λ`` on ``wᵀ(d − t) − λ(‖w‖ − 1)²`` (the
      penalised objective is 2λ-smooth along ``w``; a fixed-length step would oscillate
      around the optimal norm ``1 + Δ/2λ``). Once ``w`` points along ``d − t`` (after
      one step from ``w = 0``), the next step lands on the maximiser.
    """

    def __init__(
        self,
        targets: list[torch.Tensor],
        *,
        constraint: Constraint,
        steps: int,
        step_size: float,
        clip_value: float,
        penalty_weight: float,
    ) -> None:
        super().__init__(targets, steps)
        self.weight = torch.zeros_like(self.target)
        self.constraint, self.step_size = constraint, step_size
        self.clip_value, self.penalty_weight = clip_value, penalty_weight

    def value(self, dummy: torch.Tensor) -> torch.Tensor:
        dual = self.weight @ dummy - self.weight @ self.target
        if self.constraint != "penalty":
            return dual
        return dual - self.penalty_weight * (self.weight.norm() - 1) ** 2

    def train(self, dummy: torch.Tensor) -> None:
        ascent = dummy - self.target
        direction = ascent / ascent.norm().clamp_min(1e-30)
        for _ in range(self.steps):
            if self.constraint == "penalty":
                norm = self.weight.norm()
                radial = 2 * self.penalty_weight * (norm - 1) / norm.clamp_min(1e-30)
                self.weight += (ascent - radial * self.weight) / (2 * self.penalty_weight)
                continue
            self.weight += self.step_size * direction
            if self.constraint == "projection":
                self.weight /= self.weight.norm().clamp_min(1.0)
            else:
                self.weight.clamp_(-self.clip_value, self.clip_value)


class MLPCritic(Critic):
    """``f(v) = aᵀ softplus(Wv + b) + c`` with ``width`` hidden units (Softplus keeps the
    image objective twice differentiable, which L-BFGS needs, and is 1-Lipschitz, so
    ``‖a‖₂·‖W‖₂`` bounds the Lipschitz constant). Weights U(±1/√fan_in) from ``seed``.

    - ``clip`` (WGAN): RMSProp (``lr``, default 5e-5), then every weight into ``[−c, c]``;
    - ``penalty`` (WGAN-GP): Adam (``lr``, default 1e-4, betas (0, 0.9)) on
      ``f(d) − f(t) − λ·mean (‖∇f(v̂)‖₂ − 1)²`` over :data:`INTERPOLATES` points ``v̂``
      drawn uniformly on the segment from ``t`` to ``d``.
    """

    def __init__(
        self,
        targets: list[torch.Tensor],
        *,
        constraint: Constraint,
        steps: int,
        width: int,
        lr: float | None,
        clip_value: float,
        penalty_weight: float,
        seed: int,
    ) -> None:
        super().__init__(targets, steps)
        if constraint == "projection":
            raise ValueError("the projection constraint needs a linear critic")
        self.generator = torch.Generator().manual_seed(seed)
        first, last = nn.Linear(self.target.numel(), width), nn.Linear(width, 1)
        self.network = nn.Sequential(first, nn.Softplus(), last)
        for layer in (first, last):
            bound = 1 / math.sqrt(layer.in_features)
            nn.init.uniform_(layer.weight, -bound, bound, generator=self.generator)
            nn.init.uniform_(layer.bias, -bound, bound, generator=self.generator)
        self.network.to(self.target.device)
        self.constraint, self.clip_value, self.penalty_weight = (
            constraint, clip_value, penalty_weight,
        )  # fmt: skip
        params = self.network.parameters()
        self.optimizer: torch.optim.Optimizer = (
            torch.optim.RMSprop(params, lr=lr or CLIP_LR)
            if constraint == "clip"
            else torch.optim.Adam(params, lr=lr or PENALTY_LR, betas=(0.0, 0.9))
        )

    def value(self, dummy: torch.Tensor) -> torch.Tensor:
        dual = (self.network(dummy[None]) - self.network(self.target[None])).squeeze()
        if self.constraint != "penalty":
            return dual
        return dual - self.penalty_weight * self.penalty(dummy)

    def penalty(self, dummy: torch.Tensor) -> torch.Tensor:
        """``mean (‖∇f(v̂)‖₂ − 1)²`` over :data:`INTERPOLATES` points ``v̂`` on the segment."""
        eps = torch.rand(INTERPOLATES, 1, generator=self.generator).to(dummy.device)
        points = (self.target + eps * (dummy - self.target)).requires_grad_()
        (grads,) = torch.autograd.grad(self.network(points).sum(), points, create_graph=True)
        return ((grads.norm(dim=1) - 1) ** 2).mean()

    def train(self, dummy: torch.Tensor) -> None:
        with torch.enable_grad():
            for _ in range(self.steps):
                self.optimizer.zero_grad()
                (-self.value(dummy)).backward()
                self.optimizer.step()
                if self.constraint == "clip":
                    with torch.no_grad():
                        for p in self.network.parameters():
                            p.clamp_(-self.clip_value, self.clip_value)


class WDLGParams(MatchingParams):
    iterations: int = Field(500, ge=1, le=1_000_000, description="L-BFGS steps per restart")
    lr: float = Field(0.1, gt=0.0, description="L-BFGS learning rate")
    variant: Literal["critic", "exact_1d"] = Field(
        "critic", description="KR-dual critic (paper) or closed-form 1-D W1 of gradient entries"
    )
    constraint: Constraint = Field(
        "penalty",
        description="critic's Lipschitz constraint: unit-ball projection (linear critic), "
        "weight clipping (WGAN) or gradient penalty (WGAN-GP)",
    )
    critic: CriticKind = Field("linear", description="critic: linear wᵀv or a one-hidden-layer MLP")
    critic_steps: int = Field(5, ge=1, le=1000, description="critic ascent steps per evaluation")
    critic_step_size: float = Field(
        0.5, gt=0.0, description="ascent step of the projected or clipped linear critic"
    )
    critic_lr: float | None = Field(
        None, gt=0.0, description="MLP critic lr (default: RMSProp 5e-5 clip, Adam 1e-4 penalty)"
    )
    critic_width: int = Field(16, ge=1, le=4096, description="hidden units of the MLP critic")
    clip_value: float = Field(0.01, gt=0.0, description="weight clipping bound c (WGAN)")
    penalty_weight: float = Field(
        0.3, gt=0.0, description="gradient penalty weight λ (WGAN-GP used 10; measured best: 0.3)"
    )

    @model_validator(mode="after")
    def _projection_is_linear(self) -> WDLGParams:
        if self.constraint == "projection" and self.critic != "linear":
            raise ValueError("constraint 'projection' needs critic = 'linear'")
        return self


class WDLG(MatchingAttack[WDLGParams]):
    name = "wdlg"
    summary = "WDLG: recovered labels, Wasserstein-1 gradient distance (KR critic or exact 1-D)."
    Params = WDLGParams

    def match_config(self, observation: Observation) -> MatchConfig:
        return config(self.params, observation.seed)


def config(params: WDLGParams, seed: int) -> MatchConfig:
    """WDLG's :class:`MatchConfig`: L-BFGS on the chosen W1 estimate; ``seed`` seeds
    the critic (its initialisation and the gradient penalty's interpolates).

    A critic's objective is its current estimate of the dual value, below it while
    the critic lags and then possibly negative, so a value ≤ 0 does not mean the
    gradients match: with a critic, ``loss_threshold = 0`` (the default) never ends a
    restart, and a positive threshold is compared with that estimate."""
    p = params
    budget = p.budget()
    if p.variant == "critic" and p.loss_threshold == 0.0:
        budget["loss_threshold"] = -math.inf
    distance: str | Callable[[list[torch.Tensor]], Distance] = "wasserstein_1d"
    if p.variant == "critic" and p.critic == "linear":
        distance = partial(
            LinearCritic, constraint=p.constraint, steps=p.critic_steps,
            step_size=p.critic_step_size, clip_value=p.clip_value,
            penalty_weight=p.penalty_weight,
        )  # fmt: skip
    elif p.variant == "critic":
        distance = partial(
            MLPCritic, constraint=p.constraint, steps=p.critic_steps, width=p.critic_width,
            lr=p.critic_lr, seed=seed, clip_value=p.clip_value, penalty_weight=p.penalty_weight,
        )  # fmt: skip
    return MatchConfig(distance=distance, optimizer="lbfgs", **budget)
