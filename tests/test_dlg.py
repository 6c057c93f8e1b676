"""DLG through the plugin API, and how the round attacker contains misbehaving attacks."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from fedsim_plugins.dlg import DLG

from fedsim.api import Attack, Observation, Reconstruction
from fedsim.data.datasets import load_photos
from fedsim.federation.observer import run_attack
from fedsim.inversion.gradient_matching import MatchConfig, match_gradients
from fedsim.metrics import psnr
from fedsim.models.zoo import build_model

SHAPE = (3, 32, 32)
MODEL_SEED = 2
IMAGE = 2  # the full rocket photograph (label 1) of load_photos(32, 2, 0)
# 100 L-BFGS steps reach a gradient distance of ~1e-5 (PSNR > 40 dB) without noise.
DLG_PARAMS = {"iterations": 100, "restarts": 2, "loss_threshold": 1e-7}


def factory() -> torch.nn.Module:
    """A freshly initialised LeNet; the observation's parameters must be loaded into it."""
    return build_model("lenet", input_shape=SHAPE, num_classes=6, seed=MODEL_SEED + 1)


def attacked_model() -> torch.nn.Module:
    """The global model whose gradient the client uploads."""
    return build_model("lenet", input_shape=SHAPE, num_classes=6, seed=MODEL_SEED)


def observe(update: dict[str, torch.Tensor]) -> Observation:
    return Observation(
        position="server", round=1, client_id=0, model_factory=factory,
        parameters=attacked_model().state_dict(), update=update, kind="gradient",
        input_shape=SHAPE, num_classes=6, batch_size=1, lr=0.1, local_steps=1,
        device=torch.device("cpu"), seed=0,
    )  # fmt: skip


def true_gradient() -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    x, y = load_photos(32, 2, 0).batch([IMAGE])
    model = attacked_model()
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    return x, y, dict(zip(names, grads, strict=True))


@pytest.mark.slow
def test_dlg_recovers_the_image_and_label() -> None:
    x, y, gradient = true_gradient()

    result = run_attack(DLG(DLG.Params(**DLG_PARAMS)), observe(gradient))

    assert result.status == "ok", result.reason
    assert result.images is not None and result.images.shape == (1, *SHAPE)
    assert psnr(x[0].numpy(), result.images[0].numpy()) > 30
    assert torch.equal(result.labels, y)
    assert min(result.diagnostics["restart_losses"]) < 1e-3


@pytest.mark.slow
def test_dlg_fails_through_large_gaussian_noise() -> None:
    x, _, gradient = true_gradient()
    noise = torch.Generator().manual_seed(0)
    noisy = {k: g + 0.1 * torch.randn(g.shape, generator=noise) for k, g in gradient.items()}

    result = run_attack(DLG(DLG.Params(**DLG_PARAMS)), observe(noisy))

    assert result.status == "ok", result.reason
    assert psnr(x[0].numpy(), result.images[0].numpy()) < 15


def test_fedavg_delta_is_turned_into_a_gradient_estimate() -> None:
    delta = {"fc.bias": torch.full((6,), 0.3)}
    observation = replace(observe(delta), kind="delta", local_steps=3)

    estimate = observation.gradient_estimate()

    assert torch.allclose(estimate["fc.bias"], torch.full((6,), -0.3 / (0.1 * 3)))


def test_gradients_are_matched_by_name() -> None:
    _, _, gradient = true_gradient()
    reversed_order = dict(reversed(list(gradient.items())))

    def run(target: dict[str, torch.Tensor]) -> torch.Tensor:
        result = match_gradients(
            attacked_model(),
            target,
            input_shape=SHAPE,
            batch_size=1,
            num_classes=6,
            config=MatchConfig(iterations=1),
        )
        return result.images

    assert torch.equal(run(gradient), run(reversed_order))
    with pytest.raises(KeyError, match=r"conv9\.weight"):
        match_gradients(
            attacked_model(), {**gradient, "conv9.weight": torch.zeros(3)}, input_shape=SHAPE,
            batch_size=1, num_classes=6,
        )  # fmt: skip


class Crashing(Attack):
    name = "crashing"
    summary = "raises"

    def reconstruct(self, observation: Observation) -> Reconstruction:
        raise RuntimeError("out of ideas")


class NaNs(Attack):
    name = "nans"
    summary = "returns NaN pixels"

    def reconstruct(self, observation: Observation) -> Reconstruction:
        images = torch.full((1, *observation.input_shape), float("nan"))
        return Reconstruction(images, torch.zeros(1, dtype=torch.long), diagnostics={"steps": 3})


class Picky(Attack):
    name = "picky"
    summary = "supports nothing"

    def supports(self, model: torch.nn.Module) -> str | None:
        return "needs a ResNet"

    def reconstruct(self, observation: Observation) -> Reconstruction:
        raise AssertionError("must not be called when unsupported")


def test_attack_exception_becomes_failed_reconstruction() -> None:
    result = run_attack(Crashing(Crashing.Params()), observe({}))

    assert result.status == "failed"
    assert result.images is None
    assert result.reason == "RuntimeError: out of ideas"


def test_non_finite_pixels_become_failed_reconstruction() -> None:
    result = run_attack(NaNs(NaNs.Params()), observe({}))

    assert result.status == "failed"
    assert "non-finite" in result.reason
    assert result.diagnostics == {"steps": 3}


def test_unsupported_model_skips_the_attack() -> None:
    result = run_attack(Picky(Picky.Params()), observe({}))

    assert result.status == "unsupported"
    assert result.reason == "needs a ResNet"


class WrongShape(Attack):
    name = "wrong_shape"
    summary = "returns two images for a batch of one"

    def reconstruct(self, observation: Observation) -> Reconstruction:
        return Reconstruction(torch.zeros(2, *observation.input_shape))


def test_run_attack_rejects_images_of_the_wrong_shape() -> None:
    result = run_attack(WrongShape(WrongShape.Params()), observe({}))

    assert result.status == "failed"
    assert "shape (2, 3, 32, 32)" in result.reason
