"""One real Flower sweep: leakage and accuracy against the noise, and where it is added.

Six federations (noise multiplier 0, 0.003 and 1 × noise added on the clients or
by the server), each with DLG at the server (client 0's upload) and at a
participant (the aggregate) on round 1, then 40 rounds of training. Checked:
leakage (the best attack's PSNR) and accuracy fall as the noise rises (direction
only); central noise leaves the server's view untouched but blinds the
participant; ε is the accountant's over every round (client-side state kept in
Flower's Context.state); the noise the server measured is the noise configured,
and the clients kept what they measured of theirs.
"""

from __future__ import annotations

import csv
import json
from typing import Any

import pytest
from dp_accounting import dp_event, rdp

from fedsim.cli import main

pytestmark = pytest.mark.slow

ROUNDS, CLIP, CLIENTS, DELTA = 40, 10.0, 3, 1e-5
SCENARIO = f"""\
name = "dp_direction"
seed = 0
device = "cpu"
[data]
dataset = "digits"
image_size = 16
[model]
name = "convnet"
activation = "tanh"
preset = "cnn3-3"
[federation]
num_clients = {CLIENTS}
clients_per_round = {CLIENTS}
rounds = {ROUNDS}
batch_size = 1
lr = 0.05
[[attacks]]
name = "dlg"
rounds = [1]
iterations = 20
[[attacks]]
name = "dlg"
position = "participant"
rounds = [1]
iterations = 20
[[defences]]
name = "dp_gaussian"
clip_norm = {CLIP}
noise_multiplier = [0.0, 0.003, 1.0]
placement = ["client", "server"]
delta = {DELTA}
"""
LEVELS = (0.0, 0.003, 1.0)


def rdp_epsilon(noise_multiplier: float, releases: int) -> float:
    accountant = rdp.RdpAccountant()
    accountant.compose(dp_event.GaussianDpEvent(noise_multiplier), releases)
    return accountant.get_epsilon(DELTA)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, float], dict[str, Any]]:
    """(placement, z) → {"server": PSNR, "participant": PSNR, "view_epsilon": {position: ε},
    **the point's sweep.csv columns}."""
    folder = tmp_path_factory.mktemp("dp")
    (folder / "dp.toml").write_text(SCENARIO, encoding="utf-8")
    assert main(["run", str(folder / "dp.toml"), "--out", str(folder / "run")]) == 0
    results = json.loads((folder / "run" / "results.json").read_text(encoding="utf-8"))
    with (folder / "run" / "sweep.csv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(results["records"]) == 12 and all(r["status"] == "ok" for r in results["records"])
    points: dict[tuple[str, float], dict[str, Any]] = {}
    for row in rows:
        key = (row["defences[0].placement"], float(row["defences[0].noise_multiplier"]))
        point = points.setdefault(key, {**row, "view_epsilon": {}})
        point[row["position"]] = float(row["psnr"])
        point["view_epsilon"][row["position"]] = row["epsilon"]
    return points


def best(point: dict[str, Any]) -> float:
    return max(point["server"], point["participant"])


def accuracy(point: dict[str, Any]) -> float:
    return float(point["test_accuracy"])


def test_leakage_and_accuracy_fall_as_client_noise_rises(sweep: dict) -> None:
    clean, mid, high = (sweep[("client", z)] for z in LEVELS)
    assert best(clean) > 60  # DLG recovers the digits without noise
    assert best(mid) < best(clean) - 20
    assert best(high) < 12  # nothing recognisable left
    assert accuracy(clean) > accuracy(high) + 0.2
    assert accuracy(mid) > accuracy(high)


def test_central_noise_protects_the_participant_but_not_the_server(sweep: dict) -> None:
    clean, high = sweep[("server", 0.0)], sweep[("server", 1.0)]
    # The server sees the raw uploads, whatever noise it adds to the aggregate.
    assert high["server"] == pytest.approx(clean["server"], abs=1e-6) and clean["server"] > 60
    assert clean["participant"] > 30 and high["participant"] < 12
    # Noise on the clients protects against both.
    local = sweep[("client", 1.0)]
    assert local["server"] < 12 and local["participant"] < 12


def test_epsilon_spans_every_round(sweep: dict) -> None:
    for z in LEVELS[1:]:
        local, central = sweep[("client", z)], sweep[("server", z)]
        # Every client takes part in every round: ROUNDS releases each, multiplier z/2.
        assert float(local["epsilon_client"]) == pytest.approx(rdp_epsilon(z / 2, ROUNDS), rel=1e-6)
        assert float(central["epsilon_server"]) == pytest.approx(rdp_epsilon(z, ROUNDS), rel=1e-6)
        # What covers each view: under central DP, nothing covers the server's.
        assert local["view_epsilon"] == {
            p: local["epsilon_client"] for p in ("server", "participant")
        }
        assert central["view_epsilon"] == {"server": "", "participant": central["epsilon_server"]}
    assert sweep[("client", 0.0)]["epsilon_client"] == "inf"


def test_measured_noise_is_the_configured_noise(sweep: dict) -> None:
    assert float(sweep[("server", 1.0)]["server_noise_std"]) == pytest.approx(
        CLIP / CLIENTS, rel=0.02
    )
    # What a dp_gaussian client measured of its noise would reveal the noise: it stays
    # on the client (the measurement itself: tests/test_dp_defences.py).
    assert all(sweep[("client", z)]["client_noise_std"] == "" for z in LEVELS)
