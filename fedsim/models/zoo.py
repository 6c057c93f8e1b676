"""Model zoo: the DLG paper's LeNet, a generic bias-free ConvNet (COPA's CNN3
family as presets), and user models by import path.

Every model maps ``(B, C, H, W)`` images in [0, 1] to ``(B, num_classes)`` logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fedsim.models.errors import one_line
from fedsim.models.imports import import_model_class

ZOO_MODELS = ("lenet", "convnet")
"""The built-in models, by name."""

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
    Weights and biases are drawn from U(-0.5, 0.5) as in the paper's demo.

    Needs H and W divisible by 4. ``output_activation`` (default none) follows the head.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        num_classes: int,
        activation: str,
        output_activation: str = "none",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        height, width = image_size
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
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -0.5, 0.5)
        self.out = output_layers(output_activation, negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(self.body(x).flatten(1))
        return logits if self.out is None else self.out(logits)


class ConvNet(nn.Module):
    """A plain chain of bias-free, unpadded convolutions, each followed by the same
    activation, then one fully-connected layer with bias to the classes.

    ``layers`` lists ``(kernel, out_channels, stride)`` from the input upwards;
    ``output_activation`` (default none) follows the fully-connected layer, as in
    COPA's experiments (Tanh on every layer; LeakyReLU convs with a Sigmoid output).
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int],
        num_classes: int,
        layers: Sequence[tuple[int, int, int]],
        activation: str,
        output_activation: str = "none",
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        if not layers:
            raise ValueError("convnet needs at least one conv layer")
        modules: list[nn.Module] = []
        channels, (height, width) = in_channels, image_size
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
        self.out = output_layers(output_activation, negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fc(self.body(x).flatten(1))
        return logits if self.out is None else self.out(logits)


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
) -> nn.Module:
    """Build a model whose initial parameters depend only on the arguments.

    Args:
        name: ``lenet``, ``convnet`` or an import path ``"pkg.module:Class"``
            (constructed with ``**kwargs``).
        input_shape: ``(C, H, W)``.
        activation: one of :data:`ACTIVATIONS` (zoo models only).
        layers: ``convnet`` layers as ``(kernel, channels, stride)``.
        preset: a key of :data:`CNN3_PRESETS` instead of ``layers``.
        seed: seeds the parameter initialisation.
        output_activation: ``"none"`` or an :data:`ACTIVATIONS` key applied to the
            logits (zoo models only).
        negative_slope: ``leaky_relu``'s slope for ``z < 0`` (zoo models only).

    Raises:
        ValueError: on an unknown model, a bad spec, a user model that cannot be
            imported (see :mod:`fedsim.models.imports`), built with ``kwargs`` or run
            on ``input_shape``, or whose output is not ``(B, num_classes)``; one line.
    """
    channels, height, width = input_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if name == "lenet":
            model: nn.Module = LeNet(
                channels, (height, width), num_classes, activation, output_activation,
                negative_slope,
            )  # fmt: skip
        elif name == "convnet":
            spec = CNN3_PRESETS[preset] if preset else layers
            if spec is None:
                raise ValueError("convnet needs `layers` or `preset`")
            triples = [tuple(int(v) for v in layer) for layer in spec]
            model = ConvNet(
                channels, (height, width), num_classes, triples, activation,  # type: ignore[arg-type]
                output_activation, negative_slope,
            )  # fmt: skip
        else:
            cls = import_model_class(name)
            try:
                model = cls(**(kwargs or {}))
            except Exception as exc:  # the user's constructor: any failure is bad input
                raise ValueError(
                    f"model {name!r} cannot be built with kwargs {kwargs or {}}: "
                    f"{type(exc).__name__}: {one_line(exc)}"
                ) from None
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
