"""Reconstruction quality: MSE, PSNR, SSIM and label accuracy, with batch matching.

All images are float arrays in [0, 1]. PSNR uses peak 1 (``data_range = 1``)
unless told otherwise; the peak is recorded with every score.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

PSNR_PEAK = 1.0
PAPER_PEAK = 255.0
"""COPA's Table 2 convention: peak 255 over the MSE of [0, 1] images (≈ +48.13 dB)."""
SUCCESS_PSNR = 30.0
"""A reconstruction *succeeds* when every image of the batch reaches this PSNR (dB, peak 1),
i.e. an MSE of at most 1e-3 on [0, 1] pixels."""


def mse(true: np.ndarray, test: np.ndarray) -> float:
    """Mean squared error of two ``(C, H, W)`` images in [0, 1]."""
    return float(mean_squared_error(true.astype(np.float64), test.astype(np.float64)))


def psnr(true: np.ndarray, test: np.ndarray, peak: float = PSNR_PEAK) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak² / MSE)``; ``inf`` if identical."""
    if mse(true, test) == 0:
        return math.inf
    return float(
        peak_signal_noise_ratio(true.astype(np.float64), test.astype(np.float64), data_range=peak)
    )


def ssim(true: np.ndarray, test: np.ndarray) -> float:
    """Structural similarity (scikit-image) of two ``(C, H, W)`` images in [0, 1]."""
    side = min(true.shape[-2:])
    win = min(7, side if side % 2 else side - 1)
    return float(
        structural_similarity(
            true.astype(np.float64),
            test.astype(np.float64),
            data_range=1.0,
            channel_axis=0,
            win_size=win,
        )
    )


@dataclass(frozen=True)
class ImageScore:
    """Score of one reconstructed image against the original it was matched to."""

    original_index: int
    mse: float
    psnr: float
    ssim: float
    label_correct: bool | None
    psnr_peak: float = PSNR_PEAK
    psnr_255: float = math.nan
    """PSNR with peak 255 over the [0, 1] MSE (the COPA paper's convention)."""

    def as_dict(self) -> dict[str, float | int | bool | None]:
        return asdict(self)


def match_to_originals(originals: torch.Tensor, reconstructions: torch.Tensor) -> np.ndarray:
    """Hungarian assignment minimising total MSE.

    Args:
        originals: ``(B, C, H, W)``; reconstructions: ``(B', C, H, W)`` with B' ≤ B.

    Returns:
        ``(B',)`` index of the original matched to each reconstruction.
    """
    o = originals.detach().double().flatten(1).cpu().numpy()
    r = reconstructions.detach().double().flatten(1).cpu().numpy()
    cost = ((r[:, None, :] - o[None, :, :]) ** 2).mean(axis=2)
    rows, cols = linear_sum_assignment(cost)
    matched = np.empty(len(r), dtype=np.int64)
    matched[rows] = cols
    return matched


def score_batch(
    originals: torch.Tensor,
    true_labels: torch.Tensor,
    reconstructions: torch.Tensor,
    labels: torch.Tensor | None,
) -> list[ImageScore]:
    """Score each reconstruction against its matched original (see :func:`match_to_originals`)."""
    if len(reconstructions) > len(originals):
        raise ValueError(f"{len(reconstructions)} reconstructions for {len(originals)} originals")
    if labels is not None and len(labels) != len(reconstructions):
        raise ValueError(f"{len(labels)} labels for {len(reconstructions)} reconstructions")
    if reconstructions.shape[1:] != originals.shape[1:]:
        raise ValueError(
            f"reconstruction shape {tuple(reconstructions.shape[1:])} differs from "
            f"original {tuple(originals.shape[1:])}"
        )
    matched = match_to_originals(originals, reconstructions)
    scores = []
    for i, j in enumerate(matched):
        true = originals[j].detach().cpu().numpy()
        test = reconstructions[i].detach().clamp(0, 1).cpu().numpy()
        label_ok = None if labels is None else bool(int(labels[i]) == int(true_labels[j]))
        error = mse(true, test)
        scores.append(
            ImageScore(
                int(j),
                error,
                psnr(true, test),
                ssim(true, test),
                label_ok,
                psnr_255=math.inf if error == 0 else 10 * math.log10(PAPER_PEAK**2 / error),
            )
        )
    return scores


def label_count_accuracy(
    true_labels: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> float:
    """Fraction of the batch's labels recovered as a multiset: ``Σ_k min(n_k, n̂_k) / B``.

    Independent of which reconstruction is matched to which original.
    """
    true_counts = torch.bincount(true_labels.cpu(), minlength=num_classes)
    counts = torch.bincount(labels.cpu(), minlength=num_classes)
    return float(torch.minimum(true_counts, counts).sum()) / len(true_labels)
