"""The dataset contract: what a dataset plugin declares and returns.

A package adds a dataset with one :class:`DatasetSource` subclass and one entry
point in the ``fedsim.datasets`` group (the entry-point name is the scenario's
``data.dataset`` and must equal the class's :attr:`~DatasetSource.name`)::

    [project.entry-points."fedsim.datasets"]
    my_images = "my_package.data:MyImages"

fedsim's built-ins (:mod:`fedsim.data.datasets`) register the same way.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch


class DataError(ValueError):
    """A dataset cannot be loaded (missing files, bad folder); the message says what to do."""


@dataclass(frozen=True)
class ImageData:
    """Images and labels.

    Attributes:
        images: ``(N, C, H, W)`` uint8; pixel value ``v`` means intensity ``v / 255``.
        labels: ``(N,)`` int64 in ``[0, num_classes)``.
        class_names: one name per class.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, indices: torch.Tensor | np.ndarray) -> ImageData:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageData(self.images[idx], self.labels[idx], self.class_names)

    def batch(self, indices: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [0, 1], ``(B, C, H, W)``, and their labels."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return self.images[idx].float() / 255.0, self.labels[idx]


@dataclass(frozen=True)
class LoadOptions:
    """What a scenario's ``[data]`` asks of a dataset.

    Attributes:
        root: the folder of the dataset's files (``None`` unless the dataset
            :attr:`~DatasetSource.needs_root`).
        download: whether the dataset may fetch missing files into ``root``.
        image_size: side of the square images returned, in pixels.
        grayscale: one channel instead of three (datasets that can choose).
        samples_per_class: images per class (datasets that generate them).
        seed: seeds any random choice the dataset makes.
    """

    root: Path | None
    download: bool
    image_size: int
    grayscale: bool
    samples_per_class: int
    seed: int


class DatasetSource(ABC):
    """A dataset plugin: a class with these attributes and :meth:`load`.

    fedsim calls ``cls().load(options)`` once per process and split, then splits
    the images it returns into the held-out test split and the clients' shards
    itself (``data.test_fraction``, ``data.holdout``, ``data.partition``).

    Attributes:
        name: the entry-point name (the scenario's ``data.dataset``).
        summary: one line for ``fedsim plugins``.
        channels: image channels ``C`` (1 or 3); ``None`` if ``grayscale`` decides.
        num_classes: number of classes; ``None`` if known only once loaded (a folder).
        needs_root: the images are files under ``data.root`` (downloaded there with
            ``data.download``, or the user's own); ``False``: they ship with an
            installed package, so loading needs neither files nor a network.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    channels: ClassVar[int | None]
    num_classes: ClassVar[int | None]
    needs_root: ClassVar[bool] = False

    @classmethod
    def input_shape(cls, options: LoadOptions) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images :meth:`load` returns for ``options``."""
        channels = cls.channels if cls.channels is not None else (1 if options.grayscale else 3)
        return channels, options.image_size, options.image_size

    @abstractmethod
    def load(self, options: LoadOptions) -> ImageData:
        """Every image of the dataset (training and test files alike), in a fixed
        order, as :meth:`input_shape` says; labels in ``[0, num_classes)``.

        Raises:
            DataError: the images cannot be loaded; the message says what to do.
        """
