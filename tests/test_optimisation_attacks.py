"""iDLG, WDLG and Inverting Gradients recover a 32×32 photo from a LeNet-Sigmoid
gradient; the closed-form 1-D W1 variant of WDLG does not (the measurement
behind its default)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fedsim_plugins.idlg import IDLG
from fedsim_plugins.inverting_gradients import InvertingGradients
from fedsim_plugins.wdlg import WDLG

from fedsim.api import Attack, Observation
from fedsim.data.datasets import load_digits, load_photos
from fedsim.federation.observer import run_attack
from fedsim.inversion.gradient_matching import MatchConfig
from fedsim.inversion.matching import reconstruct_by_matching
from fedsim.metrics import psnr, score_batch
from fedsim.models.zoo import build_model

SHAPE = (3, 32, 32)
CASES = [(0, 1), (8, 2)]  # (photo index in load_photos(32, 4, 0), model seed)


def observe(index: int, seed: int) -> tuple[Observation, torch.Tensor, torch.Tensor]:
    x, y = load_photos(32, 4, 0).batch([index])
    model = build_model("lenet", input_shape=SHAPE, num_classes=6, seed=seed)
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    observation = Observation(
        position="server", round=1, client_id=0,
        model_factory=lambda: build_model("lenet", input_shape=SHAPE, num_classes=6),
        parameters=model.state_dict(), update=dict(zip(names, grads, strict=True)),
        kind="gradient", input_shape=SHAPE, num_classes=6, batch_size=1, lr=0.1,
        local_steps=1, device=torch.device("cpu"), seed=seed,
    )  # fmt: skip
    return observation, x, y


def attack_psnr(attack: Attack, index: int, seed: int) -> tuple[float, bool]:
    observation, x, y = observe(index, seed)
    result = run_attack(attack, observation)
    assert result.status == "ok", result.reason
    assert result.diagnostics["recovered_labels"] == y.tolist()
    return psnr(x[0].numpy(), result.images[0].numpy()), torch.equal(result.labels, y)


@pytest.mark.slow
@pytest.mark.parametrize(("index", "seed"), CASES)
def test_idlg_recovers_the_photo_and_label(index: int, seed: int) -> None:
    value, label_ok = attack_psnr(IDLG(IDLG.Params(iterations=100)), index, seed)
    assert value > 30 and label_ok


@pytest.mark.slow
def test_wdlg_default_critic_recovers_the_photo() -> None:
    params = WDLG.Params(iterations=150)
    assert (params.constraint, params.critic) == ("penalty", "linear")  # the measured default
    value, label_ok = attack_psnr(WDLG(params), *CASES[1])  # 34 dB measured
    assert value > 30 and label_ok


@pytest.mark.slow
def test_inverting_gradients_recovers_the_photo() -> None:
    attack = InvertingGradients(InvertingGradients.Params())  # the measured defaults
    value, label_ok = attack_psnr(attack, 4, 1)
    assert value > 30 and label_ok


@pytest.mark.slow
def test_wdlg_exact_1d_does_not_recover_the_photo() -> None:
    attack = WDLG(WDLG.Params(iterations=30, variant="exact_1d"))
    value, _ = attack_psnr(attack, *CASES[0])
    assert value < 15


def test_fedavg_delta_is_attacked_as_a_gradient_and_says_so() -> None:
    observation, _, _ = observe(*CASES[0])
    delta = {k: -0.1 * v for k, v in observation.update.items()}  # one SGD step, lr 0.1
    as_delta = Observation(**{**observation.__dict__, "update": delta, "kind": "delta"})
    estimate = as_delta.gradient_estimate()
    for name, gradient in observation.update.items():
        torch.testing.assert_close(estimate[name], gradient)
    result = reconstruct_by_matching(as_delta, MatchConfig(iterations=1))
    again = reconstruct_by_matching(observation, MatchConfig(iterations=1))
    assert "weight delta treated as gradient" in result.diagnostics["gradient_source"]
    assert "gradient_source" not in again.diagnostics


@pytest.mark.slow
def test_idlg_reconstructs_a_batch_of_four_digits() -> None:
    data = load_digits(32)
    generator = torch.Generator().manual_seed(1)
    x, y = data.batch(torch.randint(0, len(data.labels), (4,), generator=generator))
    model = build_model("lenet", input_shape=(1, 32, 32), num_classes=10, seed=1)
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    observation = Observation(
        position="server", round=1, client_id=0,
        model_factory=lambda: build_model("lenet", input_shape=(1, 32, 32), num_classes=10),
        parameters=model.state_dict(), update=dict(zip(names, grads, strict=True)),
        kind="gradient", input_shape=(1, 32, 32), num_classes=10, batch_size=4, lr=0.1,
        local_steps=1, device=torch.device("cpu"), seed=1,
    )  # fmt: skip
    result = run_attack(IDLG(IDLG.Params(iterations=200)), observation)
    assert result.status == "ok", result.reason
    assert sorted(result.labels.tolist()) == sorted(y.tolist())  # counts recovered exactly
    scores = score_batch(x, y, result.images, result.labels)  # Hungarian matching
    assert sorted(s.original_index for s in scores) == [0, 1, 2, 3]
    assert all(s.psnr > 30 and s.label_correct for s in scores)
