"""WDLG's critic keeps its Lipschitz constant where each constraint puts it, measured on
the trained critic: the weight norm of a linear critic (its Lipschitz constant), the
input-gradient norm and the spectral-norm bound of an MLP critic."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from fedsim_plugins.wdlg import LinearCritic, MLPCritic, WDLGParams
from fedsim_plugins.wdlg import config as wdlg_config
from pydantic import ValidationError
from torch import nn

from fedsim.inversion.gradient_matching import match_gradients

SIZE = 40
BOUNDS = {"clip_value": 0.01, "penalty_weight": 10.0}


def pair(seed: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A target gradient and a dummy one, flattened."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randn(SIZE, generator=generator, dtype=torch.float64)
    return target, target + scale * torch.randn(SIZE, generator=generator, dtype=torch.float64)


def train_linear(
    constraint: str, dummies: list[torch.Tensor], target: torch.Tensor
) -> LinearCritic:
    critic = LinearCritic([target], constraint=constraint, steps=5, step_size=0.5, **BOUNDS)  # type: ignore[arg-type]
    for dummy in dummies:
        critic([dummy])
    return critic


def moving_dummies(seed: int, count: int = 30) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A target and a dummy that moves towards it, as the images' gradient would."""
    target, start = pair(seed, scale=3.0)
    noise = torch.Generator().manual_seed(seed + 1)
    dummies = [
        target + (start - target) * 0.8**k + 0.05 * torch.randn(SIZE, generator=noise)
        for k in range(count)
    ]
    return target, dummies


def test_projection_keeps_the_linear_critic_1_lipschitz_and_exact() -> None:
    target, dummies = moving_dummies(0)
    critic = train_linear("projection", dummies, target)
    delta = dummies[-1] - target
    assert critic.weight.norm() <= 1 + 1e-12
    assert critic.weight.norm() == pytest.approx(1.0, abs=1e-6)
    assert float(critic([dummies[-1]])) == pytest.approx(float(delta.norm()), rel=1e-3)


def test_clipping_boxes_the_linear_critic_into_an_l1_distance() -> None:
    target, dummies = moving_dummies(1)
    critic = train_linear("clip", dummies, target)
    c = BOUNDS["clip_value"]
    assert critic.weight.abs().max() <= c
    assert critic.weight.norm() <= c * math.sqrt(SIZE) + 1e-12  # its Lipschitz constant
    delta = dummies[-1] - target
    assert float(critic([dummies[-1]])) == pytest.approx(c * float(delta.abs().sum()), rel=1e-3)


@pytest.mark.parametrize("weight", [1.0, 10.0])
def test_penalty_puts_the_linear_critic_norm_at_one_plus_delta_over_two_lambda(
    weight: float,
) -> None:
    target, dummy = pair(2)
    critic = LinearCritic(
        [target], constraint="penalty", steps=5, step_size=0.5, clip_value=0.01,
        penalty_weight=weight,
    )  # fmt: skip
    for _ in range(40):
        value = float(critic([dummy]))
    delta = float((dummy - target).norm())
    assert float(critic.weight.norm()) == pytest.approx(1 + delta / (2 * weight), rel=1e-6)
    # the penalised objective at the maximiser: Δ·‖w‖ − λ(‖w‖ − 1)² = Δ + Δ²/4λ
    assert value == pytest.approx(delta + delta**2 / (4 * weight), rel=1e-6)


def gradient_of(model: nn.Module, loss: torch.Tensor, create_graph: bool) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, list(model.parameters()), create_graph=create_graph))


def tiny_upload() -> tuple[nn.Module, torch.Tensor, dict[str, torch.Tensor]]:
    """A small conv net on 1×6×6 inputs, a label and the gradient of one random image."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Sigmoid(), nn.Flatten(), nn.Linear(48, 4))
    label = torch.tensor([1])
    true = torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    grads = gradient_of(model, F.cross_entropy(model(true), label), create_graph=False)
    return model, label, dict(zip(dict(model.named_parameters()), grads, strict=True))


@pytest.mark.parametrize("weight", [0.3, 10.0])
def test_the_reported_penalised_objective_has_the_critics_gradient(weight: float) -> None:
    # formula-free: the value a (fresh, converged) critic reports, as a function of the
    # dummy gradient, changes at the rate of the gradient it hands the images
    target, dummy = pair(6)
    direction = torch.randn(SIZE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    def reported(point: torch.Tensor) -> torch.Tensor:
        critic = LinearCritic(
            [target], constraint="penalty", steps=3, step_size=0.5, clip_value=0.01,
            penalty_weight=weight,
        )  # fmt: skip
        return critic([point])

    point = dummy.clone().requires_grad_()
    (step,) = torch.autograd.grad(reported(point), point)
    eps = 1e-5
    slope = (reported(dummy + eps * direction) - reported(dummy - eps * direction)) / (2 * eps)
    assert float((dummy - target).norm()) > weight / 2  # Δ/λ large enough to tell 2λ from 4λ
    assert float(slope) == pytest.approx(float(step @ direction), rel=1e-6)


def test_a_lagging_critics_negative_estimate_does_not_end_the_search() -> None:
    # the MLP critic's penalised objective starts below 0 here (measured −0.2); with
    # the default threshold 0 that stopped the restart as if the gradients matched
    model, label, update = tiny_upload()
    params = WDLGParams(iterations=5, critic="mlp", constraint="penalty")
    result = match_gradients(
        model, update, input_shape=(1, 6, 6), batch_size=1, num_classes=4, labels=label,
        config=wdlg_config(params, seed=0), seed=0,
    )  # fmt: skip

    assert min(result.loss_curve) < 0
    assert len(result.loss_curve) == 5


def test_wdlg_records_and_descends_delta_plus_delta_squared_over_four_lambda() -> None:
    # one L-BFGS step of the real engine: the recorded objective is Δ + Δ²/4λ of the
    # start image x₀, and the image moves by −t·∇(Δ + Δ²/4λ)(x₀) (L-BFGS's first step,
    # t = lr·min(1, 1/‖∇‖₁)), that formula's gradient taken by autograd
    model, label, update = tiny_upload()
    target = torch.cat([g.flatten() for g in update.values()])

    def gradient(x: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(model(x), label)
        return torch.cat([g.flatten() for g in gradient_of(model, loss, create_graph=True)])

    wdlg = WDLGParams(iterations=1)
    starts: list[torch.Tensor] = []
    moved: list[torch.Tensor] = []

    def remember_start(x: torch.Tensor) -> torch.Tensor:
        if not starts:
            starts.append(x.detach().clone())
        return 0.0 * x.sum()

    result = match_gradients(
        model, update, input_shape=(1, 6, 6), batch_size=1, num_classes=4, labels=label,
        config=replace(wdlg_config(wdlg, seed=0), max_iter=1), seed=0,
        on_step=lambda _, x: moved.append(x.clone()), regulariser=remember_start,
    )  # fmt: skip

    x0 = starts[0].requires_grad_()
    delta = (gradient(x0) - target).norm()
    formula = delta + delta**2 / (4 * wdlg.penalty_weight)
    (slope,) = torch.autograd.grad(formula, x0)
    t = wdlg.lr * min(1.0, 1.0 / float(slope.abs().sum()))
    assert float(delta.detach()) > wdlg.penalty_weight  # far enough for 2λ and 4λ to differ
    assert result.loss_curve[0] == pytest.approx(float(formula.detach()), rel=1e-4)
    torch.testing.assert_close(x0.detach() - moved[0], t * slope, rtol=1e-3, atol=1e-7)


def input_gradient_norms(critic: MLPCritic, points: torch.Tensor) -> torch.Tensor:
    points = points.clone().requires_grad_()
    (grads,) = torch.autograd.grad(critic.network(points).sum(), points)
    return grads.norm(dim=1)


def spectral_bound(critic: MLPCritic) -> float:
    """‖a‖₂·‖W‖₂: a Lipschitz bound of a one-hidden-layer network with 1-Lipschitz units."""
    first, last = critic.network[0].weight, critic.network[2].weight
    return float(
        torch.linalg.matrix_norm(first.detach(), 2) * torch.linalg.matrix_norm(last.detach(), 2)
    )


def mlp(constraint: str, target: torch.Tensor, lr: float | None = None) -> MLPCritic:
    return MLPCritic(
        [target.float()], constraint=constraint, steps=5, width=16, lr=lr, seed=0,  # type: ignore[arg-type]
        **BOUNDS,
    )  # fmt: skip


def test_clipping_bounds_the_mlp_critic() -> None:
    target, dummies = moving_dummies(3)
    critic = mlp("clip", target)
    for dummy in dummies:
        critic([dummy.float()])
    c, width = BOUNDS["clip_value"], 16
    assert all(p.abs().max() <= c for p in critic.network.parameters())
    bound = spectral_bound(critic)
    assert bound <= c**2 * width * math.sqrt(SIZE)
    samples = torch.randn(64, SIZE, generator=torch.Generator().manual_seed(4))
    assert input_gradient_norms(critic, target.float() + 3 * samples).max() <= bound


@pytest.mark.parametrize("scale", [0.1, 1.0])
def test_penalty_drives_the_mlp_critic_gradient_norm_to_one_plus_delta_over_two_lambda(
    scale: float,
) -> None:
    target, dummy = (v.float() for v in pair(5, scale))
    delta = float((dummy - target).norm())
    expected = 1 + delta / (2 * BOUNDS["penalty_weight"])  # as for a linear critic
    critic = mlp("penalty", target, lr=1e-2)
    segment = target + torch.linspace(0, 1, 11)[:, None] * (dummy - target)
    before = input_gradient_norms(critic, segment)
    for _ in range(200):
        critic([dummy])
    after = input_gradient_norms(critic, segment)
    assert (before - expected).abs().max() > 0.2  # far from it at initialisation
    assert (after - expected).abs().max() < 0.1 * expected
    penalised = delta + delta**2 / (4 * BOUNDS["penalty_weight"])  # as for a linear critic
    assert float(critic([dummy]).detach()) == pytest.approx(penalised, rel=0.1)


def test_projection_needs_a_linear_critic() -> None:
    with pytest.raises(ValidationError, match=r"projection.*linear"):
        WDLGParams(constraint="projection", critic="mlp")
