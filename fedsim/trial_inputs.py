"""A trial's inputs, as the ServerApp and every ClientApp derive them from one
:class:`Scenario`: the data split, the client shards, the model factory and derived
seeds.

Derivation is deterministic, so each process (Flower may run clients in other
processes or on other machines) computes the same split on its own.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from fedsim.data.partition import client_partitioner, partition_positions, train_test_split
from fedsim.data.source import DataError, ImageData, LoadOptions
from fedsim.models.zoo import build_model
from fedsim.registry import discover, instantiate_defence
from fedsim.scenario import DataConfig, DefenceConfig, ModelConfig, Scenario

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner


def derive_seed(*parts: object) -> int:
    """A 31-bit seed determined by ``parts`` (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFF_FFFF


def load_images(config: DataConfig, seed: int) -> ImageData:
    """Load the configured dataset plugin (``fedsim.datasets`` group), keep ``classes``,
    and cap it to ``max_samples`` (a seeded choice, in the dataset's order)."""
    options = LoadOptions(
        root=config.root,
        download=config.download,
        image_size=config.image_size,
        grayscale=config.grayscale,
        samples_per_class=config.samples_per_class,
        seed=seed,
    )
    data = discover().datasets[config.dataset]().load(options)
    if config.classes is not None:
        data = select_classes(data, config.classes)
    if config.max_samples is not None and len(data.labels) > config.max_samples:
        keep = np.random.default_rng(seed).permutation(len(data.labels))[: config.max_samples]
        data = data.subset(np.sort(keep))
    return data


def select_classes(data: ImageData, names: list[str]) -> ImageData:
    """Keep only the classes ``names`` (relabelled ``0..len(names)-1`` in that order)."""
    unknown = [n for n in names if n not in data.class_names]
    if unknown or len(set(names)) != len(names):
        problem = f"unknown class {unknown[0]!r}" if unknown else "a class is named twice"
        raise DataError(f"classes: {problem} (available: {', '.join(data.class_names)})")
    keep = np.concatenate(
        [np.flatnonzero(data.labels.numpy() == data.class_names.index(n)) for n in names]
    )
    relabel = {data.class_names.index(n): i for i, n in enumerate(names)}
    subset = data.subset(keep)
    labels = torch.tensor([relabel[int(v)] for v in subset.labels])
    return ImageData(subset.images, labels, tuple(names))


class Shards:
    """The clients' private shards as views of one training split.

    ``shards[i]`` builds client ``i``'s :class:`ImageData` when asked for, and
    the partitioner computes a client's share only then (IID: one client's
    positions; Dirichlet draws all clients' proportions once), so a process that
    serves a few clients of a large federation neither holds nor splits them all.
    """

    def __init__(self, train: ImageData, partitioner: Partitioner) -> None:
        self.train, self.partitioner = train, partitioner
        self._positions: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.partitioner.num_partitions

    def positions(self, partition_id: int) -> np.ndarray:
        """Positions of client ``partition_id``'s samples in the training split."""
        if not 0 <= partition_id < len(self):
            raise IndexError(f"no client {partition_id} among {len(self)}")
        with self._lock:
            if partition_id not in self._positions:
                self._positions[partition_id] = partition_positions(self.partitioner, partition_id)
            return self._positions[partition_id]

    def __getitem__(self, partition_id: int) -> ImageData:
        return self.train.subset(self.positions(partition_id))

    def __iter__(self) -> Iterator[ImageData]:
        return (self[i] for i in range(len(self)))

    def sizes(self) -> list[int]:
        """Number of samples of each client's shard."""
        return [len(self.positions(i)) for i in range(len(self))]


@dataclass(frozen=True)
class FederatedData:
    """The held-out test split and each client's private training shard."""

    test: ImageData
    shards: Shards

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.test.input_shape

    @property
    def num_classes(self) -> int:
        return self.test.num_classes


@functools.lru_cache(maxsize=4)
def _federated_data(data_json: str, num_clients: int, seed: int) -> FederatedData:
    config = DataConfig.model_validate_json(data_json)
    data = load_images(config, seed)
    labels = data.labels.numpy()
    train_idx, test_idx = train_test_split(labels, config.test_fraction, seed, config.holdout)
    partitioner = client_partitioner(
        labels[train_idx], num_clients, config.partition, seed, alpha=config.alpha
    )
    return FederatedData(
        test=data.subset(test_idx), shards=Shards(data.subset(train_idx), partitioner)
    )


def federated_data(scenario: Scenario) -> FederatedData:
    """Split of ``scenario``'s data (cached per process)."""
    return _federated_data(
        scenario.data.model_dump_json(), scenario.federation.num_clients, scenario.seed
    )


@dataclass(frozen=True)
class ModelFactory:
    """Builds the scenario's model with its seeded initial parameters (picklable),
    as every defence's ``prepare_model`` leaves it (e.g. Opacus's fix, when asked)."""

    config: ModelConfig
    input_shape: tuple[int, int, int]
    num_classes: int
    seed: int
    defences: tuple[DefenceConfig, ...] = ()

    def __call__(self) -> nn.Module:
        model = self._build()
        for config in self.defences:
            model = instantiate_defence(config.name, config.params).prepare_model(model)
        return model

    def _build(self) -> nn.Module:
        return build_model(
            self.config.name,
            input_shape=self.input_shape,
            num_classes=self.num_classes,
            activation=self.config.activation,
            layers=self.config.layers,
            preset=self.config.preset,
            kwargs=self.config.kwargs,
            seed=self.seed,
            output_activation=self.config.output_activation,
            negative_slope=self.config.negative_slope,
            init=self.config.init,
        )


def model_factory(scenario: Scenario, data: FederatedData) -> ModelFactory:
    return ModelFactory(
        scenario.model, data.input_shape, data.num_classes, scenario.seed, tuple(scenario.defences)
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA if available, else MPS if available, else CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
