"""WDLG's critic keeps its Lipschitz constant where each constraint puts it, measured on
the trained critic: the weight norm of a linear critic (its Lipschitz constant), the
input-gradient norm and the spectral-norm bound of an MLP critic."""

from __future__ import annotations

import math

import pytest
import torch
from fedsim_plugins.wdlg import LinearCritic, MLPCritic, WDLGParams
from pydantic import ValidationError

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
    assert value == pytest.approx(delta + delta**2 / (2 * weight), rel=1e-6)


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
    assert float(critic([dummy]).detach()) == pytest.approx(delta * expected, rel=0.1)


def test_projection_needs_a_linear_critic() -> None:
    with pytest.raises(ValidationError, match=r"projection.*linear"):
        WDLGParams(constraint="projection", critic="mlp")
