"""The simulation engine's two backends on one sweep: Ray started once for all its
points and shut down with the run; ClientApps in threads computing exactly what Ray's
actors compute (accuracy every round, the attack's reconstruction scores)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import ray

from fedsim.cli import main
from fedsim.federation import runtime

pytestmark = pytest.mark.slow

SCENARIO = """\
name = "backends"
seed = 0
device = "cpu"
[data]
dataset = "digits"
image_size = 8
max_samples = 200
[model]
name = "convnet"
layers = [[3, 4, 2]]
activation = "tanh"
[federation]
num_clients = 4
clients_per_round = 2
rounds = 2
batch_size = 1
[[attacks]]
name = "dlg"
rounds = [1]
iterations = 3
conv_backend = "default"  # not timed: the same numerics in both runs
[[defences]]
name = "gaussian_noise"
sigma = [0.0, 0.01]
placement = "client"
[simulation]
backend = "{backend}"
"""


def run(folder: Path, backend: str) -> dict[str, Any]:
    (folder / f"{backend}.toml").write_text(SCENARIO.format(backend=backend), encoding="utf-8")
    out = folder / backend
    assert main(["run", str(folder / f"{backend}.toml"), "--out", str(out)]) == 0
    results: dict[str, Any] = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return results


def outcome(results: dict[str, Any]) -> tuple[Any, ...]:
    """Per point: test accuracy every round; per record, the reconstruction's scores."""
    accuracy = [t["accuracy"] for t in results["trials"]]
    scores = [(r["trial"], r["client"], r["metrics"]) for r in results["records"]]
    return accuracy, scores


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sweep on Ray (counting Ray's starts, and whether Ray outlived the run) and on
    threads."""
    folder = tmp_path_factory.mktemp("backends")
    starts: list[int] = []
    start = runtime._Session.__init__

    def counted(session: Any, *args: Any) -> None:
        starts.append(len(starts) + 1)
        start(session, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime._Session, "__init__", counted)
        on_ray = run(folder, "ray")
        ray_after = ray.is_initialized()
        on_threads = run(folder, "threads")
    return {
        "ray": on_ray,
        "threads": on_threads,
        "starts": starts,
        "ray_after": ray_after,
        "logs": folder / "ray" / "ray",
    }


def test_the_points_share_one_ray_runtime_closed_with_the_run(sweeps: dict[str, Any]) -> None:
    assert [t["status"] for t in sweeps["ray"]["trials"]] == ["complete", "complete"]
    assert sweeps["starts"] == [1]  # two points, one Ray (the threads run started none)
    assert sweeps["ray_after"] is False
    assert (sweeps["logs"] / "raylet.out").is_file()  # Ray's logs kept in the run directory


def test_threads_compute_what_ray_actors_compute(sweeps: dict[str, Any]) -> None:
    on_ray, on_threads = outcome(sweeps["ray"]), outcome(sweeps["threads"])
    assert len(on_threads[1]) == 2  # one attack per point
    assert on_threads == on_ray
