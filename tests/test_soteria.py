"""Soteria (the defence) and ``ignore_layers`` (the adaptive attack that leaves the
defended layer out of the matching objective), on a LeNet-Tanh and 32×32 digits."""

from __future__ import annotations

import functools
from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from fedsim_plugins.idlg import IDLG
from fedsim_plugins.soteria import Soteria
from torch import nn

from fedsim.api import LocalTraining, Observation, TrainingResult
from fedsim.data.datasets import load_digits
from fedsim.data.source import ImageData
from fedsim.federation.observer import run_attack
from fedsim.inversion.gradient_matching import MatchConfig
from fedsim.inversion.matching import reconstruct_by_matching
from fedsim.metrics import psnr
from fedsim.models.zoo import build_model
from fedsim.scenario import ScenarioError, Trial, expand
from fedsim.scenario.preflight import preflight
from fedsim.training.local import GradientHook, train_locally

SHAPE = (1, 32, 32)
CLASSES = 10
FEATURES = 12 * 8 * 8  # the input of LeNet's fc at 32×32
SEED = 1
DIGIT = 3  # the attacked digit's index in load_digits(32)


def lenet(shape: tuple[int, int, int] = SHAPE) -> nn.Module:
    """A LeNet-Tanh with PyTorch's initialisation, the same for every call."""
    return build_model(
        "lenet", input_shape=shape, num_classes=CLASSES, activation="tanh", seed=SEED,
        init="pytorch",
    )  # fmt: skip


@functools.cache
def digit_data(size: int) -> ImageData:
    return load_digits(size)


def digits(indices: list[int], size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    return digit_data(size).batch(indices)


def local_task(
    model: nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    protocol: Literal["fedsgd", "fedavg"] = "fedsgd",
    batch_size: int | None = None,
) -> LocalTraining:
    """FedSGD on the whole ``batch`` by default; FedAvg runs 2 epochs."""
    images, labels = batch
    return LocalTraining(
        model=model, images=images, labels=labels, protocol=protocol,
        batch_size=batch_size or len(labels), lr=0.1, epochs=2,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip


def plain(task: LocalTraining, on_gradients: GradientHook | None = None) -> TrainingResult:
    """The client's training with the mean cross-entropy of ``task.model``."""
    return train_locally(task, lambda x, y: F.cross_entropy(task.model(x), y), on_gradients)


def slow_scores(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Soteria's criterion the slow way, one backward pass per feature:
    ``s_f = Σ_b ‖∂r_{b,f}/∂X_b‖ / |r_{b,f}|`` for ``r`` the input of ``model.fc``."""
    x = images.clone().requires_grad_()
    inputs: list[torch.Tensor] = []
    handle = model.fc.register_forward_hook(lambda _m, args, _out: inputs.append(args[0]))
    model(x)
    handle.remove()
    r = inputs[0]
    scores = torch.zeros(r.shape[1])
    for f in range(r.shape[1]):
        (rows,) = torch.autograd.grad(r[:, f].sum(), x, retain_graph=True)
        scores[f] = (rows.flatten(1).norm(dim=1) / r[:, f].detach().abs()).sum()
    return scores


def masked_by_slow_criterion(model: nn.Module, prune_rate: float) -> GradientHook:
    """A gradient hook zeroing the columns of ``fc.weight.grad`` that :func:`slow_scores`
    ranks lowest on the step's batch (Soteria written independently)."""

    def hook(x: torch.Tensor, _y: torch.Tensor) -> None:
        scores = slow_scores(model, x)
        model.fc.weight.grad[:, torch.argsort(scores)[: round(prune_rate * len(scores))]] = 0

    return hook


def test_the_mask_zeroes_exactly_the_columns_the_criterion_picks() -> None:
    batch = digits([0, 7, 13])
    defended = Soteria(Soteria.Params(prune_rate=0.25)).train(local_task(lenet(), batch))
    undefended = plain(local_task(lenet(), batch))

    weight = defended.update["fc.weight"]
    zero = (weight == 0).all(dim=0)
    assert int(zero.sum()) == round(0.25 * FEATURES) == 192
    torch.testing.assert_close(weight[:, ~zero], undefended.update["fc.weight"][:, ~zero])
    for name, gradient in undefended.update.items():
        if name != "fc.weight":
            torch.testing.assert_close(defended.update[name], gradient)
    # The pruned features are those of smallest ‖∂r_f/∂X‖ / |r_f|, checked feature by feature.
    expected = torch.argsort(slow_scores(lenet(), batch[0]))[:192]
    assert set(zero.nonzero().flatten().tolist()) == set(expected.tolist())
    kept = float(weight.norm() / undefended.update["fc.weight"].norm())
    assert defended.measurements == pytest.approx(
        {"defended_features": FEATURES, "pruned_features": 192, "kept_norm_fraction": kept}
    )
    assert (defended.steps, defended.loss) == (1, pytest.approx(undefended.loss))


def test_on_raw_pixels_the_brightest_go_first() -> None:
    """Defending a linear layer on the pixels, ``r_f = X_f`` and ``‖∂r_f/∂X‖ = 1``: the
    features whose removal moves a reconstruction most (largest ``|r_f| / ‖∂r_f/∂X‖``,
    the paper's direction) are the brightest pixels, and those are pruned."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    images = torch.rand(1, 1, 8, 8)
    task = local_task(model, (images, torch.tensor([1])))
    update = Soteria(Soteria.Params(prune_rate=0.25)).train(task).update
    pruned = (update["1.weight"] == 0).all(dim=0)
    assert set(pruned.nonzero().flatten().tolist()) == set(
        torch.argsort(images.flatten(), descending=True)[:16].tolist()
    )


def observation(update: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> Observation:
    return Observation(
        position="server", round=1, client_id=0, model_factory=lenet, parameters=start,
        update=update, kind="gradient", input_shape=SHAPE, num_classes=CLASSES, batch_size=1,
        lr=0.1, local_steps=1, device=torch.device("cpu"), seed=SEED,
    )  # fmt: skip


@functools.cache
def attack_psnr(prune_rate: float, ignore_layers: tuple[str, ...] = ()) -> float:
    """PSNR (dB) of iDLG (20 L-BFGS steps) on the FedSGD upload of digit :data:`DIGIT`
    under Soteria at ``prune_rate``, leaving ``ignore_layers`` out of the matching."""
    model = lenet()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = digits([DIGIT])
    result = Soteria(Soteria.Params(prune_rate=prune_rate)).train(local_task(model, (x, y)))
    params = IDLG.Params(iterations=20, init="uniform", ignore_layers=list(ignore_layers))
    reconstruction = run_attack(IDLG(params), observation(result.update, start))
    assert reconstruction.status == "ok", reconstruction.reason
    assert reconstruction.diagnostics["recovered_labels"] == y.tolist()
    return psnr(x[0].numpy(), reconstruction.images[0].numpy())  # type: ignore[index]


@pytest.mark.slow
def test_a_stronger_prune_rate_leaks_less() -> None:
    # Measured: 75.0 dB undefended (prune_rate 0), 14.9 dB at 0.03, 9.2 dB at 0.3.
    undefended, weak, strong = (attack_psnr(p) for p in (0.0, 0.03, 0.3))
    assert undefended > 40
    assert weak < undefended - 20
    assert strong < weak - 3


@pytest.mark.slow
def test_ignoring_the_defended_layer_breaks_soteria() -> None:
    # Measured: 9.2 dB matching every layer, 71.6 dB leaving out fc (Balunović et al. 2022).
    assert attack_psnr(0.3) < 15
    assert attack_psnr(0.3, ("fc",)) > 40


@pytest.mark.parametrize("objective", ["gradient", "delta_as_gradient", "unrolled"])
def test_ignored_parameters_do_not_enter_the_matching(objective: str) -> None:
    """Two uploads differing only in ``fc`` give the same search once ``fc`` is ignored
    (FedSGD, and FedAvg's two objectives); the record lists what was left out."""
    model = lenet()
    x, y = digits([DIGIT])
    names, params = zip(*model.named_parameters(), strict=True)
    gradient = dict(
        zip(names, torch.autograd.grad(F.cross_entropy(model(x), y), params), strict=True)
    )
    scrambled = {k: torch.randn_like(v) if k.startswith("fc.") else v for k, v in gradient.items()}
    results = []
    for update in (gradient, scrambled):
        seen = observation(update, model.state_dict())
        if objective != "gradient":
            delta = {k: -seen.lr * v for k, v in update.items()}  # one local SGD step
            seen = Observation(**{**seen.__dict__, "update": delta, "kind": "delta"})
        fedavg = "unrolled" if objective == "unrolled" else "delta_as_gradient"
        results.append(reconstruct_by_matching(seen, MatchConfig(iterations=2), y, fedavg, ["fc"]))
    assert results[0].status == results[1].status == "ok"
    assert results[0].diagnostics["ignored_parameters"] == ["fc.bias", "fc.weight"]
    assert results[0].diagnostics["loss_curve"] == results[1].diagnostics["loss_curve"]
    assert torch.equal(results[0].images, results[1].images)  # type: ignore[arg-type]


def test_ignore_layers_naming_no_parameter_is_unsupported_with_the_reason() -> None:
    model = lenet()
    seen = observation({k: torch.zeros_like(v) for k, v in model.named_parameters()}, {})
    typo = run_attack(IDLG(IDLG.Params(iterations=1, ignore_layers=["fc1"])), seen)
    assert typo.status == "unsupported"
    assert typo.reason == (
        "ignore_layers: 'fc1' names no parameter or module of the model "
        "(its modules with parameters: body.0, body.2, body.4, fc)"
    )
    everything = run_attack(IDLG(IDLG.Params(iterations=1, ignore_layers=["body", "fc"])), seen)
    assert everything.status == "unsupported"
    assert "leaves no parameter of the update to match" in everything.reason


def test_fedavg_runs_the_local_epochs_pruning_every_step() -> None:
    """FedAvg: as many steps as plain training, and the delta is plain training's with
    only the defended weight's gradient pruned at each step (by the slow criterion)."""
    shape = (1, 16, 16)  # 192 features keep the slow criterion cheap
    shard = digits([0, 1, 2, 3, 4], size=16)

    def fedavg(model: nn.Module) -> LocalTraining:
        return local_task(model, shard, protocol="fedavg", batch_size=2)

    defended = Soteria(Soteria.Params(prune_rate=0.5)).train(fedavg(lenet(shape)))
    reference_model = lenet(shape)
    reference = plain(fedavg(reference_model), masked_by_slow_criterion(reference_model, 0.5))
    undefended = plain(fedavg(lenet(shape)))

    assert defended.steps == undefended.steps == 6  # ceil(5 / 2) batches, 2 epochs
    assert defended.measurements["pruned_features"] == 96
    for name, delta in reference.update.items():
        torch.testing.assert_close(defended.update[name], delta)
    assert not torch.allclose(defended.update["fc.weight"], undefended.update["fc.weight"])
    unpruned = Soteria(Soteria.Params(prune_rate=0.0)).train(fedavg(lenet(shape)))
    for name, delta in undefended.update.items():
        torch.testing.assert_close(unpruned.update[name], delta)


def _scenario(layer: str) -> list[Trial]:
    raw = {
        "data": {"dataset": "digits", "image_size": 16, "max_samples": 200},
        "model": {"name": "lenet", "activation": "tanh"},
        "federation": {"num_clients": 4},
        "defences": [{"name": "soteria", "layer": layer}],
    }
    return expand(raw, "s.toml")


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ("body.0", "soteria: 'body.0' is a Conv2d, not an nn.Linear; its nn.Linear layers: fc"),
        ("fc2", "soteria: the model has no module 'fc2'; its nn.Linear layers: fc"),
    ],
)
def test_a_layer_that_is_no_linear_module_is_refused_in_one_line(layer: str, message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        preflight(_scenario(layer), "s.toml", "simulation")
    assert str(info.value) == f"s.toml: defences[0]: {message}"


def test_a_model_with_running_statistics_is_refused() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    reason = Soteria(Soteria.Params()).supports(model)
    assert reason is not None and "track running statistics (2)" in reason
    assert Soteria(Soteria.Params(layer="3")).supports(model) == reason
