"""When should DLG stop? The convergence stop measured against the full budget.

Usage: ``python benchmarks/attack_stops.py [--steps 2000] [--curves runs.json]``.

Cases: the quickstart's setting (LeNet-Sigmoid, 6 classes, one 32×32 photo, FedSGD
batch 1, DLG with its defaults) for photos 0, 4, 8 (sample 0 of classes 0-2 of
``load_photos(32, 4, 0)``) × model seeds 0, 1, 2 × Gaussian noise of standard
deviation 0, 0.01, 0.1 on the gradient; and a LeNet-Sigmoid with a 100-class head
(sigma 0 and 0.01, seed 0). Each case runs one restart for ``--steps`` L-BFGS
iterations with the stop off (``tolerance = 0``), recording after every step the
objective and the PSNR of the clamped dummy image against the true one (the ground
truth only the benchmark has). The stop rule is a pure function of the objective
curve (:func:`plateaued`), so each candidate stop is then replayed on the recorded
curves: where it would have stopped, why, and the PSNR there, against the PSNR at
the end of the budget. Prints one table per candidate (n, median and range).
The runs are deterministic (``conv_backend = "native"``, one thread each).
"""

from __future__ import annotations

import argparse
import json
import statistics
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import product

import torch
import torch.nn.functional as F
from fedsim_plugins.dlg import ITERATIONS_PER_STEP, DLGParams
from fedsim_plugins.dlg import config as dlg_config
from rich.console import Console
from rich.table import Table

from fedsim.data.datasets import load_photos
from fedsim.inversion.gradient_matching import match_gradients, plateaued
from fedsim.metrics import psnr
from fedsim.models.zoo import build_model

SHAPE = (3, 32, 32)
PHOTOS = [0, 4, 8]
SEEDS = [0, 1, 2]
SIGMAS = [0.0, 0.01, 0.1]
CASES = [(6, p, s, sigma) for sigma, p, s in product(SIGMAS, PHOTOS, SEEDS)] + [
    (100, p, 0, sigma) for sigma, p in product([0.0, 0.01], PHOTOS)
]
CANDIDATES = [  # (tolerance, window in DLG iterations, stall_loss)
    (1e-2, 5, 1e-3),
    (1e-3, 5, 1e-3),
    (1e-3, 10, 1e-3),
    (1e-4, 10, 1e-3),
]


@dataclass
class Curve:
    classes: int
    photo: int
    seed: int
    sigma: float
    loss: list[float]
    psnr: list[float]


def record(case: tuple[int, int, int, float], steps: int) -> Curve:
    """One full-budget run of ``case`` with the stop off: objective and PSNR per step."""
    torch.set_num_threads(1)
    classes, photo, seed, sigma = case
    truth, label = load_photos(32, 4, 0).batch(torch.tensor([photo]))
    model = build_model("lenet", input_shape=SHAPE, num_classes=classes, seed=seed)
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(F.cross_entropy(model(truth), label), params)
    noise = torch.Generator().manual_seed(seed)
    gradient = {
        n: g + sigma * torch.randn(g.shape, generator=noise)
        for n, g in zip(names, grads, strict=True)
    }
    dlg = DLGParams(iterations=steps // ITERATIONS_PER_STEP, conv_backend="native", tolerance=0.0)
    quality: list[float] = []

    def on_step(step: int, images: torch.Tensor) -> None:
        quality.append(psnr(truth[0].numpy(), images[0].clamp(0, 1).numpy()))

    result = match_gradients(
        model, gradient, input_shape=SHAPE, batch_size=1, num_classes=classes,
        config=dlg_config(dlg), seed=seed, on_step=on_step,
    )  # fmt: skip
    return Curve(classes, photo, seed, sigma, result.loss_curve, quality)


def replay(curve: Curve, tolerance: float, window: int, stall_loss: float) -> tuple[int, str]:
    """Steps taken and stop reason of the convergence stop on a recorded curve."""
    best: list[float] = []
    for value in curve.loss:
        best.append(min(value, best[-1]) if best else value)
        if plateaued(best, tolerance, window * ITERATIONS_PER_STEP):
            return len(best), "stalled" if best[-1] > stall_loss else "converged"
    return len(best), "budget"


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"


def report(curves: list[Curve], steps: int) -> None:
    console = Console(width=150)
    groups = sorted({(c.classes, c.sigma) for c in curves})
    for tolerance, window, stall_loss in CANDIDATES:
        table = Table(
            title=f"tolerance {tolerance:g}, window {window} DLG iterations "
            f"({window * ITERATIONS_PER_STEP} steps), stall_loss {stall_loss:g}; "
            f"budget {steps} steps"
        )
        for column in ("classes", "sigma", "n", "steps to stop", "reasons",
                       "PSNR at stop", "PSNR at budget", "final loss", "≥40 dB kept"):  # fmt: skip
            table.add_column(column, justify="right")
        for classes, sigma in groups:
            group = [c for c in curves if (c.classes, c.sigma) == (classes, sigma)]
            stops = [replay(c, tolerance, window, stall_loss) for c in group]
            at_stop = [c.psnr[n - 1] for c, (n, _) in zip(group, stops, strict=True)]
            at_budget = [c.psnr[-1] for c in group]
            reasons = {r: sum(1 for _, s in stops if s == r) for _, r in stops}
            good = [i for i, p in enumerate(at_budget) if p >= 40]
            kept = sum(1 for i in good if at_stop[i] >= 40)
            table.add_row(
                str(classes), f"{sigma:g}", str(len(group)),
                spread([float(n) for n, _ in stops], ".0f"),
                " ".join(f"{r}:{k}" for r, k in sorted(reasons.items())),
                spread(at_stop, ".1f"), spread(at_budget, ".1f"),
                spread([min(c.loss) for c in group], ".1e"), f"{kept}/{len(good)}",
            )  # fmt: skip
        console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="budget in L-BFGS iterations")
    parser.add_argument(
        "--curves", help="JSON-lines file: replay the curves recorded there, or record them into it"
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    try:  # recorded before (one JSON object per line): replay only
        with open(args.curves or "") as f:
            curves = [Curve(**json.loads(line)) for line in f]
    except FileNotFoundError:
        curves = []
        with ProcessPoolExecutor(args.workers) as pool:
            for curve in pool.map(record, CASES, [args.steps] * len(CASES)):
                curves.append(curve)
                if args.curves:  # written as they come, so that a cut-short run keeps them
                    with open(args.curves, "a") as f:
                        f.write(json.dumps(curve.__dict__) + "\n")
    report(curves, args.steps)


if __name__ == "__main__":
    main()
