"""One real Flower simulation (two sweep points) checked end to end through the CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from browser import render, screenshot

from fedsim.cli import main

pytestmark = pytest.mark.slow

# Seed 1 is one where 40 DLG steps on the clean round-1 upload get well above the
# noise floor (~21 dB), so the comparison with sigma = 0.5 (~6 dB) is meaningful.
SCENARIO = """\
name = "tiny"
seed = 1
device = "cpu"

[data]
dataset = "photos"
image_size = 32
samples_per_class = 4

[model]
name = "lenet"
activation = "sigmoid"

[federation]
num_clients = 2
clients_per_round = 2
rounds = 2
protocol = "fedsgd"
batch_size = 1

[[attacks]]
name = "dlg"
position = "server"
rounds = [1]
iterations = 40
restarts = 2
conv_backend = "default"  # not timed: the scores must not depend on the machine's load

[[attacks]]
name = "dlg"
position = "participant"
rounds = [2]
iterations = 5
conv_backend = "default"

[[defences]]
name = "gaussian_noise"
sigma = [0.0, 0.5]
"""


class Run:
    def __init__(self, source: Path, out: Path, code: int) -> None:
        self.source, self.out, self.code = source, out, code
        self.results: dict[str, Any] = json.loads((out / "results.json").read_text("utf-8"))

    def record(self, trial: int, position: str) -> dict[str, Any]:
        (found,) = [
            r for r in self.results["records"]
            if r["trial"] == trial and r["position"] == position
        ]  # fmt: skip
        return found


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    folder = tmp_path_factory.mktemp("sim")
    source = folder / "tiny.toml"
    source.write_text(SCENARIO, encoding="utf-8")
    out = folder / "run"
    code = main(["run", str(source), "--out", str(out)])
    return Run(source, out, code)


def test_run_completes_with_accuracy_per_round(run: Run) -> None:
    assert run.code == 0
    assert run.results["status"] == "complete"
    trials = run.results["trials"]
    assert [t["index"] for t in trials] == [0, 1]
    assert [t["point"] for t in trials] == [
        {"defences[0].sigma": 0.0},
        {"defences[0].sigma": 0.5},
    ]
    for trial in trials:
        assert trial["status"] == "complete", trial["error"]
        assert set(trial["accuracy"]) == {"0", "1", "2"}
        assert all(0.0 <= a <= 1.0 for a in trial["accuracy"].values())


def test_expected_records(run: Run) -> None:
    got = sorted(
        (r["trial"], r["round"], r["position"], r["client"], r["status"])
        for r in run.results["records"]
    )
    assert got == [
        (0, 1, "server", 0, "ok"),
        (0, 2, "participant", None, "ok"),
        (1, 1, "server", 0, "ok"),
        (1, 2, "participant", None, "ok"),
    ]
    for trial in (0, 1):
        server, participant = run.record(trial, "server"), run.record(trial, "participant")
        assert len(server["images"]) == 1
        # The participant sees the aggregate of both clients' batches of one image.
        assert len(participant["images"]) == 2
        assert participant["defence_measurements"] == {}
        assert {r["update_kind"] for r in (server, participant)} == {"gradient"}


def test_files_written(run: Run) -> None:
    for name in (
        "grid.png",
        "scenario.resolved.json",
        "results.json",
        "metrics.csv",
        "report.html",
    ):
        assert (run.out / name).is_file(), name
    scenario_copy = (run.out / "scenario.toml").read_text(encoding="utf-8")
    assert scenario_copy == run.source.read_text(encoding="utf-8")
    resolved = json.loads((run.out / "scenario.resolved.json").read_text(encoding="utf-8"))
    assert len(resolved["trials"]) == 2

    pngs = [
        image[key]
        for record in run.results["records"]
        for image in record["images"]
        for key in ("original_png", "reconstruction_png")
    ]
    assert len(pngs) == 2 * (1 + 2) * 2  # per trial: 1 server + 2 participant images
    for png in pngs:
        assert (run.out / png).read_bytes().startswith(b"\x89PNG"), png

    with (run.out / "metrics.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(run.results["records"])
    assert sorted((row["trial"], row["position"]) for row in rows) == sorted(
        (str(r["trial"]), r["position"]) for r in run.results["records"]
    )


def test_report_of_the_real_run_renders_in_chromium(run: Run, tmp_path: Path) -> None:
    rendered = render(run.out / "report.html")
    assert rendered.errors == [] and rendered.broken == []
    images = sum(len(r["images"]) for r in run.results["records"])
    plots = [p for p in run.results["plots"] if p["path"] != "grid.png"]
    strip = 2 * (1 + 2)  # per attack: the original and its reconstruction at both points
    assert rendered.images == 2 * images + strip + len(plots)
    page = (run.out / "report.html").read_text(encoding="utf-8")
    assert "test accuracy per round" in page and "Python " in page
    shot = screenshot(run.out / "report.html", tmp_path / "page.png")
    assert shot.shape[1] == 1280 and shot.std() > 20


def test_defence_measurements_in_server_records(run: Run) -> None:
    clean = run.record(0, "server")["defence_measurements"]
    noisy = run.record(1, "server")["defence_measurements"]

    assert clean["0"]["measured_noise_std"] == 0.0
    # ~12,750 LeNet parameters: relative standard error of the std ≈ 0.6 %.
    assert noisy["0"]["measured_noise_std"] == pytest.approx(0.5, rel=0.05)
    assert noisy["0"]["noise_std"] == 0.5


def test_noise_lowers_server_psnr(run: Run) -> None:
    clean = run.record(0, "server")["metrics"]["psnr"]
    noisy = run.record(1, "server")["metrics"]["psnr"]

    assert clean > 15
    assert noisy < clean - 5
