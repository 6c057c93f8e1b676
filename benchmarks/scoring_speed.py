"""How long does scoring a batch reconstruction take? All (original, reconstruction)
pairs of a B-image batch: fedsim's ``pair_scores`` (MSE and SSIM of every pair at
once) against scikit-image's ``structural_similarity`` called pair by pair, which
it replaced (its time measured on a sample of pairs and scaled to B²).

Usage: ``python benchmarks/scoring_speed.py [--sizes 16 144 576] [--sample 400]``.

Images are 1×32×32 (the digits at 32×32), uniform random; one torch thread.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from fedsim.metrics import pair_scores, ssim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 144, 576])
    parser.add_argument("--sample", type=int, default=400, help="pairs timed per pair")
    args = parser.parse_args()
    torch.set_num_threads(1)
    table = Table(title="scoring every pair of a batch (1×32×32 images)")
    for column in ("batch B", "pairs", "fedsim s", "per-pair scikit-image s (scaled)"):
        table.add_column(column, justify="right")
    generator = torch.Generator().manual_seed(0)
    for size in args.sizes:
        originals = torch.rand(size, 1, 32, 32, generator=generator)
        reconstructions = torch.rand(size, 1, 32, 32, generator=generator)
        started = time.perf_counter()
        pair_scores(originals, torch.zeros(size), reconstructions, None)
        fedsim = time.perf_counter() - started
        x, y = originals.numpy(), reconstructions.numpy()
        sample = min(args.sample, size * size)
        started = time.perf_counter()
        for k in range(sample):
            ssim(x[k // size], y[k % size])
        per_pair = (time.perf_counter() - started) / sample * size * size
        table.add_row(str(size), f"{size * size:,}", f"{fedsim:.2f}", f"{per_pair:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
