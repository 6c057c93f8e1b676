"""Scenario options added for COPA's experiments: picking classes, which samples are
held out, and the zoo's output activation / leaky slope."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedsim.data.datasets import DataError, load_photos
from fedsim.models.zoo import build_model
from fedsim.scenario import ScenarioError, expand
from fedsim.trial_inputs import federated_data, select_classes


def test_classes_keep_and_relabel_in_the_given_order() -> None:
    data = select_classes(load_photos(8, 2, 0), ["rocket", "chelsea"])

    assert data.class_names == ("rocket", "chelsea")
    assert data.labels.tolist() == [0, 0, 1, 1]


def test_unknown_class_names_the_available_ones() -> None:
    with pytest.raises(DataError, match="unknown class 'dog' \\(available: chelsea, rocket"):
        select_classes(load_photos(8, 1, 0), ["dog"])


def test_holdout_last_keeps_each_photos_centred_crop_in_training() -> None:
    raw = {
        "data": {"dataset": "photos", "image_size": 8, "classes": ["chelsea", "rocket"],
                 "samples_per_class": 2, "test_fraction": 0.5, "holdout": "last"},
        "federation": {"num_clients": 2, "clients_per_round": 2},
    }  # fmt: skip
    data = federated_data(expand(raw, "x.toml")[0].scenario)
    photos = load_photos(8, 2, 0)
    centred = {photos.images[0].numpy().tobytes(), photos.images[2].numpy().tobytes()}

    assert {s.images[0].numpy().tobytes() for s in data.shards} == centred


def test_output_activation_and_slope() -> None:
    model = build_model(
        "convnet", input_shape=(3, 8, 8), num_classes=3, layers=[(3, 2, 1)],
        activation="leaky_relu", output_activation="sigmoid", negative_slope=0.2,
    )  # fmt: skip
    out = model(torch.rand(4, 3, 8, 8)).detach()

    assert isinstance(model.out, nn.Sigmoid) and float(out.min()) > 0 and float(out.max()) < 1
    assert model.body[1].negative_slope == 0.2


def test_output_activation_is_for_zoo_models_only() -> None:
    raw = {"model": {"name": "torch.nn:Identity", "output_activation": "tanh"}}
    with pytest.raises(ScenarioError, match="model: output_activation applies to the zoo models"):
        expand(raw, "x.toml")


def test_dataset_is_a_registered_plugin() -> None:
    with pytest.raises(
        ScenarioError, match=r"data\.dataset: no dataset plugin 'mnits' \(did you mean 'mnist'\?\)"
    ):
        expand({"data": {"dataset": "mnits"}}, "x.toml")
    with pytest.raises(ScenarioError, match=r"dataset 'cifar10' needs data\.root"):
        expand({"data": {"dataset": "cifar10"}}, "x.toml")
