"""Relative-perceptual-L1: a reconstruction metric on normalised deep features.

From N. Tuluptceva, B. Bakker, I. Fedulova and A. Konushin, "Perceptual Image
Anomaly Detection", ACPR 2019 (LNCS 12046), arXiv:1909.05904 (§3.1 and the
supplement): with ``f`` a deep feature map of a network pre-trained on image
classification and ``μ_k``, ``σ_k`` the mean and standard deviation of filter
``k``'s responses over a dataset,

    φ(x) = (f(x) − μ) / σ                  (per filter k, broadcast over positions)
    rel(x, y) = ‖φ(x) − φ(y)‖₁ / ‖φ(x)‖₁   (L1 over filters and positions)

``x`` is the original, ``y`` the reconstruction. The value is unitless, ≥ 0 and
unbounded: 0 when the normalised features agree, 1 when the error is as large
as the original's own normalised feature mass. Lower is better.

Behaviour under scaling (exact for any weights when ``f`` is positively
homogeneous, ``f(a·x) = a·f(x)`` for ``a > 0``: bias-free convolutions and
linear layers with ReLU or max-pooling between them):

- without normalisation (``μ = 0``; any ``σ > 0``), ``rel(a·x, a·y) = rel(x, y)``
  (a contrast change of both images is invisible) and ``rel(x, a·x) = |1 − a|``
  whatever the image;
- with ``μ ≠ 0``, ``rel(a·x, a·y) = a‖(f(x) − f(y))/σ‖₁ / ‖(a·f(x) − μ)/σ‖₁``,
  which depends on ``a`` (it tends to 0 as ``a → 0``);
- it is not symmetric: ``rel(x, y)·‖φ(x)‖₁ = rel(y, x)·‖φ(y)‖₁``.

VGG-19 has biases and fedsim feeds it ImageNet-normalised pixels, so none of these
hold exactly there; the paper shows (its Fig. 1) that the relative form is far
less sensitive to contrast than the plain perceptual loss (its Fig. 3 shows why:
the features' L1 norm shrinks as the contrast drops).

fedsim's instance (optional, ``[metrics.perceptual]`` in a scenario): torchvision's
VGG-19 (``IMAGENET1K_V1``) up to ``relu4_2``, the activation of the 2nd
convolution of the 4th block (``features[:23]``), as in the paper. Grey images
are repeated to 3 channels; images whose shorter side is below
:data:`MIN_SIDE` pixels (torchvision's stated minimum for VGG-19) are resized
bilinearly so that it is :data:`MIN_SIDE`; pixels are then normalised with
ImageNet's mean and std as torchvision's weights expect. The weights are read
from a file only (``torch.load(weights_only=True)``), never downloaded: without
them the metric is recorded as unavailable with the reason.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.data.source import DataError
from fedsim.scenario import DataConfig, PerceptualConfig

FeatureMap = Callable[[torch.Tensor], torch.Tensor]
"""``(B, C, H, W)`` float images in [0, 1] → ``(B, K, h, w)`` feature maps."""

LAYER = "relu4_2"
VGG19_RELU4_2 = 23
"""``torchvision.models.vgg19().features[:23]`` ends with the ReLU after conv4_2."""
MIN_SIDE = 32
"""Shorter image side (pixels) below which images are upsampled before VGG-19."""
STD_FLOOR = 0.01
"""Filter σ is floored at this fraction of the median filter σ, so that a filter
silent on the statistics dataset cannot dominate the metric."""
STATISTICS_SEED = 0
"""Seed of the statistics dataset (random crops, subset), fixed so that every
scenario naming the same dataset shares one cached file."""
BATCH = 64


@dataclass(frozen=True)
class FilterStatistics:
    """Per-filter mean and standard deviation of a feature map over a dataset.

    Attributes:
        mean: ``(K,)`` mean of filter k's responses over images and positions.
        std: ``(K,)`` their standard deviation (population), > 0.
    """

    mean: np.ndarray
    std: np.ndarray


def normalised_features(
    images: torch.Tensor, features: FeatureMap, statistics: FilterStatistics | None = None
) -> torch.Tensor:
    """``φ(images) = (f(images) − μ) / σ``, ``(B, K, h, w)``, float64; ``f`` alone without
    statistics. ``images`` move to the device of ``features`` when it is a module."""
    if isinstance(features, nn.Module):
        images = images.to(next(features.parameters(), images).device)
    with torch.no_grad():
        maps = features(images).double()
    if statistics is None:
        return maps
    mean = torch.as_tensor(statistics.mean, dtype=torch.float64, device=maps.device)
    std = torch.as_tensor(statistics.std, dtype=torch.float64, device=maps.device)
    return (maps - mean[:, None, None]) / std[:, None, None]


def relative_perceptual_l1(
    true: np.ndarray,
    test: np.ndarray,
    features: FeatureMap,
    statistics: FilterStatistics | None = None,
) -> float:
    """``‖φ(true) − φ(test)‖₁ / ‖φ(true)‖₁`` (see the module docstring).

    Args:
        true: ``(C, H, W)`` original image, pixels in [0, 1].
        test: ``(C, H, W)`` reconstruction, same shape, pixels in [0, 1].
        features: the feature map ``f``.
        statistics: per-filter ``μ``, ``σ`` of ``f``; ``None`` for ``μ = 0, σ = 1``.

    Returns:
        A unitless value ≥ 0 (0: identical normalised features); ``inf`` if
        ``φ(true)`` is zero and ``φ(test)`` is not.
    """
    pair = torch.from_numpy(np.stack([true, test])).float()
    reference, other = normalised_features(pair, features, statistics)
    error = float((reference - other).abs().sum())
    mass = float(reference.abs().sum())
    if mass == 0:
        return 0.0 if error == 0 else math.inf
    return error / mass


def filter_statistics(features: FeatureMap, batches: Iterable[torch.Tensor]) -> FilterStatistics:
    """Per-filter mean and std of ``features`` over every image and position of ``batches``
    (float ``(B, C, H, W)`` in [0, 1]); σ floored as :data:`STD_FLOOR` says."""
    total = total_sq = None
    count = 0
    for batch in batches:
        maps = normalised_features(batch, features)
        per_filter = maps.transpose(0, 1).flatten(1)  # (K, B·h·w)
        total = per_filter.sum(1) + (0 if total is None else total)
        total_sq = (per_filter**2).sum(1) + (0 if total_sq is None else total_sq)
        count += per_filter.shape[1]
    if total is None or total_sq is None:
        raise ValueError("no images to compute filter statistics from")
    mean = total / count
    std = (total_sq / count - mean**2).clamp_min(0).sqrt()
    std = std.clamp_min(STD_FLOOR * float(std.median()) or 1e-12)
    return FilterStatistics(mean.cpu().numpy(), std.cpu().numpy())


# ---------------------------------------------------------------- VGG-19


class WeightsError(Exception):
    """The VGG-19 weights cannot be used; the message says why."""


def hub_weights_path() -> Path:
    """Where torchvision keeps VGG-19's ImageNet weights: ``torch.hub.get_dir()/checkpoints``
    under the file name of its download URL (``vgg19-dcbb9e9d.pth``)."""
    from torchvision.models import VGG19_Weights

    name = VGG19_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / name


@functools.lru_cache(maxsize=8)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's content (memoised per path, size and modification time)."""
    info = path.stat()
    return _sha256(path.resolve(), info.st_size, info.st_mtime_ns)


class VGGFeatures(nn.Module):
    """VGG-19 up to ``relu4_2`` with fedsim's input handling (module docstring):
    ``(B, 1 or 3, H, W)`` images in [0, 1] → ``(B, 512, h, w)`` features."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        from torchvision.models import VGG19_Weights

        preset = VGG19_Weights.IMAGENET1K_V1.transforms()
        self.body = body
        self.pixel_mean: torch.Tensor
        self.pixel_std: torch.Tensor
        self.register_buffer("pixel_mean", torch.tensor(preset.mean).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(preset.std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        height, width = images.shape[-2:]
        if min(height, width) < MIN_SIDE:
            scale = MIN_SIDE / min(height, width)
            size = (max(MIN_SIDE, round(height * scale)), max(MIN_SIDE, round(width * scale)))
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        return self.body((images - self.pixel_mean) / self.pixel_std)


def load_vgg19_features(path: Path, device: torch.device) -> VGGFeatures:
    """VGG-19 up to ``relu4_2`` with the weights in ``path`` (a torchvision VGG-19 state
    dict; only ``features.0`` … ``features.21`` are used), in eval mode.

    Raises:
        WeightsError: the file cannot be read or is not a VGG-19 (without batch norm)
            state dict.
    """
    from torchvision.models import vgg19

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and I/O errors all mean "not usable"
        raise WeightsError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path} does not hold a state dict")
    with torch.device("meta"):
        body = vgg19().features[:VGG19_RELU4_2]
    wanted = {f"features.{name}": name for name in body.state_dict()}
    try:
        body.load_state_dict({wanted[k]: v for k, v in state.items() if k in wanted}, assign=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if "\n" in str(exc) else str(exc)
        raise WeightsError(f"{path} is not torchvision VGG-19 weights ({first})") from None
    return VGGFeatures(body).float().to(device).eval().requires_grad_(False)


# ---------------------------------------------------------------- the statistics cache


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/fedsim/perceptual``, else ``~/.cache/fedsim/perceptual``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedsim" / "perceptual"


def cached_filter_statistics(
    features: FeatureMap,
    key: Mapping[str, Any],
    images: Callable[[], torch.Tensor],
    cache_dir: Path,
    device: torch.device,
) -> tuple[FilterStatistics, Path, bool]:
    """Filter statistics from ``cache_dir`` if a file for ``key`` is there, else computed
    from ``images()`` (``(N, C, H, W)`` uint8) and written there.

    ``key`` must name everything the statistics depend on (the weights' hash, the
    layer, the input handling, the dataset's settings, the number of images); the
    file name is a hash of it, and the file repeats it. Returns the statistics, the
    file and whether it was reused.
    """
    material = json.dumps(key, sort_keys=True, default=str)
    path = cache_dir / f"vgg19-{LAYER}-{hashlib.sha256(material.encode()).hexdigest()[:16]}.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        if stored["key"] == json.loads(material):
            return FilterStatistics(np.array(stored["mean"]), np.array(stored["std"])), path, True
    except (OSError, ValueError, KeyError):
        pass
    pixels = images()
    batches = (
        pixels[i : i + BATCH].to(device=device, dtype=torch.float32) / 255.0
        for i in range(0, len(pixels), BATCH)
    )
    statistics = filter_statistics(features, batches)
    cache_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "key": json.loads(material),
        "mean": statistics.mean.tolist(),
        "std": statistics.std.tolist(),
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload), encoding="utf-8")
    os.replace(tmp, path)
    return statistics, path, False


# ---------------------------------------------------------------- the metric of a run


@dataclass
class PerceptualMetric:
    """relative-perceptual-L1 as a run scores it, or why it cannot.

    Attributes:
        features: the feature map, ``None`` when unavailable.
        statistics: the filter statistics, ``None`` when unavailable.
        info: what the results record: ``status`` (``available``/``unavailable``),
            ``reason`` when unavailable, else the weights file and its SHA-256, the
            layer, the statistics file, whether it was reused, the statistics
            dataset and the number of its images.
    """

    features: FeatureMap | None
    statistics: FilterStatistics | None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def unavailable(cls, reason: str) -> PerceptualMetric:
        return cls(None, None, {"status": "unavailable", "reason": reason})

    @property
    def available(self) -> bool:
        return self.features is not None

    def __call__(self, true: np.ndarray, test: np.ndarray) -> float | None:
        """The metric of one ``(C, H, W)`` pair in [0, 1]; ``None`` when unavailable."""
        if self.features is None:
            return None
        return relative_perceptual_l1(true, test, self.features, self.statistics)


def _statistics_images(data: DataConfig, samples: int) -> Callable[[], torch.Tensor]:
    def images() -> torch.Tensor:
        from fedsim.trial_inputs import load_images

        pixels = load_images(data, STATISTICS_SEED).images
        if len(pixels) > samples:
            keep = np.random.default_rng(STATISTICS_SEED).permutation(len(pixels))[:samples]
            pixels = pixels[np.sort(keep)]
        return pixels

    return images


def build_perceptual_metric(
    config: PerceptualConfig, data: DataConfig, channels: int, device: torch.device
) -> PerceptualMetric:
    """The metric a scenario's ``[metrics.perceptual]`` asks for, for images with
    ``channels`` channels, or the reason it is unavailable (no weights, unreadable
    weights, unusable statistics dataset, channel count other than 1 or 3).

    ``data`` is the scenario's ``[data]``, used for the statistics unless
    ``config.stats_data`` names another dataset. Loading the weights hashes the
    file (SHA-256); torchvision's cached file must match the hash prefix in its name.
    """
    stats_data = config.stats_data or data
    hub = config.weights == "torchvision"
    path = hub_weights_path() if hub else Path(config.weights).expanduser()
    if hub and not path.is_file():
        return PerceptualMetric.unavailable(
            f"no VGG-19 weights at {path} (torchvision's cache; fedsim never downloads "
            "them): copy vgg19-dcbb9e9d.pth there or set metrics.perceptual.weights to the file"
        )
    if channels not in (1, 3):
        return PerceptualMetric.unavailable(f"VGG-19 takes 1 or 3 channels, not {channels}")
    try:
        digest = file_sha256(path)
        expected = path.stem.rsplit("-", 1)[-1]
        if hub and not digest.startswith(expected):
            raise WeightsError(
                f"{path}: SHA-256 {digest[:8]}… does not match torchvision's {expected}… "
                "(an incomplete or different file)"
            )
        features = load_vgg19_features(path, device)
        features(torch.zeros(1, channels, MIN_SIDE, MIN_SIDE, device=device))  # a probe
    except (OSError, WeightsError, RuntimeError) as exc:
        return PerceptualMetric.unavailable(str(exc))
    key = {
        "weights_sha256": digest,
        "layer": LAYER,
        "min_side": MIN_SIDE,
        "std_floor": STD_FLOOR,
        "dataset": stats_data.model_dump(mode="json"),
        "samples": config.stats_samples,
        "seed": STATISTICS_SEED,
    }
    try:
        statistics, stats_file, reused = cached_filter_statistics(
            features, key, _statistics_images(stats_data, config.stats_samples),
            config.cache_dir or default_cache_dir(), device,
        )  # fmt: skip
    except (DataError, ValueError, OSError, RuntimeError) as exc:
        return PerceptualMetric.unavailable(f"filter statistics: {exc}")
    return PerceptualMetric(
        features,
        statistics,
        {
            "status": "available",
            "weights": str(path),
            "weights_sha256": digest,
            "layer": f"vgg19 {LAYER}",
            "statistics": str(stats_file),
            "statistics_reused": reused,
            "statistics_dataset": stats_data.model_dump(mode="json"),
            "statistics_samples": config.stats_samples,
        },
    )
