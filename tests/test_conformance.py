"""Every discovered plugin keeps the plugin contracts: attacks, defences, datasets and
models of the ``fedsim.attacks``, ``fedsim.defences``, ``fedsim.datasets`` and
``fedsim.models`` entry-point groups, each checked on its own and by a tiny run."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import nn

from fedsim.api import (
    STAGE_HOOKS,
    Attack,
    Defence,
    LocalTraining,
    Observation,
    TrainingResult,
    missing_hooks,
)
from fedsim.data.source import DatasetSource, LoadOptions
from fedsim.models.zoo import build_model, construct, model_class
from fedsim.registry import discover, registered_models
from fedsim.threat import KNOWLEDGE

PLUGINS = discover()
SHAPE = (1, 8, 8)
CLASSES = 3
TINY = {
    "iterations": 2,
    "max_iterations": 2,
    "restarts": 1,
    "critic_steps": 1,
    "conv_backend": "default",  # "auto" times two convolution backends first
}
"""Parameter values that keep a run short, set where a plugin's ``Params`` has the key."""


def tiny_params(params_cls: type[BaseModel]) -> Any:
    """``params_cls``'s defaults with :data:`TINY` applied to the keys it has."""
    return params_cls(**{k: v for k, v in TINY.items() if k in params_cls.model_fields})


def tiny_model(seed: int = 0) -> nn.Module:
    return build_model("lenet", input_shape=SHAPE, num_classes=CLASSES, seed=seed)


def tiny_batch(size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(size, *SHAPE, generator=generator)
    return images, torch.arange(size) % CLASSES


def gradient(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(F.cross_entropy(model(images), labels), params)
    return dict(zip(names, grads, strict=True))


def test_every_plugin_loads() -> None:
    assert PLUGINS.broken == {}
    assert {"digits", "photos", "mnist", "cifar10", "imagefolder"} <= set(PLUGINS.datasets)
    assert {"lenet", "convnet"} <= set(registered_models())


# ---------------------------------------------------------------- attacks


@pytest.mark.parametrize("name", sorted(PLUGINS.attacks))
def test_attack_contract(name: str) -> None:
    cls: type[Attack] = PLUGINS.attacks[name]
    attack = cls(cls.Params())  # the defaults are valid

    assert cls.name == name
    assert cls.summary
    assert set(cls.needs) | set(cls.uses) <= set(KNOWLEDGE)
    for kind in ("gradient", "delta"):
        assert set(attack.knowledge_needed(kind)) <= set(KNOWLEDGE)


@pytest.mark.parametrize("name", sorted(PLUGINS.attacks))
def test_attack_tiny_run(name: str) -> None:
    cls: type[Attack] = PLUGINS.attacks[name]
    attack = cls(tiny_params(cls.Params))
    model = tiny_model(seed=1)
    images, labels = tiny_batch(1)
    observation = Observation(
        position="server", round=1, client_id=0, model_factory=tiny_model,
        parameters=model.state_dict(), update=gradient(model, images, labels),
        kind="gradient", input_shape=SHAPE, num_classes=CLASSES, batch_size=1, lr=0.1,
        local_steps=1, device=torch.device("cpu"), seed=0, labels=labels,
    )  # fmt: skip

    reason = attack.supports(tiny_model())
    result = None if reason else attack.reconstruct(observation)

    assert reason is None or (isinstance(reason, str) and reason)
    if result is not None:
        assert result.status in ("ok", "failed", "unsupported")
        if result.status == "ok":
            assert result.images is not None and result.images.shape == (1, *SHAPE)


# ---------------------------------------------------------------- defences


@pytest.mark.parametrize("name", sorted(PLUGINS.defences))
def test_defence_contract(name: str) -> None:
    cls: type[Defence] = PLUGINS.defences[name]
    defence = cls(cls.Params())  # the defaults are valid

    assert cls.name == name
    assert cls.summary
    assert cls.stages and set(cls.stages) <= set(STAGE_HOOKS)
    assert missing_hooks(cls) == []
    assert defence.stage in cls.stages


@pytest.mark.parametrize("name", sorted(PLUGINS.defences))
def test_defence_tiny_run(name: str) -> None:
    """Each declared stage's hook, on a tiny model's updates."""
    cls: type[Defence] = PLUGINS.defences[name]
    defence = cls(tiny_params(cls.Params))
    model = tiny_model()
    assert defence.supports(model) is None
    images, labels = tiny_batch(4)
    update = gradient(model, images, labels)
    generator = torch.Generator().manual_seed(0)
    shapes = {k: v.shape for k, v in update.items()}

    for stage in cls.stages:
        if stage == "secure_aggregation":
            protocol = defence.secure_aggregation(3)
            assert 2 <= protocol.reconstruction_threshold < protocol.num_shares <= 3
            continue
        if stage == "upload":
            out, measurements = defence.apply(update, generator)
        elif stage == "aggregate":
            other = gradient(model, images[:2], labels[:2])
            out, measurements = defence.aggregate([update, other], [4.0, 2.0], generator)
        else:
            task = LocalTraining(
                model=defence.prepare_model(tiny_model()), images=images, labels=labels,
                protocol="fedsgd", batch_size=2, lr=0.1, epochs=1, generator=generator,
            )  # fmt: skip
            result = defence.train(task)
            assert isinstance(result, TrainingResult) and result.steps >= 1
            out, measurements = result.update, result.measurements
        assert {k: v.shape for k, v in out.items()} == shapes, stage
        assert all(torch.isfinite(v).all() for v in out.values())
        assert all(isinstance(v, float | int) for v in measurements.values())


# ---------------------------------------------------------------- datasets


def tiny_options() -> LoadOptions:
    return LoadOptions(
        root=None, download=False, image_size=8, grayscale=False, samples_per_class=2, seed=0
    )


@pytest.mark.parametrize("name", sorted(PLUGINS.datasets))
def test_dataset_contract_and_tiny_load(name: str) -> None:
    cls: type[DatasetSource] = PLUGINS.datasets[name]
    assert cls.name == name
    assert cls.summary
    assert cls.channels in (None, 1, 3)
    assert cls.num_classes is None or cls.num_classes >= 2
    if cls.needs_root:
        pytest.skip(f"{name} reads files under data.root (a download or the user's own)")

    data = cls().load(tiny_options())

    assert data.images.dtype == torch.uint8
    assert data.input_shape == cls.input_shape(tiny_options())
    assert data.labels.dtype == torch.int64 and data.labels.shape == (len(data.images),)
    assert int(data.labels.min()) >= 0 and int(data.labels.max()) < data.num_classes
    assert cls.num_classes in (None, data.num_classes)


# ---------------------------------------------------------------- models


OFFLINE_SHAPES = sorted(
    {cls.input_shape(tiny_options()) for cls in PLUGINS.datasets.values() if not cls.needs_root}
)


@pytest.mark.parametrize("shape", OFFLINE_SHAPES)
@pytest.mark.parametrize("name", sorted(registered_models()))
def test_model_builds_and_maps_a_batch_to_logits(name: str, shape: tuple[int, int, int]) -> None:
    """By the constructor contract alone (``input_shape``, ``num_classes``, defaults)."""
    cls = model_class(name)
    model = construct(name, cls, shape, CLASSES, {})

    assert isinstance(model, nn.Module)
    assert model(torch.rand(2, *shape)).shape == (2, CLASSES)
