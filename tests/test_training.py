"""The learning preset trains (on the digits, and on MNIST when present), every shipped
scenario validates, round selections, and the zoo's initialisations."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from run_helpers import SCENARIOS, accuracy_curve, run_shipped

from fedsim.cli import main
from fedsim.models.zoo import LeNet
from fedsim.scenario.model import parse_rounds
from fedsim.scenario.sweep import load


def test_every_shipped_scenario_validates() -> None:
    for path in sorted(SCENARIOS.glob("*.toml")):
        _, trials = load(path)
        assert trials, path.name


def test_the_learning_preset_trains_well_above_chance_in_a_few_rounds(tmp_path: Path) -> None:
    results = run_shipped("learning.toml", tmp_path / "run", "seed=0", "federation.rounds=2")
    curve = accuracy_curve(results)
    # ten classes: chance is 0.1; measured 0.84 and 0.89 after rounds 1 and 2 (seed 0)
    assert curve[0] < 0.2
    assert curve[2] > 0.8, curve


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
        ('"1-999999999999"', "'1-999999999999' goes beyond round 100,000"),
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


MNIST = Path(
    os.environ.get("FEDSIM_MNIST", Path(__file__).resolve().parents[2] / "shared/data/mnist")
)
"""MNIST's IDX files (the test set alone is enough): ``$FEDSIM_MNIST``, else the data
folder some machines keep beside the checkout."""


@pytest.mark.skipif(
    not any(MNIST.glob("t10k-images-idx3-ubyte*")),
    reason=f"no MNIST test set at {MNIST} (set FEDSIM_MNIST to a folder with its IDX files)",
)
def test_the_learning_preset_trains_on_mnist(tmp_path: Path) -> None:
    results = run_shipped(
        "learning.toml", tmp_path / "run", "seed=0", "federation.rounds=2",
        "data.dataset=mnist", f"data.root={json.dumps(str(MNIST))}", "data.max_samples=70000",
    )  # fmt: skip
    curve = accuracy_curve(results)
    assert curve[0] < 0.2 and curve[2] > 0.85, curve  # measured 0.14, 0.87, 0.90 (seed 0)
