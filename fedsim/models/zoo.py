"""Model zoo: the DLG paper's LeNet, a generic bias-free ConvNet (COPA's CNN3
family as presets), and every other model by entry-point name or import path.

Every model maps ``(B, C, H, W)`` images in [0, 1] to ``(B, num_classes)`` logits.

Constructor contract (models of the ``fedsim.models`` entry-point group and import
paths ``"pkg.module:Class"`` alike): ``Class(input_shape=(C, H, W), num_classes=K,
**options)``. ``input_shape`` and ``num_classes`` come from the scenario's data and
are passed only to a constructor that names them as parameters (so a class taking
neither still works); ``options`` are the scenario's ``[model] kwargs`` (an entry
of the same name takes precedence), or, for the zoo models :data:`ZOO_MODELS`, the
``[model]`` keys ``activation``, ``output_activation``, ``negative_slope``, ``init``
and (``convnet``) ``layers``/``preset``. Construction runs under a seeded RNG, so the
initial parameters depend only on the arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from fedsim.models.errors import one_line
from fedsim.models.imports import import_model_class
from fedsim.registry import registered_models

ZOO_MODELS = ("lenet", "convnet")
"""fedsim's models (entry points of the ``fedsim.models`` group) whose options are the
``[model]`` keys rather than ``[model] kwargs``."""

CONTRACT_ARGUMENTS = ("input_shape", "num_classes")
"""What every model constructor may take from the data (see the module docstring)."""

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "relu": nn.ReLU,
}

CNN3_PRESETS: dict[str, list[tuple[int, int, int]]] = {
    # (kernel, channels, stride) per conv layer; COPA (Chen & Campbell 2021), Table 1.
    "cnn3-1": [(3, 6, 1), (4, 3, 2)],
    "cnn3-2": [(4, 6, 2), (3, 3, 2)],
    "cnn3-3": [(3, 6, 1), (3, 9, 1)],
    "cnn3-4": [(3, 1, 1), (3, 6, 1)],
}


DEFAULT_CONVNET_LAYERS = tuple(CNN3_PRESETS["cnn3-1"])
"""``convnet``'s layers when built without any (a scenario always states them)."""


INITIALISATIONS = ("dlg", "pytorch")
"""Zoo models' ``init``: ``dlg``, every weight and bias from U(-0.5, 0.5) as in the DLG
paper's demo (large weights: the optimisation attacks' setting, but slow or unstable
training); ``pytorch``, each layer's own default (Kaiming-uniform scaled by fan-in),
under which the models train well."""


def initialise(model: nn.Module, init: str) -> None:
    """Re-draw ``model``'s parameters by ``init`` (one of :data:`INITIALISATIONS`)."""
    if init not in INITIALISATIONS:
        raise ValueError(f"init must be one of {INITIALISATIONS}, got {init!r}")
    if init == "dlg":
        for parameter in model.parameters():
            nn.init.uniform_(parameter, -0.5, 0.5)


def make_activation(name: str, negative_slope: float = 0.01) -> nn.Module:
    """An activation module by name; ``negative_slope`` applies to ``leaky_relu`` only."""
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    return ACTIVATIONS[name]()


def output_layers(output_activation: str, negative_slope: float) -> nn.Module | None:
    """The activation after the head (``"none"``: logits straight to the loss)."""
    return (
        None if output_activation == "none" else make_activation(output_activation, negative_slope)
    )


class LeNet(nn.Module):
    """The LeNet variant of DLG (Zhu et al. 2019): three 5×5 convs (strides 2, 2, 1,
    padding 2) with 12 channels, an activation after each, and one linear layer.
    ``init`` (:data:`INITIALISATIONS`, default ``dlg``): weights and biases from
    U(-0.5, 0.5) as in the paper's demo, or PyTorch's defaults.

    ``input_shape`` is ``(C, H, W)`` with H and W divisible by 4. ``output_activation``
    (default none) follows the head.
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        activation: str = "sigmoid",
        output_activation: str = "none",
        negative_slope: float = 0.01,
        init: str = "dlg",
    ) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        if height % 4 or width % 4:
            raise ValueError(f"lenet needs image sides divisible by 4, got {height}×{width}")
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 12, kernel_size=5, padding=2, stride=2),
            make_activation(activation, negative_slope),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=2),
            make_activation(activation, negative_slope),
            nn.Conv2d(12, 12, kernel_size=5, padding=2, stride=1),
            make_activation(activation, negative_slope),
        )
        self.fc = nn.Linear(12 * (height // 4) * (width // 4), num_classes)
        initialise(self, init)
        self.out = output_layers(output_activation, negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(self.body(x).flatten(1))
        return logits if self.out is None else self.out(logits)


class ConvNet(nn.Module):
    """A plain chain of bias-free, unpadded convolutions, each followed by the same
    activation, then one fully-connected layer with bias to the classes.

    ``input_shape`` is ``(C, H, W)``; ``layers`` lists ``(kernel, out_channels, stride)``
    from the input upwards (default :data:`DEFAULT_CONVNET_LAYERS`); ``output_activation``
    (default none) follows the fully-connected layer, as in COPA's experiments (Tanh on
    every layer; LeakyReLU convs with a Sigmoid output). ``init``: see
    :data:`INITIALISATIONS` (default ``pytorch``).
    """

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        num_classes: int,
        layers: Sequence[tuple[int, int, int]] = DEFAULT_CONVNET_LAYERS,
        activation: str = "sigmoid",
        output_activation: str = "none",
        negative_slope: float = 0.01,
        init: str = "pytorch",
    ) -> None:
        super().__init__()
        if not layers:
            raise ValueError("convnet needs at least one conv layer")
        modules: list[nn.Module] = []
        channels, height, width = input_shape
        image_size = (height, width)
        for kernel, out_channels, stride in layers:
            height = (height - kernel) // stride + 1
            width = (width - kernel) // stride + 1
            if height < 1 or width < 1:
                raise ValueError(
                    f"convnet layers {list(layers)} shrink a {image_size} input to nothing"
                )
            modules += [
                nn.Conv2d(channels, out_channels, kernel, stride=stride, bias=False),
                make_activation(activation, negative_slope),
            ]
            channels = out_channels
        self.body = nn.Sequential(*modules)
        self.fc = nn.Linear(channels * height * width, num_classes)
        initialise(self, init)
        self.out = output_layers(output_activation, negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(self.body(x).flatten(1))
        return logits if self.out is None else self.out(logits)


def model_class(name: str) -> type[nn.Module]:
    """The class of model ``name``: an entry point of the ``fedsim.models`` group, else an
    import path ``"pkg.module:Class"`` (checked before its module runs, see
    :mod:`fedsim.models.imports`).

    Raises:
        ValueError: a malformed or unimportable path, or not an ``nn.Module`` subclass.
    """
    return import_model_class(registered_models().get(name, name))


def zoo_options(
    name: str,
    *,
    activation: str,
    layers: Sequence[Sequence[int]] | None,
    preset: str | None,
    output_activation: str,
    negative_slope: float,
    init: str | None = None,
) -> dict[str, Any]:
    """The constructor options of zoo model ``name`` (one of :data:`ZOO_MODELS`);
    ``init`` ``None`` keeps the model's own default.

    Raises:
        ValueError: ``convnet`` with neither ``layers`` nor ``preset``.
    """
    options: dict[str, Any] = {
        "activation": activation,
        "output_activation": output_activation,
        "negative_slope": negative_slope,
    }
    if init is not None:
        options["init"] = init
    if name == "convnet":
        spec = CNN3_PRESETS[preset] if preset else layers
        if spec is None:
            raise ValueError("convnet needs `layers` or `preset`")
        options["layers"] = [tuple(int(v) for v in layer) for layer in spec]
    return options


def contract_arguments(
    cls: type[nn.Module], input_shape: tuple[int, int, int], num_classes: int
) -> dict[str, Any]:
    """``input_shape`` and ``num_classes``, each only if ``cls``'s constructor names it."""
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no signature to read (e.g. a C extension type)
        return {}
    named = {
        key for key, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    values = {"input_shape": input_shape, "num_classes": num_classes}
    return {key: values[key] for key in CONTRACT_ARGUMENTS if key in named}


def construct(
    name: str,
    cls: type[nn.Module],
    input_shape: tuple[int, int, int],
    num_classes: int,
    options: Mapping[str, Any],
) -> nn.Module:
    """``cls`` built by the constructor contract (module docstring) with ``options``.

    Raises:
        ValueError: the constructor failed (one line, naming ``options`` as kwargs).
    """
    try:
        return cls(**{**contract_arguments(cls, input_shape, num_classes), **options})
    except Exception as exc:  # the model's constructor: any failure is bad input
        raise ValueError(
            f"model {name!r} cannot be built with kwargs {dict(options)}: "
            f"{type(exc).__name__}: {one_line(exc)}"
        ) from None


def build_model(
    name: str,
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    activation: str = "sigmoid",
    layers: Sequence[Sequence[int]] | None = None,
    preset: str | None = None,
    kwargs: dict[str, Any] | None = None,
    seed: int = 0,
    output_activation: str = "none",
    negative_slope: float = 0.01,
    init: str | None = None,
) -> nn.Module:
    """Build a model whose initial parameters depend only on the arguments.

    Args:
        name: an entry point of the ``fedsim.models`` group (``lenet``, ``convnet``,
            a registered model) or an import path ``"pkg.module:Class"``; built by the
            constructor contract of this module's docstring.
        input_shape: ``(C, H, W)``.
        num_classes: ``K``, the number of logits.
        activation: one of :data:`ACTIVATIONS` (zoo models only).
        layers: ``convnet`` layers as ``(kernel, channels, stride)``.
        preset: a key of :data:`CNN3_PRESETS` instead of ``layers``.
        kwargs: the options of a model that is not in the zoo.
        seed: seeds the parameter initialisation.
        output_activation: ``"none"`` or an :data:`ACTIVATIONS` key applied to the
            logits (zoo models only).
        negative_slope: ``leaky_relu``'s slope for ``z < 0`` (zoo models only).
        init: one of :data:`INITIALISATIONS`, ``None`` for the model's default (zoo
            models only).

    Raises:
        ValueError: on an unknown model, a bad spec, a user model that cannot be
            imported (see :mod:`fedsim.models.imports`), built with ``kwargs`` or run
            on ``input_shape``, or whose output is not ``(B, num_classes)``; one line.
    """
    cls = model_class(name)
    # Parameters are initialised on the CPU: seed (and restore) its generator only.
    # torch.manual_seed would also seed every accelerator's, outside fork_rng's restore,
    # and records a stack trace for lazy CUDA seeding on every call (a tenth of a
    # client's round).
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        if name in ZOO_MODELS:  # their own errors are one line already
            options = zoo_options(
                name, activation=activation, layers=layers, preset=preset,
                output_activation=output_activation, negative_slope=negative_slope,
                init=init,
            )  # fmt: skip
            model = cls(input_shape=input_shape, num_classes=num_classes, **options)
        else:
            model = construct(name, cls, input_shape, num_classes, kwargs or {})
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_shape))
    except Exception as exc:  # e.g. a 1-channel model on 3-channel data
        raise ValueError(
            f"model {name!r} cannot take a {input_shape} (C, H, W) input: "
            f"{type(exc).__name__}: {one_line(exc)}"
        ) from None
    if tuple(out.shape) != (1, num_classes):
        raise ValueError(
            f"model {name!r} maps a {input_shape} input to {tuple(out.shape)}, "
            f"expected (1, {num_classes})"
        )
    return model
