"""Seeds as replicates: the sweep's axes leave them out, and the plots average over them
(mean ± std) per round and per swept value."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.results.round_plots import save_round_plots
from fedsim.results.schema import RunResults, parse_results
from fedsim.results.sweep import mean_std, sweep_axes
from fedsim.results.sweep_plots import save_sweep_plots


def results(points: list[dict[str, object]], psnr: dict[tuple[int, int], float]) -> RunResults:
    """Trials at ``points``; one ok server record per (trial, round) of ``psnr``."""
    trials = [
        {"index": i, "point": p, "status": "complete", "accuracy": {"1": 0.1 + i / 10, "5": 0.9}}
        for i, p in enumerate(points)
    ]
    records = [
        {"trial": t, "point": points[t], "round": r, "client": 0, "attack_index": 0,
         "attack": "idlg", "position": "server", "update_kind": "gradient", "status": "ok",
         "metrics": {"psnr": v, "ssim": 0.5, "mse": 10 ** (-v / 10), "success": 0.0,
                     "label_accuracy": 1.0}}
        for (t, r), v in psnr.items()
    ]  # fmt: skip
    return parse_results({"trials": trials, "records": records})


def test_seed_is_a_replicate_and_x_is_the_axis_with_most_values() -> None:
    points = [
        {"seed": s, "model.pretrain_epochs": e, "federation.batch_size": b}
        for s in (0, 1) for e in (0, 10) for b in (1, 4, 16)
    ]  # fmt: skip
    trials = results(points, {}).trials
    axes = sweep_axes(trials)
    assert axes.replicate == "seed"
    assert axes.x == "federation.batch_size"
    assert axes.series == ("model.pretrain_epochs",)
    assert axes.setting(points[0]) == axes.setting({**points[0], "seed": 1})


def test_mean_std_ignores_missing_values() -> None:
    assert mean_std([1.0, None, 3.0, float("nan")]) == (2.0, 1.0, 2)
    assert mean_std([None]) is None


def test_round_plot_averages_the_seeds_of_one_setting(tmp_path: Path) -> None:
    points = [{"seed": 0}, {"seed": 1}, {"seed": 2}]
    psnr = {(t, r): 10.0 + t + r for t in range(3) for r in (1, 5)}
    plots = save_round_plots(results(points, psnr), tmp_path)
    assert plots == [
        {"path": "leakage_rounds.png", "title": "leakage vs round, mean ± std over 3 seeds"}
    ]
    assert (tmp_path / "leakage_rounds.png").read_bytes().startswith(b"\x89PNG")
    assert len((tmp_path / "rounds.csv").read_text().splitlines()) == 1 + 6  # per seed and round


def test_one_round_plot_per_setting_and_rounds_as_a_sweep_series(tmp_path: Path) -> None:
    points = [{"seed": s, "federation.batch_size": b} for s in (0, 1) for b in (1, 4)]
    psnr = {(t, r): 30.0 - t for t in range(4) for r in (1, 5)}
    data = results(points, psnr)
    titles = [p["title"] for p in save_round_plots(data, tmp_path)]
    assert titles == [
        "leakage vs round (batch_size=1), mean ± std over 2 seeds",
        "leakage vs round (batch_size=4), mean ± std over 2 seeds",
    ]
    paths = [p["path"] for p in save_sweep_plots(data, tmp_path)]
    assert paths[:2] == ["sweep_leakage.png", "sweep_accuracy.png"]
    assert (tmp_path / "sweep_leakage.png").stat().st_size > 1000


@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
def test_a_seed_only_sweep_draws_no_sweep_plot(seeds: tuple[int, ...], tmp_path: Path) -> None:
    data = results([{"seed": s} for s in seeds], {(0, 1): 20.0})
    assert save_sweep_plots(data, tmp_path) == []
