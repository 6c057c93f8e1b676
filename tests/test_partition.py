"""Train/test split and client partitions, and the federated split built from a scenario."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.data.partition import client_partitioner, partition_positions, train_test_split
from fedsim.scenario import ScenarioError, expand
from fedsim.scenario.preflight import preflight
from fedsim.trial_inputs import federated_data, load_images

LABELS = np.repeat(np.arange(10), 40)  # 400 samples, 10 balanced classes


def partition_indices(
    labels: np.ndarray, num_partitions: int, scheme: str, seed: int, alpha: float = 0.5
) -> list[np.ndarray]:
    """Every client's positions, as the federation reads them one client at a time."""
    partitioner = client_partitioner(labels, num_partitions, scheme, seed, alpha)
    return [partition_positions(partitioner, i) for i in range(num_partitions)]


def assert_covers_once(parts: list[np.ndarray], n: int) -> None:
    merged = np.concatenate(parts)
    assert len(merged) == n
    assert np.array_equal(np.sort(merged), np.arange(n))


def label_skew(parts: list[np.ndarray]) -> float:
    """Mean over clients of the fraction of the client's samples in its largest class."""
    return float(np.mean([np.bincount(LABELS[p]).max() / len(p) for p in parts]))


def test_iid_covers_every_index_once_in_near_equal_shards() -> None:
    parts = partition_indices(LABELS, 7, "iid", seed=0)

    assert len(parts) == 7
    assert_covers_once(parts, len(LABELS))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_is_deterministic_per_seed() -> None:
    first = partition_indices(LABELS, 7, "iid", seed=3)
    again = partition_indices(LABELS, 7, "iid", seed=3)
    other = partition_indices(LABELS, 7, "iid", seed=4)

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_dirichlet_small_alpha_is_label_skewed_and_covers_once() -> None:
    iid = partition_indices(LABELS, 8, "iid", seed=0)
    skewed = partition_indices(LABELS, 8, "dirichlet", seed=0, alpha=0.1)

    assert_covers_once(skewed, len(LABELS))
    assert all(len(p) >= 1 for p in skewed)
    # iid clients hold ~1/10 of each class (largest class ≈ 0.17 of 50 samples);
    # Dirichlet(0.1) gives most clients one or two dominant classes (≈ 0.6).
    assert label_skew(iid) < 0.3
    assert label_skew(skewed) > 0.45


def test_partition_rejects_more_clients_than_samples_and_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="cannot split"):
        partition_indices(np.arange(3), 4, "iid", seed=0)
    with pytest.raises(ValueError, match="unknown partition scheme"):
        partition_indices(LABELS, 2, "round_robin", seed=0)


def test_train_test_split_is_stratified_and_disjoint() -> None:
    labels = np.repeat(np.arange(4), [10, 7, 3, 25])
    fraction = 0.3

    train, test = train_test_split(labels, fraction, seed=0)

    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(labels)))
    for label in range(4):
        in_class = np.sum(labels == label)
        assert abs(np.sum(labels[test] == label) - fraction * in_class) <= 1


def test_federated_data_gives_disjoint_shards_and_test_split() -> None:
    raw = {
        "seed": 5,
        "data": {"dataset": "photos", "samples_per_class": 5, "test_fraction": 0.2},
        "federation": {"num_clients": 3},
    }
    scenario = expand(raw, "s.toml")[0].scenario
    data = federated_data(scenario)
    source = load_images(scenario.data, scenario.seed)

    def keys(images: object) -> list[bytes]:
        return [img.numpy().tobytes() for img in images]  # type: ignore[attr-defined]

    shard_keys = [keys(shard.images) for shard in data.shards]
    test_keys = keys(data.test.images)
    everything = [k for ks in shard_keys for k in ks] + test_keys

    # 6 photographs × 5 crops, all distinct, so bytes identify samples: the split uses
    # each source image exactly once (shards and test split are pairwise disjoint).
    assert len(set(keys(source.images))) == 30
    assert len(everything) == 30
    assert set(everything) == set(keys(source.images))
    assert len(data.shards) == 3
    assert all(len(ks) >= 1 for ks in shard_keys)
    # Stratified: one of the five crops of each photograph is held out.
    assert sorted(data.test.labels.tolist()) == list(range(6))


def test_empty_test_split_is_rejected_before_the_run() -> None:
    raw = {"data": {"dataset": "photos", "samples_per_class": 2}, "federation": {"num_clients": 2}}
    trials = expand(raw, "s.toml")
    assert len(federated_data(trials[0].scenario).test.labels) == 0

    with pytest.raises(ScenarioError, match="data"):
        preflight(trials, "s.toml", "simulation")
