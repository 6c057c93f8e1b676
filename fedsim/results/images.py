"""PNG output: one file per image, and a grid of originals beside reconstructions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

_FONT_PX = 11  # grid.png: caption and title text height, pixels
_PAD = 4  # grid.png: pixels between cells and around text


def to_hwc_uint8(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` float in [0, 1] → ``(H, W)`` or ``(H, W, 3)`` uint8."""
    array = (image.detach().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def save_png(image: torch.Tensor, path: Path, scale: int = 4) -> None:
    """Write a ``(C, H, W)`` image in [0, 1], enlarged ``scale`` times (nearest)."""
    pil = Image.fromarray(to_hwc_uint8(image))
    pil.resize((pil.width * scale, pil.height * scale), Image.Resampling.NEAREST).save(path)


def save_grid(rows: Sequence[dict[str, Any]], run_dir: Path, path: Path) -> None:
    """A grid with one row per record: each original beside its reconstruction, a
    caption above each image and the row's title at its left.

    Each row dict has ``title`` (may span lines) and ``pairs``: a list of
    ``(original_png, reconstruction_png or None, caption)`` with paths relative to
    ``run_dir``. Composed with Pillow at the PNGs' own pixels (as :func:`save_png` wrote
    them); a matplotlib figure of a 50-row sweep took ~30 s.
    """
    if not rows:
        return
    font = ImageFont.load_default(size=_FONT_PX)
    cells = [
        [(_open(run_dir / png) if png else None, text) for pair in row["pairs"]
         for png, text in ((pair[0], "original"), (pair[1], pair[2]))]
        for row in rows
    ]  # fmt: skip
    shown = [image for row in cells for image, _ in row if image is not None]
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    captions = [int(scratch.textlength(text, font=font)) for row in cells for _, text in row]
    cell_w = max([image.width for image in shown] + captions, default=_FONT_PX)
    cell_h = max([image.height for image in shown], default=_FONT_PX)
    titles = [
        [int(v) for v in scratch.multiline_textbbox((0, 0), row["title"], font=font)]
        for row in rows
    ]
    title_w = max(box[2] for box in titles) + 2 * _PAD
    row_h = _FONT_PX + 2 * _PAD + cell_h + _PAD
    columns = max(len(row) for row in cells)
    canvas = Image.new("RGB", (title_w + columns * (cell_w + _PAD), len(rows) * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (row, box) in enumerate(zip(cells, titles, strict=True)):
        top = r * row_h
        image_top = top + _FONT_PX + 2 * _PAD
        draw.multiline_text(
            (_PAD, image_top + (cell_h - box[3]) // 2), rows[r]["title"], fill="black", font=font
        )
        for c, (image, text) in enumerate(row):
            left = title_w + c * (cell_w + _PAD)
            width = int(draw.textlength(text, font=font))
            draw.text((left + (cell_w - width) // 2, top + _PAD), text, fill="black", font=font)
            if image is not None:
                at = (left + (cell_w - image.width) // 2, image_top + (cell_h - image.height) // 2)
                canvas.paste(image, at)
    canvas.save(path)


def _open(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")
