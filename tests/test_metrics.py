"""Reconstruction metrics: PSNR, SSIM, and matching reconstructions to originals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsim.metrics import (
    label_count_accuracy,
    match_scores,
    match_to_originals,
    mse,
    pair_scores,
    psnr,
    psnr_from_mse,
    score_batch,
    ssim,
)


def image(seed: int, shape: tuple[int, int, int] = (3, 16, 16)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.2, 0.8, size=shape)


def test_psnr_of_identical_images_is_infinite() -> None:
    x = image(0)
    assert math.isinf(psnr(x, x.copy()))


def test_psnr_of_known_mse() -> None:
    x = image(0)
    shifted = x + 0.1  # MSE = 0.01 → 10 log10(1 / 0.01) = 20 dB at peak 1

    assert mse(x, shifted) == pytest.approx(0.01)
    assert psnr(x, shifted) == pytest.approx(20.0)
    assert psnr(x, shifted, peak=2.0) == pytest.approx(20.0 + 20 * math.log10(2))


def test_ssim_of_identical_images_is_one_and_lower_otherwise() -> None:
    x = image(0)
    assert ssim(x, x.copy()) == pytest.approx(1.0)
    assert ssim(x, image(1)) < 0.5


def test_score_batch_matches_permuted_reconstructions() -> None:
    originals = torch.from_numpy(np.stack([image(s) for s in range(4)])).float()
    true_labels = torch.tensor([0, 1, 2, 3])
    perm = [2, 0, 3, 1]
    noise = 0.01 * torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    reconstructions = originals[perm] + noise
    labels = torch.tensor([2, 0, 1, 1])  # the third is wrong (its original has label 3)

    scores = score_batch(originals, true_labels, reconstructions, labels)

    assert [s.original_index for s in scores] == perm
    assert [s.label_correct for s in scores] == [True, True, False, True]
    assert all(s.psnr > 35 and s.ssim > 0.9 for s in scores)


def test_score_batch_without_labels_and_fewer_reconstructions() -> None:
    originals = torch.from_numpy(np.stack([image(s) for s in range(3)])).float()

    scores = score_batch(originals, torch.tensor([0, 1, 2]), originals[[1]], None)

    assert len(scores) == 1
    assert scores[0].original_index == 1
    assert scores[0].label_correct is None
    assert math.isinf(scores[0].psnr)


def test_match_to_originals_minimises_total_error_not_greedy() -> None:
    # Greedy nearest-original for reconstruction 0 would take original 0 and force
    # reconstruction 1 onto original 1 at a large cost; the optimum swaps them.
    originals = torch.tensor([0.0, 0.5]).view(2, 1, 1, 1)
    reconstructions = torch.tensor([0.2, 0.0]).view(2, 1, 1, 1)

    assert match_to_originals(originals, reconstructions).tolist() == [1, 0]


def test_score_batch_rejects_more_reconstructions_than_originals() -> None:
    originals = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError):
        score_batch(originals, torch.tensor([0]), torch.rand(2, 3, 8, 8), None)


def test_score_batch_rejects_shape_mismatch() -> None:
    originals = torch.zeros(2, 3, 16, 16)
    with pytest.raises(ValueError, match="differs"):
        score_batch(originals, torch.tensor([0, 1]), torch.zeros(2, 1, 16, 16), None)


def test_matching_over_clients_equals_scoring_their_concatenated_batches() -> None:
    # A participant's reconstruction of a round's aggregate, scored where each client's
    # batch lives (one PairScores per client) or with the truth in one place.
    originals = torch.from_numpy(np.stack([image(s) for s in range(5)])).float()
    true_labels = torch.tensor([3, 1, 3, 0, 2])
    noise = 0.02 * torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    reconstructions = (originals[[4, 2, 0, 3, 1]] + noise).clamp(0, 1)
    labels = torch.tensor([2, 3, 3, 1, 1])

    split = [
        pair_scores(originals[:2], true_labels[:2], reconstructions, labels),
        pair_scores(originals[2:], true_labels[2:], reconstructions, labels),
    ]
    per_client, count_split = match_scores(split)
    together = score_batch(originals, true_labels, reconstructions, labels)

    assert per_client == together
    assert [s.original_index for s in together] == [4, 2, 0, 3, 1]
    # Σ_k min(n_k, n̂_k) / B: class 3 twice, classes 1 and 2 once, class 0 never.
    assert count_split == label_count_accuracy(true_labels, labels, 4) == 4 / 5


def test_psnr_from_the_pair_mse_matches_psnr_of_the_images() -> None:
    x, y = image(0), image(1)
    scores = pair_scores(
        torch.from_numpy(x[None]).float(),
        torch.tensor([0]),
        torch.from_numpy(y[None]).float(),
        None,
    )

    (score,), count = match_scores([scores])

    assert count is None and score.label_correct is None
    assert score.psnr == pytest.approx(psnr(x.astype(np.float32), y.astype(np.float32)))
    assert score.psnr == pytest.approx(psnr_from_mse(score.mse))


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 16, 16), (1, 6, 9), (3, 5, 5), (1, 4, 4)])
def test_all_pairs_ssim_and_mse_equal_scikit_image_pair_by_pair(
    shape: tuple[int, int, int],
) -> None:
    generator = torch.Generator().manual_seed(0)
    originals = torch.rand(5, *shape, generator=generator)
    # near copies of three originals (noisy, some pixels outside [0, 1]) and two others
    noisy = originals[[1, 0, 2]] + 0.15 * torch.randn(3, *shape, generator=generator)
    reconstructions = torch.cat([noisy, torch.rand(2, *shape, generator=generator)])
    clamped = reconstructions.clamp(0, 1).numpy()

    scores = pair_scores(originals, torch.zeros(5), reconstructions, None)

    for i, original in enumerate(originals.numpy()):
        for j, reconstruction in enumerate(clamped):
            assert scores.ssim[i, j] == pytest.approx(ssim(original, reconstruction), abs=1e-12)
            assert scores.mse[i, j] == pytest.approx(mse(original, reconstruction), abs=1e-12)
    assert scores.ssim[1, 0] > scores.ssim[3, 0]  # the near copy scores higher
