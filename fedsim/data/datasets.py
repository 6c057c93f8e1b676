"""fedsim's built-in datasets (entry-point group ``fedsim.datasets``), as in-memory uint8 tensors.

Embedded (no download): ``digits`` (scikit-learn's 8×8 handwritten digits,
resized) and ``photos`` (square crops of scikit-image's sample photographs, one
class per photograph). Real loaders: ``mnist`` and ``cifar10`` (torchvision,
``root`` and ``download``), ``imagefolder`` (a user's images, one sub-folder
per class).

Each is a :class:`~fedsim.data.source.DatasetSource` (:class:`Digits`, :class:`Photos`,
:class:`MNIST`, :class:`CIFAR10`, :class:`ImageFolder`) calling its ``load_*`` function.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fedsim.data.source import DataError, DatasetSource, ImageData, LoadOptions

PHOTO_SOURCES = (
    "chelsea",
    "rocket",
    "astronaut",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
)
"""scikit-image sample photographs used by ``photos``; the class index is the position here."""


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(N, C, H, W)`` uint8 images to ``size × size`` (antialiased bilinear)."""
    if images.shape[-2:] == (size, size):
        return images
    resized = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized.round().clamp(0, 255).to(torch.uint8)


def load_digits(image_size: int) -> ImageData:
    """scikit-learn's 1,797 handwritten digits (8×8, 17 grey levels), resized."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = torch.from_numpy(bunch.images * (255.0 / 16.0)).round().to(torch.uint8)[:, None]
    labels = torch.from_numpy(bunch.target).long()
    names = tuple(str(n) for n in bunch.target_names)
    return ImageData(resize_uint8(images, image_size), labels, names)


def load_photos(image_size: int, samples_per_class: int, seed: int) -> ImageData:
    """Square crops of scikit-image's sample photographs, one class per photograph.

    Sample 0 of each class is the largest centred square of the photograph;
    the others are random squares covering 35–100 % of the shorter side.
    """
    import skimage.data

    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for label, name in enumerate(PHOTO_SOURCES):
        photo = torch.from_numpy(np.ascontiguousarray(getattr(skimage.data, name)()))
        photo = photo.permute(2, 0, 1)[:3]
        height, width = photo.shape[1:]
        short = min(height, width)
        for i in range(samples_per_class):
            if i == 0:
                side, top, left = short, (height - short) // 2, (width - short) // 2
            else:
                side = int(rng.integers(int(0.35 * short), short + 1))
                top = int(rng.integers(0, height - side + 1))
                left = int(rng.integers(0, width - side + 1))
            crop = photo[:, top : top + side, left : left + side][None]
            crops.append(resize_uint8(crop, image_size))
            labels.append(label)
    return ImageData(torch.cat(crops), torch.tensor(labels), PHOTO_SOURCES)


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST's format), gzipped or not."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "MNIST" / "raw"):
        for suffix in ("", ".gz"):
            path = folder / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def load_mnist(root: Path, download: bool, image_size: int) -> ImageData:
    """MNIST from IDX files under ``root`` (or ``root/MNIST/raw``), gzipped or not.

    Uses the training and test files that are present (the test set alone is
    enough). With ``download`` and no files present, torchvision fetches them.
    """
    splits = [
        ("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ]
    found = [(_find_idx(root, img), _find_idx(root, lab)) for _, img, lab in splits]
    if not any(img and lab for img, lab in found) and download:
        from torchvision.datasets import MNIST

        for train in (True, False):
            MNIST(str(root), train=train, download=True)
        found = [(_find_idx(root, img), _find_idx(root, lab)) for _, img, lab in splits]
    pairs = [(img, lab) for img, lab in found if img and lab]
    if not pairs:
        raise DataError(
            f"no MNIST IDX files under {root} (looked for t10k-/train-images-idx3-ubyte[.gz]); "
            "set data.download = true to fetch them"
        )
    images = torch.from_numpy(np.concatenate([_read_idx(img) for img, _ in pairs]).copy())
    labels = torch.from_numpy(np.concatenate([_read_idx(lab) for _, lab in pairs]).astype(np.int64))
    return ImageData(resize_uint8(images[:, None], image_size), labels, tuple("0123456789"))


def load_cifar10(root: Path, download: bool, image_size: int) -> ImageData:
    """CIFAR-10 (training and test batches) through torchvision."""
    from torchvision.datasets import CIFAR10

    try:
        parts = [CIFAR10(str(root), train=train, download=download) for train in (True, False)]
    except RuntimeError as exc:
        raise DataError(
            f"CIFAR-10 not found under {root} ({exc}); set data.download = true to fetch it"
        ) from exc
    images = torch.from_numpy(np.concatenate([p.data for p in parts])).permute(0, 3, 1, 2)
    labels = torch.tensor([t for p in parts for t in p.targets], dtype=torch.long)
    return ImageData(resize_uint8(images.contiguous(), image_size), labels, tuple(parts[0].classes))


def load_imagefolder(root: Path, image_size: int, grayscale: bool) -> ImageData:
    """A user's images, ``root/<class>/<image>``, resized to squares."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    try:
        folder = ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"cannot read image folder {root}: {exc}") from exc
    mode = "L" if grayscale else "RGB"
    images = [
        resize_uint8(pil_to_tensor(folder.loader(path).convert(mode))[None], image_size)
        for path, _ in folder.samples
    ]
    labels = torch.tensor([t for _, t in folder.samples], dtype=torch.long)
    return ImageData(torch.cat(images), labels, tuple(folder.classes))


def _root(options: LoadOptions) -> Path:
    """``options.root`` of a dataset that :attr:`~DatasetSource.needs_root` (the scenario
    refuses such a dataset without ``data.root``)."""
    if options.root is None:
        raise DataError("this dataset needs data.root")
    return options.root


class Digits(DatasetSource):
    """:func:`load_digits`: 1,797 grey 8×8 digits, shipped with scikit-learn."""

    name = "digits"
    summary = "scikit-learn's 1,797 handwritten digits (8×8, grey), resized"
    channels = 1
    num_classes = 10

    def load(self, options: LoadOptions) -> ImageData:
        return load_digits(options.image_size)


class Photos(DatasetSource):
    """:func:`load_photos`: ``samples_per_class`` crops of each of scikit-image's photographs."""

    name = "photos"
    summary = "square crops of scikit-image's sample photographs, one class per photograph"
    channels = 3
    num_classes = len(PHOTO_SOURCES)

    def load(self, options: LoadOptions) -> ImageData:
        return load_photos(options.image_size, options.samples_per_class, options.seed)


class MNIST(DatasetSource):
    """:func:`load_mnist`: IDX files under ``data.root`` (fetched with ``data.download``)."""

    name = "mnist"
    summary = "MNIST from IDX files under data.root (data.download fetches them)"
    channels = 1
    num_classes = 10
    needs_root = True

    def load(self, options: LoadOptions) -> ImageData:
        return load_mnist(_root(options), options.download, options.image_size)


class CIFAR10(DatasetSource):
    """:func:`load_cifar10`: torchvision's files under ``data.root`` (fetched with
    ``data.download``)."""

    name = "cifar10"
    summary = "CIFAR-10 through torchvision, under data.root (data.download fetches it)"
    channels = 3
    num_classes = 10
    needs_root = True

    def load(self, options: LoadOptions) -> ImageData:
        return load_cifar10(_root(options), options.download, options.image_size)


class ImageFolder(DatasetSource):
    """:func:`load_imagefolder`: the user's ``data.root/<class>/<image>`` files."""

    name = "imagefolder"
    summary = "the user's images, data.root/<class>/<image>"
    channels = None
    num_classes = None
    needs_root = True

    def load(self, options: LoadOptions) -> ImageData:
        return load_imagefolder(_root(options), options.image_size, options.grayscale)
