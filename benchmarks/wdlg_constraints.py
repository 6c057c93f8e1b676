"""WDLG's critic under each Lipschitz constraint, on the ``wdlg_vs_dlg`` scenario.

Usage: ``python benchmarks/wdlg_constraints.py [--clients 4] [--seconds 60]
[--plot docs/wdlg_constraints.png]``.

The uploads are those of ``scenarios/wdlg_vs_dlg.toml`` at batch size 1, round 1
(digits, LeNet-Sigmoid, FedSGD), computed in this process by the clients' own
code (``local_update``) instead of a Flower federation; every variant attacks
each client's upload with the seed the scenario gives WDLG. After every L-BFGS
step the reconstruction (clamped to [0, 1]) is scored against the true digit —
only the benchmark holds it — and the first step and second at which it reaches
PSNR ≥ 30 dB (``fedsim.metrics.SUCCESS_PSNR``) are kept; the attack itself runs
its full budget (``--seconds`` of wall time or 500 steps) as in the scenario.
Variants are interleaved per client so that a change in machine load hits all.

Prints per variant: successes (the output at ≥ 30 dB), how many runs reached 30 dB
at some step, median steps, objective evaluations and seconds until they did,
the median final PSNR and the time per evaluation; ``--plot`` saves the loss and
PSNR curves.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from fedsim_plugins.wdlg import WDLGParams
from fedsim_plugins.wdlg import config as wdlg_config
from flwr.app import ArrayRecord
from rich.console import Console
from rich.table import Table

from fedsim.federation.client_app import local_update
from fedsim.inversion.gradient_matching import DISTANCES, match_gradients
from fedsim.metrics import SUCCESS_PSNR, psnr
from fedsim.scenario import Scenario, load, parse_override
from fedsim.trial_inputs import derive_seed, federated_data, model_factory

SCENARIO = Path(__file__).resolve().parent.parent / "scenarios" / "wdlg_vs_dlg.toml"
WDLG_INDEX = 1  # position of [[attacks]] wdlg in the scenario: it fixes the attack seed
VARIANTS: dict[str, dict[str, object]] = {
    "projection, linear": {"constraint": "projection", "critic": "linear"},
    "clip c=0.01, linear": {"constraint": "clip", "critic": "linear"},
    **{
        f"penalty λ={weight:g}, linear": {
            "constraint": "penalty",
            "critic": "linear",
            "penalty_weight": weight,
        }
        for weight in (10.0, 1.0, 0.3, 0.1)
    },
    "clip c=0.01, mlp": {"constraint": "clip", "critic": "mlp"},
    "penalty λ=10, mlp": {"constraint": "penalty", "critic": "mlp", "penalty_weight": 10.0},
    "squared L2 (λ → 0)": {"distance": "l2"},
}
"""WDLG parameters per variant; ``distance`` replaces the critic by a named distance
(the squared L2 of DLG/iDLG: a penalised linear critic's objective ``Δ + Δ²/4λ`` is
dominated by ``Δ²/4λ`` as λ → 0)."""


@dataclass
class Run:
    losses: list[float] = field(default_factory=list)
    psnrs: list[float] = field(default_factory=list)
    success_step: int | None = None
    success_seconds: float | None = None
    success_evaluations: int | None = None
    evaluations: int = 0
    seconds: float = 0.0

    @property
    def success(self) -> bool:
        """The attack's output (its last step) reaches the threshold."""
        return bool(self.psnrs) and self.psnrs[-1] >= SUCCESS_PSNR


def scenario(clients: int) -> Scenario:
    overrides = [
        "federation.batch_size=1",
        f"federation.num_clients={clients}",
        f"federation.clients_per_round={clients}",
    ]
    return load(SCENARIO, overrides)[1][0].scenario


def attack(chosen: Scenario, client: int, params: WDLGParams, distance: str | None = None) -> Run:
    """One WDLG attack on ``client``'s round-1 upload, scored after every step."""
    data = federated_data(chosen)
    model = model_factory(chosen, data)()
    state = ArrayRecord.from_torch_state_dict(model.state_dict())
    reply, (x, y) = local_update(chosen, client, 1, state)
    update = reply.update
    run = Run()
    calls = 0
    start = time.perf_counter()

    def on_step(step: int, images: torch.Tensor) -> None:
        run.psnrs.append(psnr(x[0].numpy(), images[0].clamp(0, 1).numpy()))
        if run.success_step is None and run.psnrs[-1] >= SUCCESS_PSNR:
            run.success_step, run.success_seconds = step + 1, time.perf_counter() - start
            run.success_evaluations = calls

    seed = derive_seed(chosen.seed, "attack", WDLG_INDEX, 1, client)
    config = wdlg_config(params, seed)
    if distance is not None:
        config = replace(config, distance=distance)
    make_distance = (
        DISTANCES[config.distance] if isinstance(config.distance, str) else config.distance
    )

    def counted(targets: list[torch.Tensor]) -> Callable[[list[torch.Tensor]], torch.Tensor]:
        inner = make_distance(targets)

        def distance(grads: list[torch.Tensor]) -> torch.Tensor:
            nonlocal calls
            calls += 1
            return inner(grads)

        return distance

    result = match_gradients(
        model.eval(), update, input_shape=data.input_shape, batch_size=1,
        num_classes=data.num_classes, labels=y, config=replace(config, distance=counted),
        seed=seed, on_step=on_step,
    )  # fmt: skip
    run.losses, run.evaluations, run.seconds = result.loss_curve, result.evaluations, result.seconds
    return run


COLUMNS = (
    "variant", "success", "reached ≥30 dB", "steps to 30 dB", "evaluations to 30 dB",
    "s to 30 dB", "final PSNR dB", "ms / evaluation",
)  # fmt: skip
"""``success``: the output (last step) is at PSNR ≥ 30 dB; ``reached``: some step was;
the ``to 30 dB`` columns are medians over the runs that reached it; ``final PSNR`` is
the median over all runs."""


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}" if values else "-"


def plot(runs: dict[str, list[Run]], path: Path) -> None:
    """One panel per variant: each client's objective (relative to its first value, log
    scale, left) and PSNR (right), one colour per client."""
    columns = 3
    rows = math.ceil(len(runs) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.9 * rows), squeeze=False)
    for ax, (name, results) in zip(axes.flat, runs.items(), strict=False):
        quality = ax.twinx()
        for colour, run in zip(plt.cm.tab10.colors, results, strict=False):
            first = abs(run.losses[0]) or 1.0
            ax.plot([max(abs(v) / first, 1e-9) for v in run.losses], color=colour,
                    linewidth=0.8, alpha=0.8)  # fmt: skip
            quality.plot(run.psnrs, color=colour, linewidth=1.2, linestyle=":")
        quality.axhline(SUCCESS_PSNR, color="grey", linewidth=0.8)
        quality.set(ylim=(0, 90), ylabel="PSNR dB (dotted)")
        ax.set(yscale="log", ylim=(1e-9, 1e4), xlabel="L-BFGS step",
               ylabel="objective / first (solid)")  # fmt: skip
        won = sum(r.success for r in results)
        ax.set_title(f"{name}: {won}/{len(results)} at ≥{SUCCESS_PSNR:g} dB", fontsize=9)
    for ax in list(axes.flat)[len(runs) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS))
    parser.add_argument("--plot", type=Path)
    parser.add_argument(
        "--param", action="append", default=[], metavar="KEY=VALUE",
        help="a WDLG parameter for every variant, e.g. --param critic_steps=10",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    extra = {str(key[0]): value for key, value in map(parse_override, args.param)}
    chosen = scenario(args.clients)
    runs: dict[str, list[Run]] = {name: [] for name in args.variants}
    for client in range(args.clients):
        for name in args.variants:
            settings = {**VARIANTS[name], **extra}
            distance = settings.pop("distance", None)
            params = WDLGParams(**settings, max_seconds=args.seconds, iterations=args.iterations)  # type: ignore[arg-type]
            runs[name].append(attack(chosen, client, params, distance))  # type: ignore[arg-type]
            last = runs[name][-1]
            print(f"client {client} {name}: final {last.psnrs[-1]:.1f} dB, "
                  f"success step {last.success_step}", flush=True)  # fmt: skip

    table = Table(title=f"WDLG constraints, wdlg_vs_dlg batch 1, {args.clients} clients, 1 thread")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name, results in runs.items():
        reached = [r for r in results if r.success_step is not None]
        table.add_row(
            name, f"{sum(r.success for r in results)}/{len(results)}",
            f"{len(reached)}/{len(results)}", median([r.success_step for r in reached]),
            median([r.success_evaluations for r in reached]),
            median([r.success_seconds for r in reached]),
            median([r.psnrs[-1] for r in results]),
            f"{1e3 * sum(r.seconds for r in results) / sum(r.evaluations for r in results):.1f}",
        )  # fmt: skip
    Console(width=160).print(table)
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
