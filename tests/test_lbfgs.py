"""fedsim's L-BFGS takes PyTorch's steps: same iterates (float64, to rounding) with the
history full and wrapping, one or several iterations per step, and the same stops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedsim.inversion.lbfgs import LBFGS, History


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return ((1 - x[:-1]) ** 2).sum() + 100 * ((x[1:] - x[:-1] ** 2) ** 2).sum()


_A = torch.randn(20, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def objective(x: torch.Tensor) -> torch.Tensor:
    """Smooth, non-quadratic and well conditioned: rounding differences stay rounding
    differences along a trajectory (on Rosenbrock, the two implementations' 1e-16
    differences grow to 1e-6 within 100 iterations)."""
    return 0.5 * ((_A @ x - 1) ** 2).sum() + F.softplus(3 * x).sum()


def trajectory(
    optimizer: type[torch.optim.Optimizer], steps: int, **options: float
) -> list[torch.Tensor]:
    """The iterates of ``steps`` steps from a fixed start, in float64."""
    x = torch.linspace(-1.5, 1.2, 12, dtype=torch.float64).requires_grad_()
    opt = optimizer([x], **options)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective(x)
        loss.backward()
        return loss

    points = []
    for _ in range(steps):
        opt.step(closure)
        points.append(x.detach().clone())
    return points


@pytest.mark.parametrize(
    ("history_size", "max_iter", "lr"),
    [(3, 1, 0.05), (3, 5, 0.05), (40, 1, 0.02), (200, 20, 0.05)],
)
def test_iterates_match_pytorchs_lbfgs(history_size: int, max_iter: int, lr: float) -> None:
    options = {"history_size": history_size, "max_iter": max_iter, "lr": lr}
    ours = trajectory(LBFGS, 25, **options)
    theirs = trajectory(torch.optim.LBFGS, 25, **options)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert objective(ours[-1]) < 0.5 * objective(ours[0])  # it did optimise


def test_direction_is_the_two_loop_recursion() -> None:
    """With the window wrapped (more pairs than its size), ``direction`` equals the
    textbook two-loop recursion over the last ``size`` pairs."""
    generator = torch.Generator().manual_seed(0)
    n, size = 9, 4
    history = History(size, torch.zeros(n, dtype=torch.float64))
    pairs = []
    for _ in range(11):
        s = torch.randn(n, generator=generator, dtype=torch.float64)
        y = s + 0.3 * torch.randn(n, generator=generator, dtype=torch.float64)
        history.add(s, y, y.dot(s))
        pairs.append((s, y))
    kept = pairs[-size:]
    g = torch.randn(n, generator=generator, dtype=torch.float64)
    gamma = 0.7
    q, alphas = -g, []
    for s, y in reversed(kept):
        alpha = s.dot(q) / y.dot(s)
        q = q - alpha * y
        alphas.append(alpha)
    r = gamma * q
    for (s, y), alpha in zip(kept, reversed(alphas), strict=True):
        r = r + (alpha - y.dot(r) / y.dot(s)) * s
    torch.testing.assert_close(history.direction(g, gamma), r, rtol=1e-12, atol=1e-12)
    assert history.count == size


def test_a_stationary_start_takes_no_step() -> None:
    x = torch.ones(5, dtype=torch.float64, requires_grad=True)  # Rosenbrock's minimum
    opt = LBFGS([x])

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = rosenbrock(x)
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 0.0
    assert torch.equal(x.detach(), torch.ones(5, dtype=torch.float64))
