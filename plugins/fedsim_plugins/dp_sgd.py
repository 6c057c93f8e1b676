"""DP-SGD on the client with Opacus (Abadi et al. 2016; Opacus: Yousefpour et al. 2021).

Each client trains with Opacus's ``PrivacyEngine.make_private``: Poisson
sampling of its shard (sample rate ``q = 1 / ceil(n / batch_size)``, as Opacus
sets it), per-sample gradients clipped to ``max_grad_norm`` (C), Gaussian
noise of std ``noise_multiplier · C`` on their sum, divided by Opacus's
expected batch size. ``fedavg`` runs ``local_epochs`` passes of such steps
and uploads the weight delta; ``fedsgd`` takes one Poisson batch and uploads
its noisy gradient (the server applies the learning rate).

The accountant (Opacus's RDP accountant) persists across rounds: its history
of ``(noise_multiplier, q, steps)`` is the defence's state, which fedsim keeps
per client in Flower's ``Context.state`` and restores next round. Every round
therefore reports the ε spent *since the first round* at ``delta``, not the
ε of one round (the mistake of creating a fresh ``PrivacyEngine`` each round).
The guarantee is sample-level DP for each client's data, against anyone who
sees its uploads (the server and participants alike).

The Poisson sampling and the noise draw from the client's generator: seeded
from the scenario in simulation (reproducible), from the client's OS entropy
on the deployment engine, so that the server can neither replay the noise nor
know which samples a step used. Opacus's ``secure_mode`` is not used: it
needs ``torchcsprng``, whose last release (0.2.1) requires PyTorch 1.8.1 and
Python ≤ 3.9. A reply
carries only ``noise_std``, ``sample_rate``, ``expected_batch_size``,
``epsilon`` and ``delta`` of the measurements: the training loss, the
realised batch size and the statistics of the noise drawn stay on the client.

Opacus cannot train some layers (e.g. BatchNorm): the scenario is rejected
with Opacus's reason, unless ``fix_model = true`` lets
``ModuleValidator.fix`` replace them (BatchNorm → GroupNorm) in the model
that every process uses.
"""

from __future__ import annotations

import functools
import logging
import math
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedsim.api import Defence, DefenceParams, LocalTraining, TrainingResult
from fedsim.privacy.noise import noise_ratio

if TYPE_CHECKING:
    from opacus.optimizers import DPOptimizer

ACCOUNTANT = "rdp"


@functools.cache
def _opacus() -> types.SimpleNamespace:
    """Opacus, imported on first use. Its import calls ``logging.basicConfig``
    (``opacus.utils.module_utils``), which gives the root logger a stderr handler
    and so echoes Flower's debug log on the console; that handler is removed again."""
    before = list(logging.root.handlers)
    from opacus import PrivacyEngine
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    for handler in [h for h in logging.root.handlers if h not in before]:
        logging.root.removeHandler(handler)
    return types.SimpleNamespace(
        PrivacyEngine=PrivacyEngine,
        GradSampleModule=GradSampleModule,
        ModuleValidator=ModuleValidator,
    )


class DPSGDParams(DefenceParams):
    noise_multiplier: float = Field(
        1.0, ge=0.0, description="z: noise std z·C on the summed gradient"
    )
    max_grad_norm: float = Field(1.0, gt=0.0, description="C: per-sample gradient L2 bound")
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="δ at which ε is reported")
    fix_model: bool = Field(
        False, description="let Opacus's ModuleValidator.fix replace layers it cannot train"
    )


@contextmanager
def _quiet_opacus() -> Iterator[None]:
    """Silence Opacus's two expected warnings: no secure RNG (``secure_mode`` needs
    ``torchcsprng``; fedsim's generator is seeded on purpose in simulation and from OS
    entropy on the deployment engine) and backward hooks firing on inputs that need no
    gradient (the images)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


class _NoiseMeter:
    """Measures, after each DP step, the noise Opacus added to the averaged gradient:
    its per-coordinate std over all steps, and the ratio of its L2 norm to that of the
    clipped (noise-free) averaged gradient, root-mean-square over the steps."""

    def __init__(self) -> None:
        self.total = self.noise_squares = self.clean_squares = 0.0
        self.count = self.steps = 0

    def measure(self, optimizer: DPOptimizer) -> None:
        for p in optimizer.params:
            clean = p.summed_grad.view_as(p) / optimizer.expected_batch_size
            noise = (p.grad - clean).double()
            self.total += float(noise.sum())
            self.noise_squares += float(noise.pow(2).sum())
            self.clean_squares += float(clean.double().pow(2).sum())
            self.count += noise.numel()
        self.steps += 1

    def as_dict(self) -> dict[str, float]:
        count = max(self.count, 1)
        mean = self.total / count
        return {
            "measured_noise_std": math.sqrt(max(self.noise_squares / count - mean**2, 0.0)),
            "noise_to_update_norm": noise_ratio(
                math.sqrt(self.noise_squares), math.sqrt(self.clean_squares)
            ),
        }


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; 0 for an empty Poisson batch (which then contributes only noise)."""
    return F.cross_entropy(model(x), y, reduction="sum") / max(len(y), 1)


class DPSGD(Defence[DPSGDParams]):
    name = "dp_sgd"
    summary = (
        "DP-SGD with Opacus on each client: Poisson sampling, per-sample clipping to C, "
        "noise z·C; Opacus's RDP accountant, kept across rounds, reports ε."
    )
    formal_guarantee = True
    public_measurements = frozenset(
        {"noise_std", "sample_rate", "expected_batch_size", "epsilon", "delta"}
    )
    stages = ("training",)
    Params = DPSGDParams

    def __init__(self, params: DPSGDParams) -> None:
        super().__init__(params)
        self.history: list[tuple[float, float, int]] = []

    def supports(self, model: nn.Module) -> str | None:
        model.train()
        opacus = _opacus()
        errors = opacus.ModuleValidator.validate(model, strict=False)
        errors += opacus.GradSampleModule.validate(model, strict=False)
        if not errors:
            return None
        reasons = "; ".join(str(e).split(". ")[0] for e in errors)
        if self.params.fix_model:
            return f"Opacus cannot train this model even after ModuleValidator.fix: {reasons}"
        return (
            f"Opacus cannot train this model: {reasons}; set fix_model = true to let "
            "Opacus's ModuleValidator.fix replace those layers"
        )

    def prepare_model(self, model: nn.Module) -> nn.Module:
        validator = _opacus().ModuleValidator
        if not self.params.fix_model or not validator.validate(model.train(), strict=False):
            return model
        return validator.fix(model)

    def train(self, task: LocalTraining) -> TrainingResult:
        seeds = torch.randint(0, 2**62, (2,), generator=task.generator).tolist()
        loader = DataLoader(
            TensorDataset(task.images, task.labels),
            batch_size=task.batch_size,
            generator=torch.Generator().manual_seed(seeds[0]),
        )
        model = task.model
        before = {n: q.detach().clone() for n, q in model.named_parameters()}
        with _quiet_opacus():
            engine = _opacus().PrivacyEngine(accountant=ACCOUNTANT)
            if self.history:
                engine.accountant.load_state_dict(
                    {"history": list(self.history), "mechanism": ACCOUNTANT}
                )
            hooks, optimizer, private_loader = engine.make_private(
                module=model,
                optimizer=torch.optim.SGD(model.parameters(), lr=task.lr),
                data_loader=loader,
                noise_multiplier=self.params.noise_multiplier,
                max_grad_norm=self.params.max_grad_norm,
                poisson_sampling=True,
                noise_generator=torch.Generator().manual_seed(seeds[1]),
                wrap_model=False,
            )
            try:
                result = self._run(task, model, optimizer, private_loader, before)
            finally:
                hooks.cleanup()
        self.history = [tuple(h) for h in engine.accountant.history]
        epsilon = (
            engine.accountant.get_epsilon(self.params.delta)
            if self.params.noise_multiplier > 0
            else math.inf
        )
        result.measurements.update(
            noise_std=self.params.noise_multiplier
            * self.params.max_grad_norm
            / optimizer.expected_batch_size,
            sample_rate=1 / len(private_loader),
            expected_batch_size=optimizer.expected_batch_size,
            epsilon=epsilon,
            delta=self.params.delta,
        )
        return result

    @staticmethod
    def _run(
        task: LocalTraining,
        model: nn.Module,
        optimizer: DPOptimizer,
        loader: DataLoader,
        before: dict[str, torch.Tensor],
    ) -> TrainingResult:
        meter = _NoiseMeter()
        losses: list[float] = []
        epochs = 1 if task.protocol == "fedsgd" else task.epochs
        for _ in range(epochs):
            for x, y in loader:
                optimizer.zero_grad()
                loss = _loss(model, x, y)
                loss.backward()
                if len(y):
                    losses.append(loss.item())
                if optimizer.pre_step():
                    meter.measure(optimizer)
                    if task.protocol == "fedsgd":
                        gradient = {n: _gradient(q) for n, q in model.named_parameters()}
                        return TrainingResult(
                            gradient, _mean(losses), 1, (x, y),
                            optimizer.expected_batch_size, meter.as_dict(),
                        )  # fmt: skip
                    optimizer.original_optimizer.step()
        delta = {n: q.detach() - before[n] for n, q in model.named_parameters()}
        steps = meter.steps
        return TrainingResult(
            delta, _mean(losses), steps, (task.images, task.labels), len(task.labels),
            meter.as_dict(),
        )  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [tuple(h) for h in state["history"]]


def _gradient(parameter: torch.Tensor) -> torch.Tensor:
    """A copy of ``parameter``'s gradient (the privatised one after Opacus's step)."""
    if parameter.grad is None:
        raise ValueError("a parameter has no gradient after the private step")
    return parameter.grad.detach().clone()


def _mean(values: list[float]) -> float:
    """Mean of the losses of non-empty batches; 0 when every batch was empty."""
    return sum(values) / len(values) if values else 0.0
