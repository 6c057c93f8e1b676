"""The learning preset trains, the scenarios built on it record leakage at every round
they ask for, the quickstart's model learns, and the round selections they use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedsim.cli import main
from fedsim.models.zoo import LeNet
from fedsim.scenario.model import parse_rounds
from fedsim.scenario.sweep import load

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


def run(name: str, out: Path, *overrides: str) -> dict:
    args = [a for override in overrides for a in ("--set", override)]
    assert main(["run", str(SCENARIOS / name), "--out", str(out), *args]) == 0
    return json.loads((out / "results.json").read_text("utf-8"))


def accuracy(results: dict, trial: int = 0) -> dict[int, float]:
    return {int(r): a for r, a in results["trials"][trial]["accuracy"].items()}


def test_every_shipped_scenario_validates() -> None:
    for path in sorted(SCENARIOS.glob("*.toml")):
        _, trials = load(path)
        assert trials, path.name


def test_the_learning_preset_trains_well_above_chance_in_a_few_rounds(tmp_path: Path) -> None:
    results = run("learning.toml", tmp_path / "run", "seed=0", "federation.rounds=3")
    curve = accuracy(results)
    # ten classes: chance is 0.1; measured 0.84, 0.89 and 0.90 after rounds 1-3 (seed 0)
    assert curve[0] < 0.2
    assert curve[3] > 0.8, curve


def test_leakage_over_training_records_every_requested_round(tmp_path: Path) -> None:
    _, (trial, *_) = load(SCENARIOS / "leakage_over_training.toml")
    requested = [1, 2, 5, 10, 20, 50]
    assert [a.rounds for a in trial.scenario.attacks] == [requested] * 4
    assert {a.position for a in trial.scenario.attacks} == {"server", "participant"}
    # one attack step each, on 16 images per client (2 local steps) instead of 72
    cheap = [f"attacks[{i}].iterations=1" for i in range(4)]
    results = run(
        "leakage_over_training.toml", tmp_path / "run", "seed=0", "output.save_images=false",
        "data.max_samples=400", *cheap,
    )  # fmt: skip
    for index in range(4):
        mine = [r for r in results["records"] if r["attack_index"] == index]
        assert sorted(r["round"] for r in mine) == requested
        assert all(r["status"] == "ok" and r["metrics"]["psnr"] > 0 for r in mine)
    assert accuracy(results)[50] > 0.5  # it learns while attacked (chance 0.1)
    assert {"path": "leakage_rounds.png", "title": "leakage vs round"} in results["plots"]
    rows = (tmp_path / "run" / "rounds.csv").read_text("utf-8").splitlines()
    assert len(rows) == 1 + 4 * len(requested)


def test_the_quickstart_model_learns_while_dlg_attacks_round_one(tmp_path: Path) -> None:
    results = run(
        "quickstart.toml", tmp_path / "run", "defences[0].sigma=[0.0]", "output.save_images=false",
    )  # fmt: skip
    curve = accuracy(results)
    # ten digits: chance 0.1; measured 0.12 at the start and 0.83 after round 50
    assert curve[0] < 0.2 and curve[50] > 0.6, curve
    (record,) = results["records"]
    assert record["round"] == 1 and record["metrics"]["psnr"] > 40  # measured 73.7 dB


@pytest.mark.parametrize(
    ("spec", "rounds"),
    [
        ("1-50:5", [1, 6, 11, 16, 21, 26, 31, 36, 41, 46]),
        ("1,2,5-50:5", [1, 2, 5, *range(10, 51, 5)]),
        ("3-5", [3, 4, 5]),
        ([1, "10-12", 1], [1, 10, 11, 12]),
        (7, [7]),
    ],
)
def test_round_selections(spec: object, rounds: list[int]) -> None:
    assert parse_rounds(spec) == rounds  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ('"5-1"', "'5-1' selects no rounds"),
        ('"1-9:0"', "'1-9:0' selects no rounds"),
        ('"1--2"', "'1--2' is not a round, 'a-b' or 'a-b:step'"),
        ('"1-60:10"', "[51] outside the federation's rounds 1..50"),
    ],
)
def test_a_bad_round_selection_is_one_line_and_exit_2(
    spec: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        f'[federation]\nrounds = 50\n[[attacks]]\nname = "dlg"\nrounds = {spec}\n',
        encoding="utf-8",
    )
    assert main(["run", str(path), "--out", str(tmp_path / "run")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"fedsim: {path}: attacks") and message in line, line


def test_lenet_initialisations() -> None:
    torch.manual_seed(0)
    dlg = LeNet((1, 32, 32), 10, activation="tanh")
    pytorch = LeNet((1, 32, 32), 10, activation="tanh", init="pytorch")
    first = pytorch.body[0].weight  # fan-in 1·5·5: PyTorch's bound is 1/sqrt(25) = 0.2
    assert float(first.abs().max()) <= 0.2 < float(dlg.body[0].weight.abs().max()) <= 0.5
    assert float(dlg.fc.bias.abs().max()) > 0.2  # the DLG draw covers biases too
    with pytest.raises(ValueError, match="init must be one of"):
        LeNet((1, 32, 32), 10, init="xavier")
