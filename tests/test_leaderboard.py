"""The defence leaderboard: defence sets in a scenario, the ranking at matched accuracy,
its CSV, figure and report section (the federations replaced by known numbers)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from run_helpers import run_faked

from fedsim import registry
from fedsim.report.page import REPORT_NAME
from fedsim.results.schema import ImageResult
from fedsim.results.store import Record, ResultsStore, read_results
from fedsim.scenario import ScenarioError, Trial
from fedsim.scenario.sweep import expand, tomllib

HEAD = """\
name = "board"
seed = [0, 1]
[data]
dataset = "digits"
image_size = 16
max_samples = 100
[federation]
num_clients = 2
clients_per_round = 2
rounds = 1
[[attacks]]
name = "dlg"
position = "server"
[[attacks]]
name = "inverting_gradients"
position = "participant"
"""
SETS = """\
[[defence_sets]]
label = "none"
[[defence_sets]]
[[defence_sets.defences]]
name = "gaussian_noise"
sigma = [0.01, 0.1, 1.0]
[[defence_sets]]
label = "prune"
[[defence_sets.defences]]
name = "pruning"
p = [0.5, 0.9]
"""
# (set, strength) → (test accuracy, server PSNR, participant PSNR), by design: with the
# undefended accuracy 0.9 a strength must reach 0.85; gaussian_noise's best such is
# sigma=0.1 (25 dB), pruning's p=0.5 (30 dB), so gaussian_noise ranks first.
DESIGN: dict[tuple[str, Any], tuple[float, float, float]] = {
    ("none", None): (0.90, 60.0, 20.0),
    ("gaussian_noise", 0.01): (0.898, 40.0, 15.0),
    ("gaussian_noise", 0.1): (0.88, 25.0, 12.0),
    ("gaussian_noise", 1.0): (0.70, 10.0, 8.0),
    ("prune", 0.5): (0.89, 30.0, 14.0),
    ("prune", 0.9): (0.80, 15.0, 9.0),
}


def strength(trial: Trial) -> Any:
    return next((v for k, v in trial.point.items() if k.startswith("defences[")), None)


def fake_federation(
    trial: Trial, store: ResultsStore, run_dir: Path, progress: Any, *_: object
) -> None:
    """Accuracy and two scored reconstructions per attack as designed; the seed moves the
    accuracy by ±0.002 and the images' PSNR by ±1 dB around the design."""
    accuracy, server, participant = DESIGN[(trial.point["defence_set"], strength(trial))]
    seed = trial.scenario.seed
    store.set_accuracy(trial.index, 1, accuracy + (0.002 if seed else -0.002))
    for index, (position, psnr) in enumerate((("server", server), ("participant", participant))):
        images = [
            ImageResult(
                original_index=k, mse=10 ** (-(psnr + d) / 10), psnr=psnr + d, ssim=psnr / 100
            )
            for k, d in enumerate((-1.0, 1.0))
        ]
        store.add(
            Record(
                trial=trial.index, point=trial.point, round=1, position=position,
                client=0 if position == "server" else None,
                attack="dlg" if position == "server" else "inverting_gradients",
                attack_index=index, update_kind="gradient", status="ok", images=images,
                metrics={"psnr": psnr, "ssim": psnr / 100, "mse": 10 ** (-psnr / 10)},
            )
        )  # fmt: skip


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir, status = run_faked(tmp_path_factory.mktemp("board"), HEAD + SETS, fake_federation)
    assert status == "complete"
    return run_dir


def test_defence_sets_expand_to_one_point_per_set_strength_and_seed(board: Path) -> None:
    trials = read_results(board).trials
    labels = [(t.point["defence_set"], t.point.get("defences[0].sigma")) for t in trials]
    assert len(trials) == 12  # (1 + 3 + 2) × 2 seeds
    assert labels[:3] == [("none", None), ("none", None), ("gaussian_noise", 0.01)]
    assert [t.index for t in trials] == list(range(12))


def test_ranking_at_matched_accuracy(board: Path) -> None:
    with (board / "leaderboard.csv").open(encoding="utf-8", newline="") as fh:
        rows = {(r["defence_set"], r["strength"]): r for r in csv.DictReader(fh)}
    assert rows[("gaussian_noise", "sigma=0.1")]["rank"] == "1"
    assert rows[("prune", "p=0.5")]["rank"] == "2"
    assert {k for k, r in rows.items() if r["rank"]} == {
        ("gaussian_noise", "sigma=0.1"),
        ("prune", "p=0.5"),
    }
    best = rows[("gaussian_noise", "sigma=0.1")]
    assert float(best["server_psnr"]) == pytest.approx(25.0)
    assert float(best["server_psnr_std"]) == pytest.approx(1.0)  # images at ±1 dB
    assert best["server_psnr_n"] == "4"  # 2 images × 2 seeds
    assert best["server_psnr_attack"] == "dlg"
    assert float(best["participant_psnr"]) == pytest.approx(12.0)
    assert float(best["test_accuracy"]) == pytest.approx(0.88)
    assert float(best["accuracy_std"]) == pytest.approx(0.002)
    assert best["seeds"] == "2"


def test_report_and_figure_show_the_leaderboard(board: Path) -> None:
    assert (board / "leaderboard.png").stat().st_size > 10_000
    page = (board / REPORT_NAME).read_text(encoding="utf-8")
    assert "Defence leaderboard" in page
    section = page[page.index('id="leaderboard"') :]
    first, second = section.index("gaussian_noise"), section.index("prune")
    assert first < second
    assert "25.0 ± 1.0 (n=4) dlg" in section
    assert "0.850" in section  # the accuracy a strength had to reach


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ('[[defence_sets]]\nlabel = "a"\n[[defence_sets]]\nlabel = "a"\n', "'a' names set 0"),
        ("[[defence_sets]]\nlabels = 1\n", "defence_sets[0].labels: unknown key"),
        ("", "must be a non-empty list"),  # defence_sets = []
        (
            '[[defence_sets]]\n[[defence_sets.defences]]\nname = "pruning"\nq = 1\n',
            "defence_sets[0].defences[0].q: unknown key",
        ),
        ('[[defences]]\nname = "pruning"\n[[defence_sets]]\n', "not both"),
    ],
)
def test_bad_defence_sets_are_refused_in_one_line(sets: str, message: str) -> None:
    with pytest.raises(ScenarioError) as error:
        expand(tomllib.loads(HEAD + sets if sets else "defence_sets = []\n" + HEAD), "s.toml")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_the_shipped_leaderboard_has_every_defence_at_three_strengths() -> None:
    """Every registered defence is in a set; every set is swept over three strengths but
    the undefended one and secure aggregation alone, which has no strength."""
    path = Path(__file__).resolve().parent.parent / "scenarios" / "defence_leaderboard.toml"
    trials = expand(tomllib.loads(path.read_text(encoding="utf-8")), str(path))
    named = {d.name for t in trials for d in t.scenario.defences}
    assert named == set(registry.discover().defences)
    per_set: dict[str, int] = {}
    for trial in trials:
        per_set[trial.point["defence_set"]] = per_set.get(trial.point["defence_set"], 0) + 1
    assert per_set.pop("none") == per_set.pop("secagg") == 1
    assert set(per_set.values()) == {3}
