"""One Flower federation (FedAvg, two one-digit clients, three rounds) checked for the
threat-model features: the participant isolating the other client's update, the
threat model on every record, and leakage recorded at every requested round."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from fedsim.cli import main

pytestmark = pytest.mark.slow

SCENARIO = """\
name = "threat"
seed = 0
device = "cpu"

[data]
dataset = "digits"
image_size = 32
max_samples = 4           # two training digits, one per client
test_fraction = 0.5

[model]
name = "lenet"
activation = "sigmoid"

[federation]
num_clients = 2
clients_per_round = 2
rounds = 3
protocol = "fedavg"
batch_size = 1
local_epochs = 2
lr = 0.1

[[attacks]]
name = "idlg"
position = "server"
rounds = [1, 3]
clients = [1]
knows_labels = true
iterations = 50
loss_threshold = 1e-10
fedavg_objective = "unrolled"

[[attacks]]
name = "idlg"
position = "participant"
participant_client = 0
rounds = [1, 3]
iterations = 50
loss_threshold = 1e-10
fedavg_objective = "unrolled"
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("threat")
    source = folder / "threat.toml"
    source.write_text(SCENARIO, encoding="utf-8")
    out = folder / "run"
    assert main(["run", str(source), "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text("utf-8"))


def records(results: dict[str, Any], position: str, client: int) -> dict[int, dict[str, Any]]:
    return {
        r["round"]: r
        for r in results["records"]
        if r["position"] == position and r["client"] == client
    }


def test_leakage_is_recorded_for_every_requested_round(
    run: tuple[Path, dict[str, Any]],
) -> None:
    out, results = run
    got = sorted(
        (r["attack_index"], r["round"], r["client"], r["status"]) for r in results["records"]
    )
    assert got == [(0, 1, 1, "ok"), (0, 3, 1, "ok"), (1, 1, 1, "ok"), (1, 3, 1, "ok")]
    with (out / "rounds.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((row["attack_index"], row["round"]) for row in rows) == [
        ("0", "1"), ("0", "3"), ("1", "1"), ("1", "3"),
    ]  # fmt: skip
    assert all(0 <= float(row["test_accuracy"]) <= 1 for row in rows)
    assert {"path": "leakage_rounds.png", "title": "leakage vs round"} in results["plots"]
    assert (out / "leakage_rounds.png").read_bytes().startswith(b"\x89PNG")


def test_participant_recovers_the_other_clients_image_as_well_as_the_server(
    run: tuple[Path, dict[str, Any]],
) -> None:
    _, results = run
    server, participant = records(results, "server", 1), records(results, "participant", 1)
    for server_round in (1, 3):
        theirs, ours = server[server_round], participant[server_round]
        # with two clients, aggregate minus its own update is exactly client 1's update
        assert len(ours["images"]) == 1
        assert ours["metrics"]["psnr"] > 30, ours["metrics"]
        assert theirs["metrics"]["psnr"] > 30, theirs["metrics"]
        assert ours["metrics"]["label_accuracy"] == 1.0


def test_records_carry_the_threat_model_of_their_flags(run: tuple[Path, dict[str, Any]]) -> None:
    _, results = run
    server = records(results, "server", 1)[1]
    participant = records(results, "participant", 1)[1]
    assert server["threat_model"] == {
        "position": "server",
        "knows": ["labels", "batch_size", "local_hyperparameters", "model"],
        "uses": ["labels", "batch_size", "local_hyperparameters", "model"],
        "sok_class": "C",
    }
    assert server["diagnostics"]["label_source"] == "given by the threat model (knows_labels)"
    assert participant["threat_model"] == {
        "position": "participant",
        "knows": ["batch_size", "local_hyperparameters", "model"],
        "uses": ["batch_size", "local_hyperparameters", "model"],
        "sok_class": "C",
    }
    assert participant["diagnostics"]["label_source"] == "recovered from the head's gradient"
    assert "unrolling 2 local SGD steps" in participant["diagnostics"]["gradient_source"]
