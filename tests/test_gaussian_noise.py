"""The gaussian_noise defence: noise of the requested size, measured honestly, reproducibly."""

from __future__ import annotations

import math

import pytest
import torch
from fedsim_plugins.gaussian_noise import GaussianNoise

from fedsim.privacy.noise import global_norm

# The sample std of n i.i.d. normal draws has relative standard error ≈ 1/sqrt(2n);
# with n = 100,000 that is 0.22 %, so a 2 % tolerance is ~9 standard errors: it
# cannot fail by chance, yet catches a wrong scale (e.g. variance instead of std).
REL_TOL = 0.02


def make_update() -> dict[str, torch.Tensor]:
    values = torch.randn(250, 200, generator=torch.Generator().manual_seed(0))
    return {"zeros": torch.zeros(50_000), "values": values}  # 100,000 coordinates


def defend(sigma: float, relative: bool = False, seed: int = 0, update: dict | None = None):
    defence = GaussianNoise(GaussianNoise.Params(sigma=sigma, relative=relative))
    update = make_update() if update is None else update
    noisy, measured = defence.apply(update, torch.Generator().manual_seed(seed))
    return update, noisy, measured


def noise_of(update: dict[str, torch.Tensor], noisy: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([(noisy[k] - update[k]).flatten() for k in update]).double()


def test_noise_std_matches_sigma() -> None:
    update, noisy, measured = defend(sigma=0.05)

    assert noise_of(update, noisy).std().item() == pytest.approx(0.05, rel=REL_TOL)
    assert measured["noise_std"] == 0.05
    assert measured["measured_noise_std"] == pytest.approx(0.05, rel=REL_TOL)
    # The reported measurement is the std of the noise actually added.
    actual = noise_of(update, noisy).std(correction=0).item()
    assert measured["measured_noise_std"] == pytest.approx(actual, rel=1e-4)


def test_relative_noise_scales_with_update_norm() -> None:
    update = make_update()
    norm = global_norm(update)
    _, noisy, measured = defend(sigma=0.001, relative=True, update=update)

    assert norm > 100  # so that relative and absolute std differ clearly
    assert measured["update_norm"] == pytest.approx(norm)
    assert measured["noise_std"] == pytest.approx(0.001 * norm)
    assert noise_of(update, noisy).std().item() == pytest.approx(0.001 * norm, rel=REL_TOL)


def test_sigma_zero_leaves_update_unchanged() -> None:
    update, noisy, measured = defend(sigma=0.0)

    assert all(torch.equal(noisy[k], update[k]) for k in update)
    assert measured["measured_noise_std"] == 0.0
    assert measured["noise_to_update_norm"] == 0.0


def test_same_seed_same_noise_and_input_untouched() -> None:
    update = make_update()
    original = {k: v.clone() for k, v in update.items()}

    _, first, _ = defend(sigma=0.1, seed=7, update=update)
    _, again, _ = defend(sigma=0.1, seed=7, update=update)
    _, other, _ = defend(sigma=0.1, seed=8, update=update)

    assert all(torch.equal(update[k], original[k]) for k in update)
    assert all(torch.equal(first[k], again[k]) for k in update)
    assert not torch.equal(first["values"], other["values"])


def test_zero_update_reports_infinite_noise_ratio() -> None:
    zeros = {"w": torch.zeros(1000)}
    _, _, measured = defend(sigma=0.1, update=zeros)

    assert measured["update_norm"] == 0.0
    assert math.isinf(measured["noise_to_update_norm"])


def test_negative_sigma_is_rejected() -> None:
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        GaussianNoise.Params(sigma=-0.5)
