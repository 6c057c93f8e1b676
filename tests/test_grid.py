"""grid.png: every original beside its reconstruction, at the PNGs' own pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fedsim.results.images import save_grid, save_png

SIDE, SCALE = 8, 4  # 8×8 images written 4× enlarged: 32×32 pixels each


def flat(colour: tuple[int, int, int], path: Path) -> None:
    image = torch.tensor(colour, dtype=torch.float32).div(255).view(3, 1, 1).expand(3, SIDE, SIDE)
    save_png(image, path, scale=SCALE)


def test_grid_shows_each_image_whole_and_leaves_a_missing_reconstruction_blank(
    tmp_path: Path,
) -> None:
    # Three records of two pairs; each image one colour no text can have (text is grey).
    colours = {f"{r}-{k}-{side}": (40 + 60 * r, 30 + 100 * k, 90 if side == "o" else 200)
               for r in range(3) for k in range(2) for side in ("o", "r")}  # fmt: skip
    for name, colour in colours.items():
        flat(colour, tmp_path / f"{name}.png")
    missing = "2-1-r"
    rows = [
        {
            "title": f"point {r}\ndlg r1 c0",
            "pairs": [
                (f"{r}-{k}-o.png", None if f"{r}-{k}-r" == missing else f"{r}-{k}-r.png", "9 dB")
                for k in range(2)
            ],
        }
        for r in range(3)
    ]
    save_grid(rows, tmp_path, tmp_path / "grid.png")

    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    pixels = (SIDE * SCALE) ** 2
    for name, colour in colours.items():
        count = int(np.all(grid == colour, axis=-1).sum())
        assert count == (0 if name == missing else pixels), name
    # Rows top to bottom, pairs left to right: each image's top-left corner in order.
    corners = {
        name: tuple(np.argwhere(np.all(grid == colour, axis=-1))[0])
        for name, colour in colours.items()
        if name != missing
    }
    for r in range(3):
        assert corners[f"{r}-0-o"][1] < corners[f"{r}-0-r"][1] < corners[f"{r}-1-o"][1]
        assert corners[f"{r}-0-o"][0] == corners[f"{r}-0-r"][0]
    assert corners["0-0-o"][0] < corners["1-0-o"][0] < corners["2-0-o"][0]
