"""Why gradient matching stops: threshold, convergence, stall, budget and time."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from fedsim_plugins.dlg import DLGParams
from fedsim_plugins.dlg import config as dlg_config
from torch import nn

from fedsim.inversion.gradient_matching import MatchConfig, MatchResult, match_gradients, plateaued

SHAPE = (1, 4, 4)
CLASSES = 3
# DLG's optimiser, one L-BFGS iteration per step; the tiny case converges in a few
# dozen steps and then only creeps (a plateau far below 1e-6).
BASE = MatchConfig(optimizer="lbfgs", max_iter=1, iterations=400, history_size=50)


def tiny_case() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A sigmoid MLP on 4×4 images and the gradient of one image of class 1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Sigmoid(), nn.Linear(8, CLASSES))
    x = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(1))
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(F.cross_entropy(model(x), torch.tensor([1])), params)
    return model, dict(zip(names, grads, strict=True))


def run(config: MatchConfig) -> MatchResult:
    model, gradient = tiny_case()
    return match_gradients(
        model, gradient, input_shape=SHAPE, batch_size=1, num_classes=CLASSES,
        labels=torch.tensor([1]), config=config,
    )  # fmt: skip


def test_plateau_is_a_relative_improvement_over_the_window() -> None:
    best = [10.0, 5.0, 4.0, 3.99]

    assert plateaued(best, tolerance=0.01, window=1)  # 4.0 → 3.99: 0.25 %
    assert not plateaued(best, tolerance=0.01, window=2)  # 5.0 → 3.99: 20 %
    assert not plateaued(best[:1], tolerance=0.5, window=1)  # fewer steps than the window
    assert not plateaued(best, tolerance=0.0, window=1)  # off
    assert not plateaued(best, tolerance=0.01, window=None)  # off


def test_threshold_stops_the_search() -> None:
    result = run(replace(BASE, loss_threshold=1e-4, restarts=2))

    assert result.stop_reason == "threshold"
    assert result.iterations < BASE.iterations
    assert result.loss_curve[-1] <= 1e-4
    assert len(result.restart_stops) == 1  # a met threshold ends the search


def test_budget_is_the_reason_when_nothing_else_stops() -> None:
    result = run(replace(BASE, iterations=5))

    assert result.stop_reason == "budget"
    assert result.restart_stops == [{"stop_reason": "budget", "stopped_at": 5}]


def test_convergence_stops_far_before_the_budget_on_the_same_path() -> None:
    full = run(BASE)
    converged = run(replace(BASE, tolerance=1e-3, window=10, restarts=3))

    assert full.stop_reason == "budget" and full.iterations == BASE.iterations
    assert converged.stop_reason == "converged"
    assert converged.iterations < BASE.iterations / 4
    assert len(converged.restart_stops) == 1  # converged low: no further restart
    # Stopping does not change the path, it cuts it short.
    assert converged.loss_curve == full.loss_curve[: converged.iterations]
    diagnostics = converged.diagnostics()
    assert diagnostics["stop_reason"] == "converged"
    assert diagnostics["stopped_at"] == converged.iterations


def test_a_high_plateau_is_a_stall_and_the_next_restart_runs() -> None:
    stalling = replace(BASE, tolerance=1e-3, window=10, restarts=3, stall_loss=1e-30)

    result = run(stalling)

    assert [s["stop_reason"] for s in result.restart_stops] == ["stalled"] * 3
    assert all(s["stopped_at"] < BASE.iterations / 4 for s in result.restart_stops)
    assert len(result.restart_losses) == 3


def test_time_budget_is_recorded_as_time() -> None:
    result = run(replace(BASE, max_seconds=1e-9, restarts=2))

    assert result.stop_reason == "time"
    assert len(result.restart_stops) == 1


@pytest.mark.parametrize("window", [None, 10])
def test_tolerance_zero_keeps_the_old_behaviour(window: int | None) -> None:
    old = run(replace(BASE, iterations=120))
    off = run(replace(BASE, iterations=120, tolerance=0.0, window=window, stall_loss=1e-30))

    assert off.iterations == old.iterations == 120
    assert off.loss_curve == old.loss_curve
    assert off.stop_reason == old.stop_reason == "budget"


def test_dlg_counts_its_window_in_its_own_iterations() -> None:
    params = DLGParams(iterations=300, tolerance=1e-3, window=5, stall_loss=1e-3)

    config = dlg_config(params)

    assert (config.iterations, config.window) == (6000, 100)
    assert (config.tolerance, config.stall_loss) == (1e-3, 1e-3)
    assert dlg_config(DLGParams(tolerance=0.0, window=None)).window is None
