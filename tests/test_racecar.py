"""Racecar training (Xie & Thuerey): the reverse pass, the loss's defining property,
and the paper's own small case — the first layer's right singular vectors learn the
training images."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from analytic_helpers import observe
from fedsim_plugins.weights_probe import WeightsProbe, WeightsProbeParams
from torch import nn

from fedsim.analytic.chain import UnsupportedModel, extract_chain
from fedsim.analytic.spectrum import top_right_singular_vectors
from fedsim.data.datasets import load_digits
from fedsim.metrics import score_batch
from fedsim.models.zoo import build_model
from fedsim.training.racecar import VARIANTS, RacecarTerm, layer_weights, racecar_pass

SHAPE = (3, 32, 32)
MODELS = {
    "lenet": {},
    "cnn3-1": {"preset": "cnn3-1"},
    "cnn3-2": {"preset": "cnn3-2"},
}


def zoo(spec: str) -> nn.Module:
    kwargs = MODELS[spec]
    name = "lenet" if spec == "lenet" else "convnet"
    return build_model(name, input_shape=SHAPE, num_classes=5, activation="tanh", **kwargs)


@pytest.mark.parametrize("spec", list(MODELS))
@pytest.mark.parametrize("variant", VARIANTS)
def test_reverse_pass_mirrors_the_forward_pass(spec: str, variant: str) -> None:
    model = zoo(spec)
    x = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(0))
    result = racecar_pass(extract_chain(model, SHAPE), x, variant)  # type: ignore[arg-type]
    torch.testing.assert_close(result.output, model(x))
    assert [r.shape for r in result.reverse] == [d.shape for d in result.forward]
    assert result.reverse[0].shape == x.shape
    assert result.terms.shape == (len(result.forward),)
    # The loss reaches every weight (the head's bias cancels: d_{n+1} − b_n = M_n d_n).
    result.terms.sum().backward()
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in weights)


@pytest.mark.parametrize("spec", list(MODELS))
def test_reverse_layers_are_the_adjoints(spec: str) -> None:
    """⟨M x, y⟩ = ⟨x, Mᵀ y⟩ for every layer (conv_transpose2d's output_padding included)."""
    generator = torch.Generator().manual_seed(1)
    for layer in extract_chain(zoo(spec), SHAPE).layers:
        x = torch.randn(1, *layer.input_shape, generator=generator, dtype=torch.float64)
        module = layer.module.double()
        z = layer.weight_map(x)
        y = torch.randn(z.shape, generator=generator, dtype=torch.float64)
        torch.testing.assert_close((z * y).sum(), (x * layer.adjoint(y)).sum())
        module.float()


def orthogonal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed)))
    return q


@pytest.mark.parametrize("variant", VARIANTS)
def test_loss_vanishes_exactly_for_orthogonal_layers(variant: str) -> None:
    """MᵀM = I with identity activations: every d′_m equals d_m; scaling M by 1.1 breaks it."""
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Flatten(), nn.Linear(48, 48), nn.Linear(48, 48))
    with torch.no_grad():
        model[0].weight.copy_(orthogonal(3, 0)[:, :, None, None])
        model[2].weight.copy_(orthogonal(48, 1))
        model[3].weight.copy_(orthogonal(48, 2))
    chain = extract_chain(model, (3, 4, 4))
    x = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    exact = racecar_pass(chain, x, variant).terms  # type: ignore[arg-type]
    assert exact.max() < 1e-9
    with torch.no_grad():
        model[2].weight.mul_(1.1)
    result = racecar_pass(chain, x, variant)  # type: ignore[arg-type]
    broken = result.terms.detach()
    # ‖(1.21 − 1)d_2‖² on the scaled layer's input; with `full` the error reaches layer 1 too.
    expected = 0.21**2 * float(result.forward[1].detach().pow(2).sum(1).mean())
    assert float(broken[1]) == pytest.approx(expected, rel=1e-4)
    assert float(broken[2]) < 1e-9
    assert (broken[0] > 1e-3) == (variant == "full")


def test_unsupported_models_and_bad_lambdas_are_refused() -> None:
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 2))
    with pytest.raises(UnsupportedModel, match=r"'1' \(MaxPool2d\).*pooling"):
        RacecarTerm(pooled, (1, 8, 8), "full", 1.0)
    with pytest.raises(ValueError, match="lambdas has 2 entries; the model has 4"):
        layer_weights([1.0, 2.0], 4)
    assert layer_weights(0.5, 3) == (0.5, 0.5, 0.5)


def subspace_cosines(vectors: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per image: ‖projection onto span(vectors)‖ / ‖image‖ (1 = inside the span)."""
    v, x = vectors.flatten(1).double(), images.flatten(1).double()
    return ((x @ v.T) @ v).norm(dim=1) / x.norm(dim=1)


def best_correlations(vectors: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Per singular vector: the largest |Pearson correlation| with any image."""
    v = vectors.flatten(1).double()
    x = images.flatten(1).double()
    v, x = v - v.mean(1, keepdim=True), x - x.mean(1, keepdim=True)
    corr = (v @ x.T) / (v.norm(dim=1)[:, None] * x.norm(dim=1)[None, :])
    return corr.abs().max(dim=1).values


def single_layer() -> nn.Module:
    """The paper's MNIST test network (Sec. 3, Tab. 8): I(784) → FC(10) + b."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


def train_single_layer(images: torch.Tensor, racecar: bool) -> nn.Module:
    """Two images, two labels, 500 Adam steps; racecar with λ = 1 (full variant)."""
    torch.manual_seed(0)
    model = single_layer()
    objective = RacecarTerm(model, (1, 28, 28), "full", 1.0).objective
    labels = torch.tensor([0, 1])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(500):
        optimiser.zero_grad()
        loss = objective(images, labels) if racecar else F.cross_entropy(model(images), labels)
        loss.backward()
        optimiser.step()
    return model


def spectrum(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    layer = extract_chain(model, (1, 28, 28)).layers[0]
    values, vectors = top_right_singular_vectors(layer, 2)
    return torch.from_numpy(values), vectors


def two_digits(digits: tuple[int, int]) -> torch.Tensor:
    data = load_digits(28)
    index = torch.tensor([int((data.labels == d).nonzero()[0]) for d in digits])
    return data.batch(index)[0]


def probe_psnr(model: nn.Module, images: torch.Tensor) -> float:
    """The weights-only probe on ``model``'s parameters, scored like any attack (mean PSNR)."""
    labels = torch.tensor([0, 1])
    observation = replace(
        observe(single_layer, images, labels, 10), parameters=dict(model.state_dict())
    )
    result = WeightsProbe(WeightsProbeParams()).reconstruct(observation)
    assert result.status == "ok" and result.images is not None
    assert result.images.shape == images.shape
    scores = score_batch(images, labels, result.images, None)
    return sum(s.psnr for s in scores) / len(scores)


@pytest.mark.parametrize("digits", [(0, 1), (3, 7), (2, 5)])
def test_racecar_embeds_the_training_images_in_the_first_layer(digits: tuple[int, int]) -> None:
    """Same seed, optimiser and steps; only the loss differs. With racecar both images
    lie in the span of the top two right singular vectors (singular values → 1), each
    vector correlates far better with an image than under standard training, and the
    weights-only probe's images score higher against the training digits."""
    images = two_digits(digits)
    standard = train_single_layer(images, racecar=False)
    racecar = train_single_layer(images, racecar=True)
    _, std_vectors = spectrum(standard)
    rr_values, rr_vectors = spectrum(racecar)
    torch.testing.assert_close(rr_values, torch.ones(2, dtype=rr_values.dtype), atol=2e-3, rtol=0)
    assert subspace_cosines(rr_vectors, images).min() > 0.995
    assert subspace_cosines(std_vectors, images).max() < 0.9
    rr_corr = best_correlations(rr_vectors, images)
    assert rr_corr.mean() > best_correlations(std_vectors, images).mean() + 0.15
    # Measured: 12.9 vs 10.0, 12.9 vs 8.0, 12.5 vs 8.5 dB.
    assert probe_psnr(racecar, images) > probe_psnr(standard, images) + 2.0
