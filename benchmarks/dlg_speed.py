"""DLG's inner loop: a textbook PyTorch DLG against fedsim's DLG, in one process.

Usage: ``python benchmarks/dlg_speed.py``. LeNet-Sigmoid (weights U(−0.5, 0.5)), one
32×32 RGB photo, 2 CPU threads, in two settings (:data:`SETTINGS`): the quickstart's
(a 6-class head; 4 photos, ``load_photos(32, 4, 0)`` sample 0 of the first four
classes, × model seeds 0, 1) and the DLG paper's (a 100-class head as for CIFAR-100;
other images, random crops of all six photographs, × model seeds 2, 3, 4). Each run
stops once the dummy image (clamped to [0, 1])
is within MSE 1e-3 of the true one — checked after every optimiser step, with
the ground truth only the benchmark has — or after ``BUDGET`` objective
evaluations. Baseline and fedsim runs are interleaved so that a change in
machine load hits both. Prints per method: successes, the cases the baseline
solved that it did not ("lost"), median time to MSE < 1e-3, median evaluations,
median time per evaluation (successful runs), and the ratio of median times
baseline / fedsim.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from fedsim_plugins.dlg import ITERATIONS_PER_STEP, DLGParams
from fedsim_plugins.dlg import config as dlg_config
from rich.console import Console
from rich.table import Table

from fedsim.data.datasets import load_photos
from fedsim.inversion.gradient_matching import match_gradients
from fedsim.models.zoo import build_model

SHAPE = (3, 32, 32)
TARGET_MSE = 1e-3
BUDGET = 3000  # objective evaluations per run


@dataclass(frozen=True)
class Setting:
    """A model head and the cases (image index in ``load_photos(32, 4, 0)`` × model seed)."""

    name: str
    classes: int
    photos: tuple[int, ...]
    seeds: tuple[int, ...]


SETTINGS = (
    # sample 0 (the full photograph) of classes 0-3
    Setting("quickstart's LeNet, 6 classes", 6, (0, 4, 8, 12), (0, 1)),
    # random crops (samples 1-3) of each of the six photographs
    Setting("DLG paper's LeNet, 100 classes", 100, (1, 6, 11, 13, 18, 23), (2, 3, 4)),
)


@dataclass
class Run:
    seconds: float
    evaluations: int
    success: bool


def problem(
    classes: int, photo: int, seed: int
) -> tuple[torch.Tensor, torch.nn.Module, dict[str, torch.Tensor]]:
    """The true image, the model and the gradient of one client's single-image batch."""
    x, y = load_photos(32, 4, 0).batch(torch.tensor([photo]))
    model = build_model("lenet", input_shape=SHAPE, num_classes=classes, seed=seed)
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    return x, model, {n: g.detach() for n, g in zip(names, grads, strict=True)}


def mse(images: torch.Tensor, truth: torch.Tensor) -> float:
    return float(((images.detach().clamp(0, 1) - truth) ** 2).mean())


def baseline(classes: int, photo: int, seed: int) -> Run:
    """The textbook DLG loop (Zhu et al.'s demo): N(0,1) dummies, LBFGS defaults."""
    truth, model, gradient = problem(classes, photo, seed)
    params = list(model.parameters())
    targets = [gradient[n] for n, _ in model.named_parameters()]
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, *SHAPE, generator=generator).requires_grad_()
    y = torch.randn(1, classes, generator=generator).requires_grad_()
    optimizer = torch.optim.LBFGS([x, y], lr=1)
    calls = 0

    def closure() -> torch.Tensor:
        nonlocal calls
        calls += 1
        optimizer.zero_grad()
        loss = torch.mean(torch.sum(-F.softmax(y, -1) * F.log_softmax(model(x), -1), -1))
        dummy = torch.autograd.grad(loss, params, create_graph=True)
        distance = sum(((g - t) ** 2).sum() for g, t in zip(dummy, targets, strict=True))
        distance.backward()  # type: ignore[union-attr]
        return distance  # type: ignore[return-value]

    start = time.perf_counter()
    while calls < BUDGET:
        before = calls
        optimizer.step(closure)
        if mse(x, truth) < TARGET_MSE:
            return Run(time.perf_counter() - start, calls, True)
        if calls == before or not torch.isfinite(x).all():  # stalled or diverged
            break
    return Run(time.perf_counter() - start, calls, False)


def fedsim(label_init: str) -> Callable[[int, int, int], Run]:
    def attack(classes: int, photo: int, seed: int) -> Run:
        truth, model, gradient = problem(classes, photo, seed)
        # the same budget of evaluations: DLG's `iterations` counts steps of 20 of them
        iterations = BUDGET // ITERATIONS_PER_STEP
        params = DLGParams(label_init=label_init, iterations=iterations)  # type: ignore[arg-type]
        config = dlg_config(params)
        reached = False

        def on_step(step: int, images: torch.Tensor) -> bool:
            nonlocal reached
            reached = mse(images, truth) < TARGET_MSE
            return reached

        result = match_gradients(
            model, gradient, input_shape=SHAPE, batch_size=1, num_classes=classes,
            config=config, seed=seed, on_step=on_step,
        )  # fmt: skip
        return Run(result.seconds, result.evaluations, reached)

    return attack


def report(setting: Setting, runs: dict[str, list[Run]]) -> Table:
    """Per method: successes, cases lost against the first method (the baseline),
    median time and evaluations to the target, time per evaluation, and the speed-up
    over the baseline."""
    table = Table(title=f"DLG to MSE < {TARGET_MSE:g}, {setting.name}, 32×32, 2 threads")
    columns = ("method", "success", "lost", "median s to MSE", "median evals", "ms / eval")
    for column in (*columns, "speed-up"):
        table.add_column(column, justify="left" if column == "method" else "right")
    base_time = None
    base_runs = next(iter(runs.values()))
    for name, results in runs.items():
        lost = sum(b.success and not r.success for b, r in zip(base_runs, results, strict=True))
        ok = [r for r in results if r.success]
        seconds = statistics.median(r.seconds for r in ok) if ok else float("nan")
        evals = statistics.median(r.evaluations for r in ok) if ok else float("nan")
        per_eval = statistics.median(1e3 * r.seconds / r.evaluations for r in ok) if ok else 0.0
        base_time = seconds if base_time is None else base_time
        table.add_row(
            name, f"{len(ok)}/{len(results)}", str(lost), f"{seconds:.2f}", f"{evals:.0f}",
            f"{per_eval:.2f}", f"{base_time / seconds:.2f}×",
        )  # fmt: skip
    return table


def main() -> None:
    torch.set_num_threads(2)
    methods: dict[str, Callable[[int, int, int], Run]] = {
        "baseline (textbook PyTorch DLG)": baseline,
        "fedsim DLG, label_init=random": fedsim("random"),
        "fedsim DLG, label_init=gradient_sign": fedsim("gradient_sign"),
    }
    console = Console()
    for setting in SETTINGS:
        runs: dict[str, list[Run]] = {name: [] for name in methods}
        for seed in setting.seeds:
            for photo in setting.photos:
                for name, method in methods.items():
                    runs[name].append(method(setting.classes, photo, seed))
        console.print(report(setting, runs))


if __name__ == "__main__":
    main()
