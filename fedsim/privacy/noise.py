"""Clipping, Gaussian noise and averaging of model updates, with honest measurements.

An update is a :data:`~fedsim.api.Update` (tensors keyed by parameter name);
nothing here modifies its input in place. Norms are the global L2 norm over all
tensors taken together, computed in float64. Clipping is flat clipping (McMahan
et al., 2018, the rule behind Flower's DP mods and strategies): the whole update
is scaled by ``min(1, C / norm)``. The noise is drawn from a caller's
``torch.Generator`` (not NumPy's global random state, as Flower's
``add_gaussian_noise_inplace`` does): each client its own stream, seeded from
the scenario in simulation (every sweep point is reproducible) and from the
client's OS entropy on the deployment engine (the server cannot replay it).
Noise std is in the units of the coordinates it is added to.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import torch

from fedsim.api import Update

NoiseSource = Literal["seeded", "os-entropy"]
"""Where defences draw their randomness from (see :mod:`fedsim.federation.defence_stages`)."""

ENGINE_NOISE: dict[str, NoiseSource] = {"simulation": "seeded", "deployment": "os-entropy"}
"""The noise source of each engine (``results.json`` records it as ``client_noise``)."""


def noise_generator(source: NoiseSource, seeded: torch.Generator) -> torch.Generator:
    """The generator a defence draws from: ``seeded`` itself (a generator seeded from
    the scenario's seed) for ``seeded``; for ``os-entropy`` a fresh generator seeded
    with 64 bits of OS entropy (:mod:`secrets`), drawn anew for every call."""
    if source == "seeded":
        return seeded
    return torch.Generator().manual_seed(secrets.randbits(64))


def global_norm(update: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of all tensors of ``update`` taken together (computed in float64)."""
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in update.values()))


def clip_update(update: Mapping[str, torch.Tensor], clip_norm: float) -> tuple[Update, float]:
    """Scale ``update`` so that its global L2 norm is at most ``clip_norm``.

    Flat clipping (factor ``min(1, C / norm)``) runs in float64; the result is
    cast back to each tensor's dtype rounding *towards zero*, so no coordinate
    grows and the norm never exceeds ``C`` through rounding. Returns the clipped
    update (a new dict; the input is not modified) and the norm before clipping.
    """
    names = list(update)
    arrays = [update[n].detach().cpu().double().numpy().copy() for n in names]
    norm = _flat_norm(arrays)
    if norm > clip_norm:
        for array in arrays:
            array *= clip_norm / norm
    clipped: Update = {}
    for name, exact in zip(names, arrays, strict=True):
        original = update[name]
        target = torch.from_numpy(exact)
        cast = target.to(original.dtype)
        grew = cast.double().abs() > target.abs()
        cast = torch.where(grew, torch.nextafter(cast, torch.zeros_like(cast)), cast)
        clipped[name] = cast.to(original.device)
    return clipped, norm


def _flat_norm(arrays: Sequence[np.ndarray]) -> float:
    """L2 norm of ``arrays`` flattened and concatenated (their dtype, float64 here)."""
    return float(np.sqrt(sum(float(np.linalg.norm(a.ravel())) ** 2 for a in arrays)))


def add_gaussian_noise(
    update: Mapping[str, torch.Tensor], std: float, generator: torch.Generator
) -> tuple[Update, dict[str, float]]:
    """Add i.i.d. ``N(0, std²)`` to every coordinate of ``update`` (not modified in place).

    Returns the noisy update and measurements of the noise actually drawn:
    ``noise_std`` (the requested std), ``measured_noise_std`` (the sample std
    of all drawn values), ``update_norm`` (L2 norm of ``update``) and
    ``noise_to_update_norm`` (L2 norm of the noise over that of ``update``;
    ``inf`` for a zero update with noise).
    """
    noisy: Update = {}
    total, squares, count = 0.0, 0.0, 0
    for name, value in update.items():
        noise = torch.randn(value.shape, generator=generator, dtype=value.dtype) * std
        noisy[name] = value + noise.to(value.device)
        total += float(noise.double().sum())
        squares += float(noise.double().pow(2).sum())
        count += noise.numel()
    mean = total / max(count, 1)
    norm = global_norm(update)
    noise_norm = math.sqrt(squares)
    return noisy, {
        "noise_std": std,
        "measured_noise_std": math.sqrt(max(squares / max(count, 1) - mean * mean, 0.0)),
        "update_norm": norm,
        "noise_to_update_norm": noise_ratio(noise_norm, norm),
    }


def noise_ratio(noise_norm: float, update_norm: float) -> float:
    """``noise_norm / update_norm``; 0 without noise, ``inf`` for noise on a zero update."""
    if noise_norm == 0:
        return 0.0
    return noise_norm / update_norm if update_norm > 0 else math.inf


def weighted_mean(
    updates: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]
) -> Update:
    """``Σ w_i u_i / Σ w_i`` per parameter (FedAvg's aggregation)."""
    total = float(np.sum(weights))
    return {
        name: sum(u[name] * (w / total) for u, w in zip(updates, weights, strict=True))  # type: ignore[misc]
        for name in updates[0]
    }
