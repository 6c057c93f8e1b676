"""The model zoo: LeNet, the CNN3 presets, seeding, and user models by import path."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fedsim.models.imports import defines_statically
from fedsim.models.zoo import ConvNet, build_model, model_class
from fedsim.registry import registered_models
from fedsim.scenario import ScenarioError, expand
from fedsim.trial_inputs import federated_data, model_factory

SHAPE = (3, 32, 32)


def test_lenet_maps_images_to_logits() -> None:
    model = build_model("lenet", input_shape=SHAPE, num_classes=6)

    assert model(torch.rand(5, *SHAPE)).shape == (5, 6)
    assert model.fc.in_features == 12 * 8 * 8


def test_lenet_needs_sides_divisible_by_four() -> None:
    with pytest.raises(ValueError, match="divisible by 4"):
        build_model("lenet", input_shape=(3, 30, 30), num_classes=6)


@pytest.mark.parametrize(
    ("preset", "fc_inputs"),
    [("cnn3-1", 588), ("cnn3-2", 147), ("cnn3-3", 7056), ("cnn3-4", 4704)],
)
def test_convnet_presets_fc_sizes(preset: str, fc_inputs: int) -> None:
    model = build_model("convnet", input_shape=SHAPE, num_classes=10, preset=preset)

    assert model.fc.in_features == fc_inputs
    assert model(torch.rand(2, *SHAPE)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.bias is None for c in convs)


def test_convnet_that_shrinks_input_to_nothing_is_rejected() -> None:
    with pytest.raises(ValueError, match="to nothing"):
        build_model("convnet", input_shape=(1, 8, 8), num_classes=2, layers=[(5, 4, 2), (5, 4, 2)])


def test_same_seed_same_parameters() -> None:
    def params(seed: int) -> list[torch.Tensor]:
        model = build_model("lenet", input_shape=SHAPE, num_classes=6, seed=seed)
        return [p.detach() for p in model.parameters()]

    first, again, other = params(1), params(1), params(2)

    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_build_model_does_not_disturb_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model("lenet", input_shape=SHAPE, num_classes=6, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_user_model_with_wrong_output_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"expected \(1, 6\)"):
        build_model("torch.nn:Identity", input_shape=SHAPE, num_classes=6)


def test_user_model_by_import_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_fedsim_models.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            class Tiny(nn.Module):
                def __init__(self, num_classes):
                    super().__init__()
                    self.fc = nn.Linear(3 * 32 * 32, num_classes)

                def forward(self, x):
                    return self.fc(x.flatten(1))
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    model = build_model(
        "my_fedsim_models:Tiny", input_shape=SHAPE, num_classes=4, kwargs={"num_classes": 4}
    )
    again = build_model(
        "my_fedsim_models:Tiny", input_shape=SHAPE, num_classes=4, kwargs={"num_classes": 4}
    )

    assert type(model).__name__ == "Tiny"
    assert model(torch.rand(2, *SHAPE)).shape == (2, 4)
    assert torch.equal(model.fc.weight, again.fc.weight)  # seeded like the zoo models


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("no_such_module_fedsim:Model", "cannot import module"),
        ("torch.nn:NoSuchLayer", "not a torch.nn.Module subclass"),
        ("torch:tensor", "not a torch.nn.Module subclass"),
        ("torch.nn.Linear", "must look like"),
    ],
)
def test_bad_import_path(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(path, input_shape=SHAPE, num_classes=6)


def test_import_path_is_checked_before_the_module_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``this`` prints the Zen of Python when imported: the check refuses it unimported,
    and a module whose source lacks the name never runs either."""
    (tmp_path / "fedsim_noisy_module.py").write_text(
        "print('side effect')\nclass Other:\n    pass\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))

    for path, module in (("this:Foo", "this"), ("fedsim_noisy_module:Net", "fedsim_noisy_module")):
        with pytest.raises(ValueError, match=r"defines no .* \(checked without importing it\)"):
            build_model(path, input_shape=SHAPE, num_classes=6)
        assert module not in sys.modules
    assert capsys.readouterr().out == ""


def test_import_path_check_follows_star_imports_and_names_bound_by_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "fedsim_star_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .layers import *\n", encoding="utf-8")
    (package / "layers.py").write_text("from torch.nn import Flatten as Flat\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert defines_statically("fedsim_star_pkg", "Flat")
    assert not defines_statically("fedsim_star_pkg", "Linear")
    assert not defines_statically("fedsim_star_pkg.missing", "Flat")
    assert "fedsim_star_pkg" not in sys.modules  # the checks imported nothing


@pytest.mark.parametrize(
    ("kwargs", "shape", "message"),
    [
        (
            {"num_classes": 4, "width": 3},
            SHAPE,
            "model 'torch.nn:Bilinear' cannot be built with kwargs {'num_classes': 4, 'width': 3}: "
            "TypeError: ",
        ),
        (
            {"in1_features": 4, "in2_features": 4, "out_features": 6},
            SHAPE,
            "model 'torch.nn:Bilinear' cannot take a (3, 32, 32) (C, H, W) input: TypeError: ",
        ),
    ],
)
def test_user_model_that_cannot_be_built_or_run_is_one_line(
    kwargs: dict[str, int], shape: tuple[int, int, int], message: str
) -> None:
    with pytest.raises(ValueError) as error:
        build_model("torch.nn:Bilinear", input_shape=shape, num_classes=6, kwargs=kwargs)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_import_path_model_receives_input_shape_and_num_classes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A constructor naming ``input_shape`` and ``num_classes`` gets them from the data,
    next to the scenario's ``kwargs``; the trial's model factory builds it that way."""
    (tmp_path / "fedsim_shaped_models.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            class Shaped(nn.Module):
                def __init__(self, input_shape, num_classes, hidden):
                    super().__init__()
                    self.input_shape = input_shape
                    c, h, w = input_shape
                    self.body = nn.Sequential(
                        nn.Flatten(), nn.Linear(c * h * w, hidden), nn.Linear(hidden, num_classes)
                    )

                def forward(self, x):
                    return self.body(x)
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = {
        "data": {"dataset": "photos", "image_size": 8, "samples_per_class": 2},
        "model": {"name": "fedsim_shaped_models:Shaped", "kwargs": {"hidden": 5}},
        "federation": {"num_clients": 2},
    }
    scenario = expand(raw, "s.toml")[0].scenario
    data = federated_data(scenario)

    model = model_factory(scenario, data)()

    assert model.input_shape == (3, 8, 8) == data.input_shape
    assert [tuple(p.shape) for p in model.parameters()] == [(5, 192), (5,), (6, 5), (6,)]
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 6)


def test_a_registered_model_is_named_by_its_entry_point() -> None:
    assert registered_models()["lenet"] == "fedsim.models.zoo:LeNet"
    assert model_class("convnet") is ConvNet
    with pytest.raises(
        ScenarioError, match=r"model: unknown model 'lenett' \(did you mean 'lenet'\?\)"
    ):
        expand({"model": {"name": "lenett"}}, "s.toml")
