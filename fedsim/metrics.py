"""Reconstruction quality: MSE, PSNR, SSIM and label accuracy, with batch matching.

All images are float arrays in [0, 1]. PSNR uses peak 1 (``data_range = 1``)
unless told otherwise; the peak is recorded with every score.

SciPy and scikit-image are imported by the functions that use them: every deployed
ClientApp (one process per message) imports this module for its types, and only the
processes that score need them (about a second of start-up).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

PSNR_PEAK = 1.0
PAPER_PEAK = 255.0
"""COPA's Table 2 convention: peak 255 over the MSE of [0, 1] images (≈ +48.13 dB)."""
SUCCESS_PSNR = 30.0
"""A reconstruction *succeeds* when every image of the batch reaches this PSNR (dB, peak 1),
i.e. an MSE of at most 1e-3 on [0, 1] pixels."""


def mse(true: np.ndarray, test: np.ndarray) -> float:
    """Mean squared error of two ``(C, H, W)`` images in [0, 1]."""
    from skimage.metrics import mean_squared_error

    return float(mean_squared_error(true.astype(np.float64), test.astype(np.float64)))


def psnr_from_mse(error: float, peak: float = PSNR_PEAK) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak² / MSE)``; ``inf`` at MSE 0."""
    return math.inf if error == 0 else 10.0 * math.log10(peak**2 / error)


def psnr(true: np.ndarray, test: np.ndarray, peak: float = PSNR_PEAK) -> float:
    """Peak signal-to-noise ratio in dB of two ``(C, H, W)`` images (see :func:`psnr_from_mse`)."""
    return psnr_from_mse(mse(true, test), peak)


def ssim_window(height: int, width: int) -> int:
    """The side of SSIM's square window for an image of that size: 7 (scikit-image's
    default), or the largest odd side that fits a smaller image."""
    side = min(height, width)
    return min(7, side if side % 2 else side - 1)


def ssim(true: np.ndarray, test: np.ndarray) -> float:
    """Structural similarity (scikit-image) of two ``(C, H, W)`` images in [0, 1]."""
    from skimage.metrics import structural_similarity

    win = ssim_window(*true.shape[-2:])
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


PAIR_CHUNK = 1 << 22
"""Most float64 values :func:`ssim_matrix` holds per intermediate (32 MiB): rows of
originals are taken that many pair pixels at a time."""


def mse_matrix(originals: torch.Tensor, reconstructions: torch.Tensor) -> np.ndarray:
    """``(B, B')`` mean squared error of every (original, reconstruction) pair.

    Args:
        originals: ``(B, C, H, W)``; reconstructions: ``(B', C, H, W)``, clamped to [0, 1].
    """
    o = originals.detach().double().flatten(1).cpu()
    r = reconstructions.detach().clamp(0, 1).double().flatten(1).cpu()
    return (
        torch.cdist(o, r, compute_mode="donot_use_mm_for_euclid_dist")
        .pow(2)
        .div(o.shape[1])
        .numpy()
    )


def ssim_matrix(originals: torch.Tensor, reconstructions: torch.Tensor) -> np.ndarray:
    """``(B, B')`` SSIM of every (original, reconstruction) pair, equal to :func:`ssim`
    (scikit-image's definition: a uniform window of :func:`ssim_window`, sample
    covariances, K1 = 0.01, K2 = 0.03, data range 1, the mean over every window that
    lies inside the image, then over channels), all pairs at once in float64.

    Args:
        originals: ``(B, C, H, W)``; reconstructions: ``(B', C, H, W)``, clamped to [0, 1].
    """
    x = originals.detach().double().cpu()
    y = reconstructions.detach().clamp(0, 1).double().cpu()
    batch, _, height, width = x.shape
    win = ssim_window(height, width)
    cov = win * win / (win * win - 1)
    c1, c2 = 0.01**2, 0.03**2

    def mean(images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images, win, stride=1)

    ux, uy = mean(x), mean(y)
    vx, vy = cov * (mean(x * x) - ux * ux), cov * (mean(y * y) - uy * uy)
    out = np.empty((batch, len(y)), dtype=np.float64)
    rows = max(1, PAIR_CHUNK // max(1, y.numel()))
    for start in range(0, batch, rows):
        part = slice(start, start + rows)
        products = (x[part, None] * y[None]).flatten(0, 1)
        uxy = mean(products).unflatten(0, (-1, len(y)))
        mx, my = ux[part, None], uy[None]
        covariance = cov * (uxy - mx * my)
        numerator = (2 * mx * my + c1) * (2 * covariance + c2)
        denominator = (mx * mx + my * my + c1) * (vx[part, None] + vy[None] + c2)
        out[part] = (numerator / denominator).mean(dim=(-2, -1)).mean(dim=-1).numpy()
    return out


def _assign(cost: np.ndarray) -> np.ndarray:
    """Hungarian assignment on a ``(B, B')`` cost, B' ≤ B: original index per column."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost)
    matched = np.empty(cost.shape[1], dtype=np.int64)
    matched[cols] = rows
    return matched


def match_to_originals(originals: torch.Tensor, reconstructions: torch.Tensor) -> np.ndarray:
    """Hungarian assignment minimising total MSE.

    Args:
        originals: ``(B, C, H, W)``; reconstructions: ``(B', C, H, W)`` with B' ≤ B.

    Returns:
        ``(B',)`` index of the original matched to each reconstruction.
    """
    return _assign(mse_matrix(originals, reconstructions))


@dataclass(frozen=True)
class PairScores:
    """Scores of every (original, reconstruction) pair of one holder's batch: numbers only.

    Computed wherever the originals are (the scorer in simulation, the client
    itself on real machines), so that scoring never needs the originals to move.

    Attributes:
        mse: ``(B, B')`` float64, MSE on [0, 1] pixels (reconstructions clamped).
        ssim: ``(B, B')`` float64.
        label_equal: ``(B, B')`` bool, whether the reconstruction's label equals the
            original's; ``None`` when the attack recovered no labels.
    """

    mse: np.ndarray
    ssim: np.ndarray
    label_equal: np.ndarray | None


def pair_scores(
    originals: torch.Tensor,
    true_labels: torch.Tensor,
    reconstructions: torch.Tensor,
    labels: torch.Tensor | None,
) -> PairScores:
    """Score every reconstruction against every original of one batch.

    Raises:
        ValueError: shapes differ, or ``labels`` does not have one entry per reconstruction.
    """
    if labels is not None and len(labels) != len(reconstructions):
        raise ValueError(f"{len(labels)} labels for {len(reconstructions)} reconstructions")
    if reconstructions.shape[1:] != originals.shape[1:]:
        raise ValueError(
            f"reconstruction shape {tuple(reconstructions.shape[1:])} differs from "
            f"original {tuple(originals.shape[1:])}"
        )
    return PairScores(
        mse=mse_matrix(originals, reconstructions),
        ssim=ssim_matrix(originals, reconstructions),
        label_equal=None
        if labels is None
        else (true_labels.cpu()[:, None] == labels.cpu()[None, :]).numpy(),
    )


def match_scores(parts: Sequence[PairScores]) -> tuple[list[ImageScore], float | None]:
    """Match reconstructions to the originals of all ``parts`` together and score them.

    ``parts`` are the pair scores of the batches behind one upload (one client) or
    one aggregate (each client of the round, in order); ``original_index`` counts
    through their originals in that order.

    Returns:
        One :class:`ImageScore` per reconstruction (Hungarian matching on MSE), and
        the label-count accuracy ``Σ_k min(n_k, n̂_k) / B`` (``None`` without labels),
        computed as a maximum matching of equal labels.

    Raises:
        ValueError: more reconstructions than originals.
    """
    mse_all = np.concatenate([p.mse for p in parts])
    ssim_all = np.concatenate([p.ssim for p in parts])
    if mse_all.shape[1] > mse_all.shape[0]:
        raise ValueError(f"{mse_all.shape[1]} reconstructions for {mse_all.shape[0]} originals")
    label_parts = [p.label_equal for p in parts if p.label_equal is not None]
    equal = np.concatenate(label_parts) if len(label_parts) == len(parts) else None
    scores = [
        ImageScore(
            int(j),
            float(mse_all[j, i]),
            psnr_from_mse(float(mse_all[j, i])),
            float(ssim_all[j, i]),
            None if equal is None else bool(equal[j, i]),
            psnr_255=psnr_from_mse(float(mse_all[j, i]), PAPER_PEAK),
        )
        for i, j in enumerate(_assign(mse_all))
    ]
    if equal is None:
        return scores, None
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(equal, maximize=True)
    return scores, float(equal[rows, cols].sum()) / len(equal)


def score_batch(
    originals: torch.Tensor,
    true_labels: torch.Tensor,
    reconstructions: torch.Tensor,
    labels: torch.Tensor | None,
) -> list[ImageScore]:
    """Score each reconstruction against its matched original (see :func:`match_scores`)."""
    return match_scores([pair_scores(originals, true_labels, reconstructions, labels)])[0]


def label_count_accuracy(
    true_labels: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> float:
    """Fraction of the batch's labels recovered as a multiset: ``Σ_k min(n_k, n̂_k) / B``.

    Independent of which reconstruction is matched to which original.
    """
    true_counts = torch.bincount(true_labels.cpu(), minlength=num_classes)
    counts = torch.bincount(labels.cpu(), minlength=num_classes)
    return float(torch.minimum(true_counts, counts).sum()) / len(true_labels)
