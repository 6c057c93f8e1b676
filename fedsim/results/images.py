"""PNG output: one file per image, and a grid of originals beside reconstructions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image


def to_hwc_uint8(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` float in [0, 1] → ``(H, W)`` or ``(H, W, 3)`` uint8."""
    array = (image.detach().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def save_png(image: torch.Tensor, path: Path, scale: int = 4) -> None:
    """Write a ``(C, H, W)`` image in [0, 1], enlarged ``scale`` times (nearest)."""
    pil = Image.fromarray(to_hwc_uint8(image))
    pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST).save(path)


def save_grid(rows: Sequence[dict[str, Any]], run_dir: Path, path: Path) -> None:
    """A grid with one row per record: each original beside its reconstruction.

    Each row dict has ``title`` and ``pairs``: a list of ``(original_png,
    reconstruction_png or None, caption)`` with paths relative to ``run_dir``.
    """
    if not rows:
        return
    columns = max(2 * len(r["pairs"]) for r in rows)
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(1.6 * columns, 1.9 * len(rows)), squeeze=False
    )
    for axis in axes.flat:
        axis.axis("off")
    for r, row in enumerate(rows):
        for k, (original, reconstruction, caption) in enumerate(row["pairs"]):
            left, right = axes[r, 2 * k], axes[r, 2 * k + 1]
            left.imshow(Image.open(run_dir / original), cmap="gray", vmin=0, vmax=255)
            left.set_title("original", fontsize=7)
            if reconstruction is not None:
                right.imshow(Image.open(run_dir / reconstruction), cmap="gray", vmin=0, vmax=255)
            right.set_title(caption, fontsize=7)
        axes[r, 0].text(
            -0.1,
            0.5,
            row["title"],
            transform=axes[r, 0].transAxes,
            ha="right",
            va="center",
            fontsize=7,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
