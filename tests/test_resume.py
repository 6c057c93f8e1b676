"""Resuming an interrupted sweep, and the sweep outputs, with a stand-in for Flower.

``run_trial`` (one federation) is replaced by a fake that writes what a real
one would (accuracy, defence measurements, one record per attack), so these
tests exercise the run loop, the store and the outputs in a second.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import fedsim.federation.runner as runner
from fedsim.results.store import Record, ResultsStore
from fedsim.run import RunError, run_scenario
from fedsim.scenario import Trial

SCENARIO = """\
name = "resume"
[data]
dataset = "digits"
image_size = 16
max_samples = 200
[model]
name = "convnet"
layers = [[3, 4, 2]]
activation = "tanh"
[federation]
num_clients = 2
clients_per_round = 2
rounds = 2
[[attacks]]
name = "dlg"
[[attacks]]
name = "dlg"
position = "participant"
[[defences]]
name = "dp_gaussian"
clip_norm = 1.0
noise_multiplier = [0.0, 0.5, 1.0, 2.0]
"""


class FakeFederation:
    """Stands in for ``run_trial``; stops the run (Ctrl-C) at one point if asked."""

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.ran: list[int] = []
        self.interrupt_at = interrupt_at

    def __call__(
        self, trial: Trial, store: ResultsStore, run_dir: Path, progress: Any, *_: object
    ) -> None:
        if trial.index == self.interrupt_at:
            raise KeyboardInterrupt
        self.ran.append(trial.index)
        z = trial.scenario.defences[0].params["noise_multiplier"]
        for server_round in (1, 2):
            store.set_accuracy(trial.index, server_round, 0.9 - 0.2 * z)
            store.add_round_defences(
                trial.index, server_round,
                {0: {0: {"epsilon": 10 / (z + 0.1) * server_round,
                         "measured_noise_std": z}}},
                {},
            )  # fmt: skip
        for position, psnr in (("server", 60 - 20 * z), ("participant", 40 - 15 * z)):
            store.add(
                Record(trial=trial.index, point=trial.point, round=1,
                       client=0 if position == "server" else None, position=position,
                       attack="dlg", attack_index=int(position != "server"),
                       update_kind="gradient", status="ok",
                       metrics={"psnr": psnr, "ssim": 0.5, "mse": 10 ** (-psnr / 10),
                                "label_accuracy": 1.0, "success": float(psnr >= 30)})
            )  # fmt: skip


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "resume.toml"
    path.write_text(SCENARIO, encoding="utf-8")
    return path


def run(source: Path, monkeypatch: pytest.MonkeyPatch, fake: FakeFederation, **kw: Any):
    monkeypatch.setattr(runner, "run_trial", fake)
    return run_scenario(source, kw.pop("overrides", []), kw.pop("out", None),
                        Console(quiet=True), **kw)  # fmt: skip


def test_resume_runs_only_the_unfinished_points(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = FakeFederation(interrupt_at=2)
    run_dir, status = run(source, monkeypatch, first, out=tmp_path / "run")
    assert status == "interrupted" and first.ran == [0, 1]
    stopped = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    assert [(t["index"], t["status"]) for t in stopped["trials"]] == [
        (0, "complete"),
        (1, "complete"),
        (2, "interrupted"),
    ]

    second = FakeFederation()
    again, status = run(source, monkeypatch, second, resume=run_dir)
    assert again == run_dir and status == "complete"
    assert second.ran == [2, 3]  # points 0 and 1 are not run again
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    assert [(t["index"], t["status"]) for t in results["trials"]] == [
        (i, "complete") for i in range(4)
    ]
    assert sorted(r["trial"] for r in results["records"]) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(results["resumed"]) == 1


def test_resume_refuses_a_changed_scenario(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir, _ = run(source, monkeypatch, FakeFederation(interrupt_at=1), out=tmp_path / "run")
    with pytest.raises(RunError) as changed:
        run(source, monkeypatch, FakeFederation(), resume=run_dir,
            overrides=["federation.rounds=3"])  # fmt: skip
    assert str(changed.value) == (
        f"{run_dir}: the scenario changed since the run started (point 1, "
        "noise_multiplier=0.0): scenario.federation.rounds: 2 → 3; "
        "restore it or start a new run"
    )
    with pytest.raises(RunError, match=r"was made for 4 sweep points, .* now gives 2"):
        run(source, monkeypatch, FakeFederation(), resume=run_dir,
            overrides=["defences[0].noise_multiplier=[0.0, 0.5]"])  # fmt: skip
    with pytest.raises(RunError, match="not a fedsim run directory"):
        run(source, monkeypatch, FakeFederation(), resume=tmp_path)


def test_sweep_csv_and_plots(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, _ = run(source, monkeypatch, FakeFederation(), out=tmp_path / "run")
    with (run_dir / "sweep.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 * 2  # one row per point and attack
    server = [r for r in rows if r["position"] == "server"]
    assert [float(r["defences[0].noise_multiplier"]) for r in server] == [0.0, 0.5, 1.0, 2.0]
    assert [float(r["psnr"]) for r in server] == [60.0, 50.0, 40.0, 20.0]
    assert [float(r["test_accuracy"]) for r in server] == pytest.approx([0.9, 0.8, 0.7, 0.5])
    # the worst client's ε after the last round; the server attacker's view has the same
    assert float(server[1]["epsilon_client"]) == pytest.approx(20 / 0.6)
    assert server[1]["epsilon"] == server[1]["epsilon_client"]
    assert float(server[2]["client_noise_std"]) == 1.0

    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    listed = {p["path"]: p["title"] for p in results["plots"]}
    for name in ("sweep_leakage.png", "sweep_accuracy.png", "sweep_frontier.png",
                 "sweep_epsilon.png"):  # fmt: skip
        assert name in listed
        assert (run_dir / name).read_bytes().startswith(b"\x89PNG")
