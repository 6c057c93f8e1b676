"""relative-perceptual-L1: the properties that hold for any weights, on small networks
built here (no pretrained weights exist on the test machines); VGG-19 loading from a
file, the unavailable path, the statistics cache, and the metric in a run's records.

The VGG-19 file used here holds *random* weights: it exercises loading, input
handling and caching, never the perceptual quality of the metric.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from torch import nn
from torchvision.models import vgg19

from fedsim.federation.client_app import local_update
from fedsim.federation.observer import RoundAttacker
from fedsim.federation.scoring import SharedTruthScorer
from fedsim.perceptual import (
    VGG19_RELU4_2,
    FilterStatistics,
    build_perceptual_metric,
    filter_statistics,
    load_vgg19_features,
    normalised_features,
    relative_perceptual_l1,
)
from fedsim.results.schema import RunResults
from fedsim.results.store import ResultsStore
from fedsim.results.table import columns, summarise
from fedsim.run import unavailable_metrics
from fedsim.scenario import DataConfig, PerceptualConfig, expand
from fedsim.trial_inputs import federated_data, model_factory


def homogeneous_net(seed: int = 0) -> nn.Module:
    """Bias-free convolutions with ReLU and max-pooling: f(a·x) = a·f(x) for a > 0."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.ReLU(),
    ).eval()  # fmt: skip


def image(seed: int, high: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, high, size=(3, 16, 16))


def random_statistics(mean: bool, seed: int = 0) -> FilterStatistics:
    rng = np.random.default_rng(seed)
    return FilterStatistics(rng.uniform(0.2, 1.0, 16) if mean else np.zeros(16),
                            rng.uniform(0.5, 2.0, 16))  # fmt: skip


def l1(x: np.ndarray, net: nn.Module, stats: FilterStatistics) -> float:
    """‖φ(x)‖₁."""
    return float(normalised_features(torch.from_numpy(x[None]).float(), net, stats).abs().sum())


def test_identical_images_score_zero_for_any_weights() -> None:
    x = image(0)
    with_bias = nn.Sequential(nn.Conv2d(3, 16, 3), nn.Tanh()).eval()
    for net in (homogeneous_net(), with_bias):
        assert relative_perceptual_l1(x, x.copy(), net, random_statistics(mean=True)) == 0.0


@pytest.mark.parametrize("a", [0.25, 0.5, 2.0])
def test_without_mean_a_common_scaling_is_invisible(a: float) -> None:
    net, stats = homogeneous_net(), random_statistics(mean=False)
    x, y = image(0, high=0.4), image(1, high=0.4)
    base = relative_perceptual_l1(x, y, net, stats)
    assert relative_perceptual_l1(a * x, a * y, net, stats) == pytest.approx(base, rel=1e-6)
    assert relative_perceptual_l1(x, a * x, net, stats) == pytest.approx(abs(1 - a), rel=1e-6)


@pytest.mark.parametrize("a", [0.25, 2.0])
def test_with_mean_scaling_follows_the_derived_formula(a: float) -> None:
    net, stats = homogeneous_net(), random_statistics(mean=True)
    x, y = image(0, high=0.4), image(1, high=0.4)
    fx, fy = (normalised_features(torch.from_numpy(v[None]).float(), net) for v in (x, y))
    mu = torch.as_tensor(stats.mean)[:, None, None]
    sigma = torch.as_tensor(stats.std)[:, None, None]
    # rel(a·x, a·y) = a ‖(f(x) − f(y))/σ‖₁ / ‖(a·f(x) − μ)/σ‖₁
    expected = float(a * ((fx - fy) / sigma).abs().sum() / ((a * fx - mu) / sigma).abs().sum())

    scaled = relative_perceptual_l1(a * x, a * y, net, stats)

    assert scaled == pytest.approx(expected, rel=1e-6)
    assert scaled != pytest.approx(relative_perceptual_l1(x, y, net, stats), rel=1e-3)


def test_not_symmetric_but_errors_agree_once_weighted() -> None:
    net, stats = homogeneous_net(), random_statistics(mean=True)
    x, y = image(0), image(1, high=0.5)
    forward, backward = (relative_perceptual_l1(x, y, net, stats),
                         relative_perceptual_l1(y, x, net, stats))  # fmt: skip
    assert forward != pytest.approx(backward, rel=1e-3)
    assert forward * l1(x, net, stats) == pytest.approx(backward * l1(y, net, stats), rel=1e-6)


def test_filter_statistics_standardise_the_dataset_features() -> None:
    net = homogeneous_net()
    images = torch.rand(24, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    stats = filter_statistics(net, images.split(10))
    phi = normalised_features(images, net, stats).transpose(0, 1).flatten(1)
    np.testing.assert_allclose(phi.mean(1).numpy(), 0.0, atol=1e-9)
    np.testing.assert_allclose(phi.std(1, unbiased=False).numpy(), 1.0, rtol=1e-6)


# ---------------------------------------------------------------- VGG-19 from a file


def save_random_vgg(path: Path, seed: int) -> Path:
    """A file shaped like torchvision's VGG-19 state dict (only the layers up to relu4_2)."""
    torch.manual_seed(seed)
    body = vgg19().features[:VGG19_RELU4_2]
    torch.save({f"features.{k}": v for k, v in body.state_dict().items()}, path)
    return path


@pytest.fixture(scope="module")
def vgg_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("vgg")
    return save_random_vgg(folder / "a.pth", 0), save_random_vgg(folder / "b.pth", 1)


def test_vgg_takes_grey_and_small_images(vgg_files: tuple[Path, Path]) -> None:
    features = load_vgg19_features(vgg_files[0], torch.device("cpu"))
    grey = torch.rand(2, 1, 28, 28)
    out = features(grey)  # 28 → 32 px (MIN_SIDE), then three 2× poolings
    assert out.shape == (2, 512, 4, 4)
    torch.testing.assert_close(out, features(grey.expand(-1, 3, -1, -1)))


def metric(weights: str, cache: Path, **changes: object) -> object:
    config = PerceptualConfig(**{"weights": weights, "stats_samples": 8, "cache_dir": cache,
                                 **changes})  # fmt: skip
    return build_perceptual_metric(
        config, DataConfig(dataset="digits", image_size=16), 1, torch.device("cpu")
    )


def test_statistics_are_cached_and_invalidated(
    vgg_files: tuple[Path, Path], tmp_path: Path
) -> None:
    first = metric(str(vgg_files[0]), tmp_path)
    again = metric(str(vgg_files[0]), tmp_path)
    other_data = metric(
        str(vgg_files[0]), tmp_path, stats_data=DataConfig(dataset="photos", samples_per_class=2)
    )
    other_weights = metric(str(vgg_files[1]), tmp_path)
    more_samples = metric(str(vgg_files[0]), tmp_path, stats_samples=9)

    assert first.available and first.info["statistics_reused"] is False
    assert again.info["statistics_reused"] is True
    assert again.info["statistics"] == first.info["statistics"]
    np.testing.assert_array_equal(again.statistics.std, first.statistics.std)
    files = {m.info["statistics"] for m in (first, other_data, other_weights, more_samples)}
    assert len(files) == 4
    assert not any(m.info["statistics_reused"] for m in (other_data, other_weights, more_samples))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(Path(f).name for f in files)

    Path(first.info["statistics"]).write_text("{not json", encoding="utf-8")
    repaired = metric(str(vgg_files[0]), tmp_path)
    assert repaired.info["statistics_reused"] is False
    np.testing.assert_allclose(repaired.statistics.std, first.statistics.std)


def test_unusable_weights_make_the_metric_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    absent = metric("torchvision", tmp_path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, wrong)

    assert not absent.available and absent(image(0), image(1)) is None
    assert absent.info["status"] == "unavailable"
    assert (
        str(tmp_path / "torch" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")
        in (absent.info["reason"])
    )
    assert "cannot read" in metric(str(junk), tmp_path).info["reason"]
    assert "not torchvision VGG-19 weights" in metric(str(wrong), tmp_path).info["reason"]


def test_missing_weights_file_is_a_scenario_error(tmp_path: Path) -> None:
    raw = {"metrics": {"perceptual": {"weights": str(tmp_path / "nope.pth")}}}
    with pytest.raises(ValueError, match=r"^x\.toml: metrics\.perceptual\.weights: .*nope\.pth"):
        expand(raw, "x.toml")
    with pytest.raises(ValueError, match=r"metrics\.perceptual\.stats_sample: unknown key"):
        expand({"metrics": {"perceptual": {"stats_sample": 3}}}, "x.toml")


# ---------------------------------------------------------------- in a run's records


def attacker_records(perceptual: dict[str, object], run_dir: Path) -> RunResults:
    """One attack on one real FedSGD upload through the round attacker (no Flower)."""
    raw = {
        "data": {"dataset": "digits", "image_size": 16},
        "federation": {"num_clients": 2, "clients_per_round": 1},
        "attacks": [{"name": "idlg", "iterations": 1}],
        "metrics": {"perceptual": perceptual},
    }
    trial = expand(raw, "x.toml")[0]
    data = federated_data(trial.scenario)
    factory = model_factory(trial.scenario, data)
    start = factory().state_dict()
    reply, truth = local_update(trial.scenario, 0, 1, ArrayRecord.from_torch_state_dict(start))
    update = reply.update
    store = ResultsStore(run_dir, "x", "simulation", "shared-truth", "")
    store.start_trial(0, {})
    attacker = RoundAttacker(
        trial, data, factory, store, run_dir, torch.device("cpu"), SharedTruthScorer()
    )
    attacker.on_round(1, start, [dataclasses.replace(reply, truth=truth)], update)
    return store.data


@pytest.mark.slow
def test_records_carry_the_metric_or_why_not(
    vgg_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    common = {"cache_dir": str(tmp_path / "cache"), "stats_samples": 8}
    scored = attacker_records({"weights": str(vgg_files[0]), **common}, tmp_path / "a")
    missing = attacker_records(common, tmp_path / "b")

    (record,) = scored.records
    assert record.status == "ok"
    value = record.metrics["rel_perceptual_l1"]
    assert value is not None and value > 0
    assert record.images[0].rel_perceptual_l1 == value
    info = scored.trials[0].rel_perceptual_l1
    assert info is not None and info.status == "available"
    row = next(csv.DictReader(io.StringIO((tmp_path / "a" / "metrics.csv").read_text("utf-8"))))
    assert float(row["rel_perceptual_l1"]) == pytest.approx(value)
    assert "rel_perceptual_l1" in columns(summarise(scored))

    (record,) = missing.records
    assert record.status == "ok" and record.metrics["psnr"] is not None
    assert record.metrics["rel_perceptual_l1"] is None
    (reason,) = unavailable_metrics(missing)
    assert "no VGG-19 weights" in reason
    assert "rel_perceptual_l1" not in columns(summarise(missing))
    stored = json.loads((tmp_path / "b" / "results.json").read_text("utf-8"))
    assert stored["trials"][0]["rel_perceptual_l1"]["reason"] == reason
