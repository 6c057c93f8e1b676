"""Many clients: rounds per second and peak memory against the number of clients,
and fedsim's overhead against a plain Flower app doing the same work.

Usage: ``python benchmarks/scale.py [--clients 10 100 1000] [--repeats 3]``.

Both sides run ``scenarios/many_clients.toml`` with its attacks off and
``num_clients`` set: digits 32×32, the scenario's ConvNet, 10 clients per
round, 20 FedSGD rounds (one seeded batch of one image per client), central
test accuracy after every round, the scenario's simulation backend (one CPU per
client, all cores).

- *fedsim*: the whole ``fedsim run`` path (validation, run directory, results
  store, Flower's simulation engine with one stand-in node per client of a round).
- *plain Flower*: written here with Flower's own pieces only (``ClientApp``,
  ``ServerApp``, the ``FedAvg`` strategy sampling ``num_clients`` simulated nodes,
  the partition from each node's config) plus fedsim's data split, model,
  batch choice and test accuracy, on the same backend; clients upload
  their weights after one SGD step, which FedAvg averages: the same model
  update as FedSGD's averaged gradient.

Each run is a fresh Python process; runs alternate between the two so that a
change in machine load hits both; the median of ``--repeats`` runs is printed.
*Rounds/s* is the inverse of the median duration of rounds 2..20 (round 1
includes the clients' start-up). *CPU s/round* is the CPU time (user + system)
of the process tree (Ray's workers, if any, included) over rounds 2..20 divided by 19:
unlike wall time it hardly depends on what else runs on the machine, so it is
the figure fedsim's overhead is judged by. *Wall* is the whole run, any
start-up included; *peak memory* is sampled over the process and all its
descendants (Ray's workers included).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import FLOWER_LOGGER
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from process_tree import TreeMonitor
from rich.console import Console
from rich.table import Table

from fedsim.federation.client_app import training_batch
from fedsim.federation.runner import run_trial
from fedsim.federation.runtime import SimulationRuntime, logs_to
from fedsim.federation.server_app import test_accuracy
from fedsim.run import finish_run, prepare_run, run_trials
from fedsim.scenario import Scenario, Trial, load
from fedsim.trial_inputs import federated_data, model_factory

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "many_clients.toml"


@dataclass(frozen=True)
class Measurement:
    wall: float
    rounds_per_second: float
    cpu_per_round: float
    peak_mib: float
    accuracy: float


class RoundClock:
    """Wall and CPU time (whole process tree) at the end of each round."""

    def __init__(self, tree: TreeMonitor) -> None:
        self.tree = tree
        self.ends: dict[int, tuple[float, float]] = {}

    def mark(self, server_round: int) -> None:
        self.ends[server_round] = (time.perf_counter(), self.tree.cpu_seconds())

    def rounds_per_second(self) -> float:
        """The inverse of the median duration of rounds 2..last (the median, so that
        a burst of load from other jobs does not count)."""
        walls = [self.ends[r][0] for r in sorted(self.ends) if r >= 1]
        return 1.0 / statistics.median(b - a for a, b in itertools.pairwise(walls))

    def cpu_per_round(self) -> float:
        """CPU seconds the process tree spent per round over rounds 2..last."""
        last = max(self.ends)
        return (self.ends[last][1] - self.ends[1][1]) / (last - 1)


def run_fedsim(num_clients: int, folder: Path) -> Measurement:
    overrides = [f"federation.num_clients={num_clients}", "attacks=[]"]
    with TreeMonitor() as tree:
        clock = RoundClock(tree)

        def note(message: str) -> None:  # "round 3/20 done, test accuracy 0.123"
            if message.startswith("round ") and " done" in message:
                clock.mark(int(message.split()[1].split("/")[0]))

        start = time.perf_counter()
        run = prepare_run(SCENARIO, overrides, folder / "fedsim", "simulation", "shared-truth")

        def one(trial: Trial) -> None:
            run_trial(trial, run.store, run.run_dir, note, "shared-truth")

        def failed(_trial: Trial, error: str) -> None:
            raise RuntimeError(error)

        status = run_trials(run, one, failed)
        finish_run(run, status)
        wall = time.perf_counter() - start
    accuracy = run.store.data.trials[0].accuracy
    return Measurement(
        wall,
        clock.rounds_per_second(),
        clock.cpu_per_round(),
        tree.peak_mib,
        accuracy[max(accuracy)],
    )


def plain_client(scenario: Scenario) -> ClientApp:
    """A Flower ClientApp: one SGD step on its node's seeded batch, weights back."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        partition = int(context.node_config["partition-id"])
        server_round = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]
        model = model_factory(scenario, federated_data(scenario))()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y, _ = training_batch(scenario, partition, server_round)
        optimizer = torch.optim.SGD(model.parameters(), lr=scenario.federation.lr)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        metrics = MetricRecord({"num-examples": len(y), "train-loss": loss.item()})
        arrays = ArrayRecord.from_torch_state_dict(model.state_dict())
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    return app


def plain_server(scenario: Scenario, on_round: Callable[[int, float], None]) -> ServerApp:
    """A Flower ServerApp: FedAvg over randomly sampled nodes, central accuracy."""
    app = ServerApp()
    data = federated_data(scenario)
    factory = model_factory(scenario, data)
    fed = scenario.federation

    @app.main()
    def main(grid: Grid, _context: Context) -> None:
        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            accuracy = test_accuracy(factory, data, arrays.to_torch_state_dict())
            on_round(server_round, accuracy)
            return MetricRecord({"accuracy": accuracy})

        FedAvg(
            fraction_train=fed.clients_per_round / fed.num_clients,
            fraction_evaluate=0.0,
            min_train_nodes=fed.clients_per_round,
            min_available_nodes=fed.num_clients,
        ).start(
            grid=grid,
            initial_arrays=ArrayRecord.from_torch_state_dict(factory().state_dict()),
            num_rounds=fed.rounds,
            train_config=ConfigRecord(),
            evaluate_fn=evaluate,
        )

    return app


def run_plain(num_clients: int, folder: Path) -> Measurement:
    (folder / "plain").mkdir()
    _, trials = load(SCENARIO, [f"federation.num_clients={num_clients}", "attacks=[]"])
    scenario = trials[0].scenario
    accuracy: dict[int, float] = {}
    with TreeMonitor() as tree:
        clock = RoundClock(tree)

        def on_round(server_round: int, value: float) -> None:
            clock.mark(server_round)
            accuracy[server_round] = value

        start = time.perf_counter()
        with (
            logs_to(FLOWER_LOGGER, folder / "plain" / "flower.log"),
            SimulationRuntime(folder / "plain") as runtime,
            runtime.point(scenario),
        ):
            run_simulation(
                server_app=plain_server(scenario, on_round),
                client_app=plain_client(scenario),
                num_supernodes=num_clients,
            )
        wall = time.perf_counter() - start
    return Measurement(
        wall,
        clock.rounds_per_second(),
        clock.cpu_per_round(),
        tree.peak_mib,
        accuracy[max(accuracy)],
    )


def measure_in_subprocess(name: str, num_clients: int) -> Measurement:
    """One run in a fresh Python process, so that runs do not share caches or memory."""
    done = subprocess.run(
        [sys.executable, __file__, "--measure", name, str(num_clients)],
        capture_output=True,
        text=True,
        check=True,
    )
    return Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))


RUNNERS = {"fedsim": run_fedsim, "plain Flower": run_plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--measure", nargs=2, metavar=("APP", "CLIENTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.measure:  # one run, in this process: print its measurement as JSON
        name, clients = args.measure
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(asdict(RUNNERS[name](int(clients), Path(tmp)))))
        return
    runs: dict[tuple[str, int], list[Measurement]] = {}
    for repeat in range(args.repeats):
        for n in args.clients:
            for name in RUNNERS:
                measured = measure_in_subprocess(name, n)
                runs.setdefault((name, n), []).append(measured)
                print(f"[{repeat + 1}/{args.repeats}] {name:12s} {n:5d} clients: {measured}")

    def median(name: str, n: int, field: str) -> float:
        return statistics.median(getattr(m, field) for m in runs[(name, n)])

    table = Table(title=f"medians of {args.repeats} runs, 20 rounds, 10 clients per round")
    columns = ("rounds/s", "CPU s/round", "wall s", "peak MiB", "test acc")
    fields = ("rounds_per_second", "cpu_per_round", "wall", "peak_mib", "accuracy")
    formats = ("{:.2f}", "{:.3f}", "{:.1f}", "{:.0f}", "{:.3f}")
    for column in ("clients", "app", *columns, "fedsim CPU/round vs plain", "fedsim wall vs plain"):
        table.add_column(column, justify="right")
    for n in args.clients:
        for name in ("fedsim", "plain Flower"):
            overhead = ["", ""]
            if name == "fedsim":
                overhead = [
                    f"{median(name, n, field) / median('plain Flower', n, field) - 1:+.0%}"
                    for field in ("cpu_per_round", "wall")
                ]
            values = [f.format(median(name, n, k)) for f, k in zip(formats, fields, strict=True)]
            table.add_row(str(n), name, *values, *overhead)
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
