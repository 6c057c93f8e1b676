"""Seeded train/test split and client partitions (Flower Datasets' partitioners).

Flower Datasets (with Hugging Face ``datasets``, pandas and matplotlib behind it) is
imported when a partitioner is built: a deployed ClientApp runs one process per
message, and those that do not read their shard are spared its ~1.5 s of start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from flwr_datasets.partitioner import Partitioner


def train_test_split(
    labels: np.ndarray, test_fraction: float, seed: int, holdout: str = "random"
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of sample indices: about ``test_fraction`` of each class
    goes to the test split, drawn at random (``holdout="random"``) or the class's
    last samples in dataset order (``"last"``, so that e.g. the first, centred crop
    of each photo stays in training). Both index arrays are shuffled."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = rng.permutation(idx) if holdout == "random" else idx[::-1]
        n_test = round(test_fraction * len(idx))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def client_partitioner(
    labels: np.ndarray,
    num_partitions: int,
    scheme: str,
    seed: int,
    alpha: float = 0.5,
    min_partition_size: int = 1,
) -> Partitioner:
    """A Flower Datasets partitioner splitting positions ``0..len(labels)-1`` among
    ``num_partitions`` clients; read one client with :func:`partition_positions`.

    Args:
        labels: ``(N,)`` class labels of the samples to split.
        scheme: ``iid`` (shuffled equal shards) or ``dirichlet`` (per-class
            proportions drawn from Dirichlet(``alpha``); small alpha = strong skew).
        min_partition_size: ``dirichlet`` redraws until every client has at least this many.
    """
    from datasets import Dataset
    from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

    if num_partitions > len(labels):
        raise ValueError(f"cannot split {len(labels)} samples among {num_partitions} clients")
    order = np.random.default_rng(seed).permutation(len(labels))
    table = Dataset.from_dict({"position": order, "label": labels[order]})
    partitioner: Partitioner
    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions)
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min_partition_size,
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
    else:
        raise ValueError(f"unknown partition scheme {scheme!r}")
    partitioner.dataset = table
    return partitioner


def partition_positions(partitioner: Partitioner, partition_id: int) -> np.ndarray:
    """Positions (into the split labels) of client ``partition_id``'s samples."""
    return np.asarray(partitioner.load_partition(partition_id)["position"], dtype=np.int64)
