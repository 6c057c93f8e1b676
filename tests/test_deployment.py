"""fedsim's apps on Flower's deployment engine: a SuperLink and two SuperNodes on
127.0.0.1 (insecure, free ports), runs started with ``flwr run``, and their results
compared with the same scenarios in simulation: the same computations, except the
clients' noise, which on real machines comes from randomness the server cannot know."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from fedsim.cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr
DEADLINE = 600.0  # seconds for a deployed run, start-up included (three share the nodes)

SCENARIO = """\
name = "deployed"
seed = 1
device = "cpu"

[data]
dataset = "photos"
image_size = 16
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
iterations = 30
conv_backend = "default"  # not timed: the same numerics in both engines, whatever the load

[[attacks]]
name = "dlg"
position = "participant"
rounds = [2]
iterations = 5
conv_backend = "default"
"""


NOISY = """\
name = "noisy"
seed = 1
device = "cpu"

[data]
dataset = "photos"
image_size = 16
samples_per_class = 4

[model]
name = "lenet"
activation = "sigmoid"

[federation]
num_clients = 2
clients_per_round = 2
rounds = 1
protocol = "fedsgd"
batch_size = 1

[[defences]]
name = "gaussian_noise"
sigma = 0.01
placement = "client"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


class Federation:
    """A SuperLink and two SuperNodes (partitions 0 and 1) run as child processes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        home = folder / "flwr-home"
        home.mkdir()
        self.link_port = free_port()
        # Deployed processes start with 3 OpenMP threads, the simulating process below
        # with 2: fedsim itself must give every computation the scenario's thread count.
        self.env = {
            **os.environ,
            "FLWR_HOME": str(home),
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "OMP_NUM_THREADS": "3",
        }
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
            f'address = "127.0.0.1:{self.link_port}"\ninsecure = true\n',
            encoding="utf-8",
        )
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs = folder / "logs"
        self.logs.mkdir()

    def start(self, name: str, *args: str, cwd: Path) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                [str(BIN / args[0]), *args[1:]], cwd=cwd, env=self.env, stdout=log, stderr=log
            )
        self.processes.append(process)
        return process

    def up(self) -> None:
        link = self.start(
            "superlink",
            "flower-superlink",
            "--insecure",
            "--port",
            str(self.link_port),
            "--disable-runtime-dependency-installation",
            cwd=self.folder,
        )
        wait_for_port(self.link_port, link)
        for partition in (0, 1):
            port = free_port()
            node = self.start(
                f"supernode{partition}",
                "flower-supernode",
                "--insecure",
                "--superlink",
                f"127.0.0.1:{self.link_port}",
                "--port",
                str(port),
                "--node-config",
                f"partition-id={partition} num-partitions=2",
                cwd=self.folder,
            )
            wait_for_port(port, node)

    def down(self) -> None:
        """Stop every process this federation started, their children included."""
        tree: list[psutil.Process] = []
        for process in self.processes:
            try:
                tree += [psutil.Process(process.pid)]
                tree += psutil.Process(process.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
        for process in tree:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                continue
        _, alive = psutil.wait_procs(tree, timeout=15)
        for process in alive:
            process.kill()
        psutil.wait_procs(alive, timeout=10)

    def flwr_run(self, scenario: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(BIN / "flwr"),
                "run",
                str(ROOT / "deploy"),
                "local",
                "--run-config",
                f'scenario="{scenario}" run-dir="{run_dir}"',
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )


def wait_for_results(run_dir: Path, federation: Federation) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            results = json.loads((run_dir / "results.json").read_text("utf-8"))
        except (OSError, ValueError):
            results = {"status": "running"}
        if results["status"] != "running":
            return results  # type: ignore[no-any-return]
        time.sleep(1)
    logs = {
        p.name: p.read_text("utf-8", errors="replace")[-2000:] for p in federation.logs.iterdir()
    }
    raise TimeoutError(f"the deployed run did not finish in {DEADLINE:g} s; logs: {logs}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scenario files, and every run directory."""
    folder = tmp_path_factory.mktemp("deploy")
    (folder / "deployed.toml").write_text(SCENARIO, encoding="utf-8")
    (folder / "noisy.toml").write_text(NOISY, encoding="utf-8")
    return folder


def simulate(scenario: Path, run_dir: Path) -> dict[str, Any]:
    """``fedsim run`` of ``scenario`` in simulation, in this process (2 torch threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["run", str(scenario), "--out", str(run_dir)]) == 0
    finally:
        torch.set_num_threads(threads)
    results: dict[str, Any] = json.loads((run_dir / "results.json").read_text("utf-8"))
    return results


@pytest.fixture(scope="module")
def runs(folder: Path) -> dict[str, tuple[Path, Any]]:
    """Run directory and results of every run, by name. On one federation, submitted at
    once: ``deployed`` (the scenario) and ``noisy1``, ``noisy2`` (the noisy scenario
    twice). In simulation, in this process while the federation's processes work on
    those (the runs share nothing but the machine): ``simulated`` (the scenario) and
    ``noisy-simulated1``, ``noisy-simulated2`` (the noisy scenario twice)."""
    submitted = {
        "deployed": folder / "deployed.toml",
        "noisy1": folder / "noisy.toml",
        "noisy2": folder / "noisy.toml",
    }
    simulated = {
        "simulated": folder / "deployed.toml",
        "noisy-simulated1": folder / "noisy.toml",
        "noisy-simulated2": folder / "noisy.toml",
    }
    federation = Federation(folder)
    try:
        federation.up()
        for name, scenario in submitted.items():
            started = federation.flwr_run(scenario, folder / name)
            assert started.returncode == 0, started.stdout + started.stderr
        done: dict[str, tuple[Path, Any]] = {}
        for name, scenario in simulated.items():  # while the federation works
            done[name] = (folder / name, simulate(scenario, folder / name))
        for name in submitted:
            done[name] = (folder / name, wait_for_results(folder / name, federation))
        return done
    finally:
        federation.down()


def test_deployed_run_completes_scored_on_the_clients(runs: dict[str, tuple[Path, Any]]) -> None:
    run_dir, results = runs["deployed"]

    assert results["status"] == "complete"
    assert results["engine"] == "deployment"
    assert results["ground_truth"] == "on-client"
    (trial,) = results["trials"]
    assert trial["status"] == "complete" and trial["client_failures"] == []
    assert (run_dir / "scenario.resolved.json").is_file()
    images = [im for record in results["records"] for im in record["images"]]
    assert len(images) == 1 + 2  # the server's one image, the participant's two
    # No original left a client: only reconstructions are saved.
    assert all(im["original_png"] is None for im in images)
    assert all((run_dir / im["reconstruction_png"]).is_file() for im in images)


def test_deployed_run_equals_the_simulation(runs: dict[str, tuple[Path, Any]]) -> None:
    _, deployed = runs["deployed"]
    _, simulated = runs["simulated"]
    assert (simulated["engine"], simulated["ground_truth"]) == ("simulation", "shared-truth")

    # Same seed, same clients, same batches, the same torch thread count in every process
    # (the scenario's ``threads``): the computations are the same, in other processes, so
    # the global model's test accuracy per round and every attack's scores are equal.
    # (With the thread counts the processes started with, 1 vs 2, the server's DLG MSE
    # was 0.00693 vs 0.00737.)
    assert deployed["trials"][0]["accuracy"] == simulated["trials"][0]["accuracy"]

    def key(record: dict[str, Any]) -> tuple[Any, ...]:
        return record["round"], record["position"], record["client"]

    pairs = zip(
        sorted(deployed["records"], key=key), sorted(simulated["records"], key=key), strict=True
    )
    for ours, theirs in pairs:
        assert key(ours) == key(theirs)
        assert ours["status"] == theirs["status"] == "ok"
        assert ours["diagnostics"]["final_loss"] == pytest.approx(
            theirs["diagnostics"]["final_loss"], rel=1e-6
        )
        for metric in ("psnr", "ssim", "mse", "label_accuracy"):
            assert ours["metrics"][metric] == pytest.approx(theirs["metrics"][metric], rel=1e-6)


def client_noise(results: dict[str, Any]) -> float:
    """The noise std the clients measured in round 1 (mean over the clients)."""
    return float(results["trials"][0]["defences"]["1"]["clients"]["0"]["measured_noise_std"])


def test_deployed_clients_add_noise_the_server_cannot_replay(
    runs: dict[str, tuple[Path, Any]],
) -> None:
    (_, first), (_, second) = runs["noisy1"], runs["noisy2"]
    assert first["status"] == second["status"] == "complete"
    assert first["client_noise"] == second["client_noise"] == "os-entropy"
    simulated = [runs[f"noisy-simulated{i}"][1] for i in (1, 2)]
    assert simulated[0]["client_noise"] == "seeded"

    # One scenario, one seed: simulated runs draw the same noise (anyone who knows the
    # seed can replay it); deployed clients draw new noise every run.
    assert client_noise(simulated[0]) == client_noise(simulated[1])
    assert simulated[0]["trials"][0]["accuracy"] == simulated[1]["trials"][0]["accuracy"]
    assert client_noise(first) != client_noise(second)
    assert client_noise(simulated[0]) not in (client_noise(first), client_noise(second))
    # What the deployed clients sent: their upload and metrics, never their data.
    assert first["trials"][0]["client_sent"] == [
        "batch-size",
        "defence0.measured_noise_std",
        "defence0.noise_std",
        "defence0.noise_to_update_norm",
        "defence0.update_norm",
        "local-steps",
        "metrics",
        "num-examples",
        "partition-id",
        "train-loss",
        "update",
    ]
