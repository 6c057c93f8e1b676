"""Does the learning preset (``scenarios/learning.toml``) learn beyond the setting it
was chosen on? Test accuracy against the round for local epochs, batch sizes and
partitions, over several seeds.

Usage: ``python benchmarks/learning.py [--seeds 0 1 2] [--settings iid-e1-b8 ...]
[--mnist DIR]``.

``--mnist DIR`` (a folder with MNIST's IDX files, e.g. the test set alone) adds
the preset on MNIST at 32×32: all of its images, 20 % held out.

Each setting runs the scenario as shipped with ``--set`` overrides (one
``fedsim run`` per setting, its seeds a sweep) and prints, per seed, the first
round whose test accuracy reached 95 % and the accuracy after the last round,
then the wall time of the setting (all seeds) on this machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "learning.toml"
TARGET = 0.95
SETTINGS: dict[str, dict[str, object]] = {
    # name: overrides of the scenario (partition, local epochs, batch size, lr, FedAvgM)
    "iid-e1-b8": {},
    "dirichlet-e1-b8": {"data.partition": "dirichlet"},
    "iid-e1-b32": {"federation.batch_size": 32},
    "dirichlet-e1-b32": {"data.partition": "dirichlet", "federation.batch_size": 32},
    "iid-e1-b32-lr0.15": {"federation.batch_size": 32, "federation.lr": 0.15},
    "dirichlet-e1-b32-lr0.15": {
        "data.partition": "dirichlet",
        "federation.batch_size": 32,
        "federation.lr": 0.15,
    },
    "iid-e1-b32-lr0.2": {"federation.batch_size": 32, "federation.lr": 0.2},
    "dirichlet-e1-b32-lr0.2": {
        "data.partition": "dirichlet",
        "federation.batch_size": 32,
        "federation.lr": 0.2,
    },
    "iid-e1-b32-m0.7": {"federation.batch_size": 32, "federation.server_momentum": 0.7},
    "dirichlet-e1-b32-m0.7": {
        "data.partition": "dirichlet",
        "federation.batch_size": 32,
        "federation.server_momentum": 0.7,
    },
    "iid-e5-b8": {"federation.local_epochs": 5, "federation.lr": 0.05},
    "dirichlet-e5-b8": {
        "data.partition": "dirichlet",
        "federation.local_epochs": 5,
        "federation.lr": 0.05,
    },
    "iid-e5-b32": {"federation.local_epochs": 5},
    "dirichlet-e5-b32": {"data.partition": "dirichlet", "federation.local_epochs": 5},
}


def mnist_setting(root: Path) -> dict[str, object]:
    """The preset on the MNIST images under ``root``, all of them (10,000 for the test set)."""
    return {"data.dataset": "mnist", "data.root": str(root), "data.max_samples": 70_000}


def run_setting(
    name: str, overrides: dict[str, object], seeds: list[int], out: Path
) -> tuple[list[dict[int, float]], float]:
    """Run one setting; returns each seed's accuracy per round and the wall seconds."""
    overrides = {**overrides, "seed": seeds}
    args = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "fedsim.cli", "run", str(SCENARIO), "--out", str(out / name),
         *(a for arg in args for a in ("--set", arg))],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    results = json.loads((out / name / "results.json").read_text(encoding="utf-8"))
    curves = [
        {int(r): a for r, a in t["accuracy"].items() if int(r) > 0} for t in results["trials"]
    ]
    return curves, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--mnist", type=Path, help="a folder with MNIST's IDX files")
    args = parser.parse_args()
    settings = {name: SETTINGS[name] for name in args.settings}
    if args.mnist is not None:
        settings["mnist-iid-e1-b8"] = mnist_setting(args.mnist.resolve())
    table = Table(title=f"learning preset: first round ≥ {TARGET:.0%} / accuracy after the last")
    table.add_column("setting", justify="left")
    for seed in args.seeds:
        table.add_column(f"seed {seed}")
    table.add_column("wall s")
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in settings.items():
            curves, seconds = run_setting(name, overrides, args.seeds, Path(tmp))
            cells = []
            for curve in curves:
                first = min((r for r, a in curve.items() if a >= TARGET), default=None)
                cells.append(f"{first if first else 'never'} / {curve[max(curve)]:.3f}")
            table.add_row(name, *cells, f"{seconds:.0f}")
            Console().print(f"{name}: {', '.join(cells)} ({seconds:.0f} s)")
    Console().print(table)


if __name__ == "__main__":
    main()
