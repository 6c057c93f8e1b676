"""A model as a plain chain of layers, the only shape the analytic attacks and the audit handle.

A *chain* is ``Conv2d`` layers, then ``Linear`` layers (the last one is the
classification head), each optionally followed by one element-wise
activation, with a flatten between the last conv and the first linear layer.
The chain is read from a ``torch.fx`` trace, so any ``nn.Module`` whose
forward pass is such a chain qualifies, whatever its attribute names.
Anything else — pooling, normalisation, dropout, branches and residual
connections, grouped or dilated convolutions — raises :class:`UnsupportedModel`
naming the offending layer.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from fedsim.analytic.conv import ConvGeometry

ActivationKind = Literal["identity", "tanh", "sigmoid", "leaky_relu", "relu"]
INVERTIBLE = ("identity", "tanh", "sigmoid", "leaky_relu")
CLIP = 1e-7
"""Outputs of tanh/sigmoid are clipped this far inside their open range before inversion."""


class UnsupportedModel(ValueError):
    """The model is not a chain the analytic methods handle; ``str()`` is one line."""


@dataclass(frozen=True)
class Activation:
    """An element-wise activation ``y = a(z)`` with its inverse and derivative."""

    kind: ActivationKind = "identity"
    slope: float = 0.0  # leaky_relu only
    name: str = ""

    @property
    def invertible(self) -> bool:
        return self.kind in INVERTIBLE and (self.kind != "leaky_relu" or self.slope > 0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.kind == "tanh":
            return torch.tanh(z)
        if self.kind == "sigmoid":
            return torch.sigmoid(z)
        if self.kind == "leaky_relu":
            return F.leaky_relu(z, self.slope)
        if self.kind == "relu":
            return torch.relu(z)
        return z

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        """``a'(z)``."""
        if self.kind == "tanh":
            return 1 - torch.tanh(z) ** 2
        if self.kind == "sigmoid":
            s = torch.sigmoid(z)
            return s * (1 - s)
        if self.kind in ("leaky_relu", "relu"):
            return torch.where(z > 0, torch.ones_like(z), torch.full_like(z, self.slope))
        return torch.ones_like(z)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``a⁻¹(y)`` and how many entries lay outside ``a``'s range and were clipped."""
        if self.kind == "tanh":
            clipped = y.clamp(-1 + CLIP, 1 - CLIP)
            return torch.atanh(clipped), int((clipped != y).sum())
        if self.kind == "sigmoid":
            clipped = y.clamp(CLIP, 1 - CLIP)
            return torch.logit(clipped), int((clipped != y).sum())
        if self.kind == "leaky_relu":
            return torch.where(y > 0, y, y / self.slope), 0
        if self.kind == "relu":
            raise UnsupportedModel(f"ReLU '{self.name}' is not invertible")
        return y, 0


@dataclass(frozen=True)
class Layer:
    """One conv or linear layer of a chain with the activation that follows it.

    ``input_shape`` is ``(C, H, W)`` for a conv layer and ``(n,)`` for a linear one.
    """

    kind: Literal["conv", "linear"]
    name: str
    module: nn.Conv2d | nn.Linear
    input_shape: tuple[int, ...]
    activation: Activation = field(default_factory=Activation)

    @property
    def weight_key(self) -> str:
        return f"{self.name}.weight" if self.name else "weight"

    @property
    def bias_key(self) -> str | None:
        if self.module.bias is None:
            return None
        return f"{self.name}.bias" if self.name else "bias"

    def geometry(self) -> ConvGeometry:
        return ConvGeometry.of(self.module, self.input_shape)  # type: ignore[arg-type]

    def flat_bias(self) -> torch.Tensor:
        """The bias as it enters the flat pre-activation output ``Z = M x + b``:
        float64 on the CPU, ``(|Z|,)`` (a conv layer's bias repeated over positions);
        zeros when the layer has none."""
        module = self.module
        size = module.out_features if isinstance(module, nn.Linear) else self.geometry().n_outputs
        if module.bias is None:
            return torch.zeros(size, dtype=torch.float64)
        bias = module.bias.detach().double().cpu()
        return bias.repeat_interleave(size // len(bias))

    def weight_map(self, x: torch.Tensor) -> torch.Tensor:
        """``M x``: the layer without its bias, ``(B, *input_shape)`` → ``(B, *output)``."""
        module = self.module
        if self.kind == "linear":
            return x @ module.weight.T
        assert isinstance(module, nn.Conv2d)
        return F.conv2d(x, module.weight, None, module.stride, module.padding)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """``Mᵀ y``: the transpose of :meth:`weight_map`, ``(B, *output)`` → ``(B, *input_shape)``.

        For a conv layer, the transposed convolution with the same weights,
        stride and padding, its ``output_padding`` chosen to restore the input size.
        """
        module = self.module
        if self.kind == "linear":
            return y @ module.weight
        assert isinstance(module, nn.Conv2d)
        geometry = self.geometry()
        stride, padding, kernel = geometry.stride, geometry.padding, geometry.kernel
        size = self.input_shape[1:]
        output_padding = tuple(
            size[i] - ((y.shape[2 + i] - 1) * stride[i] - 2 * padding[i] + kernel[i])
            for i in range(2)
        )
        return F.conv_transpose2d(
            y, module.weight, stride=stride, padding=padding, output_padding=output_padding
        )


@dataclass(frozen=True)
class Chain:
    """The layers from the input upwards; the last one is the linear head."""

    layers: tuple[Layer, ...]
    input_shape: tuple[int, int, int]

    @property
    def convs(self) -> tuple[Layer, ...]:
        return tuple(layer for layer in self.layers if layer.kind == "conv")

    @property
    def head(self) -> Layer:
        return self.layers[-1]

    def require_invertible(self) -> None:
        """Raise :class:`UnsupportedModel` unless every activation below the head is
        invertible (the recursive attacks invert each of them)."""
        for layer in self.layers[:-1]:
            if not layer.activation.invertible:
                what = layer.activation.name or layer.activation.kind
                raise UnsupportedModel(
                    f"activation '{what}' ({layer.activation.kind}) after layer '{layer.name}' is "
                    "not invertible; the recursive attacks need tanh, sigmoid, leaky_relu or none"
                )


_MODULE_ACTIVATIONS: dict[type[nn.Module], ActivationKind] = {
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.LeakyReLU: "leaky_relu",
    nn.ReLU: "relu",
}
_FUNCTION_ACTIVATIONS: dict[object, ActivationKind] = {
    torch.tanh: "tanh",
    torch.sigmoid: "sigmoid",
    torch.relu: "relu",
    F.relu: "relu",
    F.leaky_relu: "leaky_relu",
    F.sigmoid: "sigmoid",
    F.tanh: "tanh",
}
_METHOD_ACTIVATIONS: dict[str, ActivationKind] = {
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "relu": "relu",
}
_RESHAPES = {"flatten", "view", "reshape"}


def _describe(node: fx.Node, model: nn.Module) -> str:
    if node.op == "call_module":
        return f"'{node.target}' ({type(model.get_submodule(str(node.target))).__name__})"
    if node.op == "call_function":
        return f"'{node.name}' ({getattr(node.target, '__name__', node.target)})"
    return f"'{node.name}' ({node.op} {node.target})"


def _reason(node: fx.Node, model: nn.Module) -> str:
    if node.op == "call_module":
        module = model.get_submodule(str(node.target))
        if isinstance(module, nn.modules.pooling._MaxPoolNd | nn.modules.pooling._AvgPoolNd):
            return "pooling"
        if isinstance(
            module, nn.modules.pooling._AdaptiveAvgPoolNd | nn.modules.pooling._AdaptiveMaxPoolNd
        ):
            return "pooling"
        if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.GroupNorm):
            return "normalisation"
        if isinstance(module, nn.modules.dropout._DropoutNd):
            return "dropout"
    if node.op == "call_function" and node.target in (operator.add, torch.add, torch.cat):
        return "a branch or residual connection"
    return "a layer outside the plain conv/activation/linear chain"


def extract_chain(model: nn.Module, input_shape: tuple[int, int, int]) -> Chain:
    """Read ``model`` as a :class:`Chain` for inputs of shape ``(C, H, W)``.

    Raises:
        UnsupportedModel: with a one-line reason naming the first unsupported layer.
    """
    try:
        graph = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many kinds on dynamic control flow
        raise UnsupportedModel(
            f"cannot trace {type(model).__name__} as a static chain: {exc}"
        ) from None
    ShapeProp(graph).propagate(torch.zeros(1, *input_shape, dtype=next(model.parameters()).dtype))
    layers: list[Layer] = []
    activations: dict[int, Activation] = {}
    current: fx.Node | None = None
    flattened = False
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                raise UnsupportedModel("the model takes more than one input")
            current = node
            continue
        if node.op == "output":
            if node.args[0] is not current:
                raise UnsupportedModel("the model's output is not the end of its layer chain")
            break
        where = _describe(node, model)
        inputs = node.all_input_nodes
        if inputs != [current]:
            raise UnsupportedModel(f"unsupported layer {where}: a branch or residual connection")
        shape = tuple(node.args[0].meta["tensor_meta"].shape[1:])
        kind: ActivationKind | None = None
        slope = 0.0
        module = model.get_submodule(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, nn.Conv2d):
            if flattened or any(layer.kind == "linear" for layer in layers):
                raise UnsupportedModel(f"conv layer {where} after a linear layer is not supported")
            if module.groups != 1 or tuple(module.dilation) != (1, 1):
                raise UnsupportedModel(f"unsupported layer {where}: grouped or dilated convolution")
            if isinstance(module.padding, str) or module.padding_mode != "zeros":
                raise UnsupportedModel(f"unsupported layer {where}: only explicit zero padding")
            layers.append(Layer("conv", str(node.target), module, shape))
        elif isinstance(module, nn.Linear):
            if len(shape) != 1:
                raise UnsupportedModel(f"linear layer {where} must act on flattened features")
            layers.append(Layer("linear", str(node.target), module, shape))
        elif module is not None and type(module) in _MODULE_ACTIVATIONS:
            kind = _MODULE_ACTIVATIONS[type(module)]
            slope = float(getattr(module, "negative_slope", 0.0))
        elif isinstance(module, nn.Identity):
            pass
        elif isinstance(module, nn.Flatten) or (
            node.op in ("call_method", "call_function")
            and (node.target in _RESHAPES or node.target is torch.flatten)
        ):
            out = tuple(node.meta["tensor_meta"].shape[1:])
            if len(out) != 1:
                raise UnsupportedModel(f"unsupported reshape {where}: only flattening to features")
            flattened = True
        elif node.op == "call_function" and node.target in _FUNCTION_ACTIVATIONS:
            kind = _FUNCTION_ACTIVATIONS[node.target]
            slope = (
                float(
                    node.kwargs.get("negative_slope", node.args[1] if len(node.args) > 1 else 0.01)
                )
                if kind == "leaky_relu"
                else 0.0
            )
        elif node.op == "call_method" and node.target in _METHOD_ACTIVATIONS:
            kind = _METHOD_ACTIVATIONS[str(node.target)]
        else:
            raise UnsupportedModel(f"unsupported layer {where}: {_reason(node, model)}")
        if kind is not None:
            if not layers:
                raise UnsupportedModel(f"activation {where} before the first conv or linear layer")
            if len(layers) - 1 in activations:
                raise UnsupportedModel(f"two activations in a row at {where}")
            activations[len(layers) - 1] = Activation(
                kind, slope, str(node.target) if node.op == "call_module" else node.name
            )
        current = node
    if not layers or layers[-1].kind != "linear":
        raise UnsupportedModel("the chain must end in a linear layer (the classification head)")
    chained = tuple(
        Layer(
            layer.kind,
            layer.name,
            layer.module,
            layer.input_shape,
            activations.get(i, Activation()),
        )
        for i, layer in enumerate(layers)
    )
    return Chain(chained, input_shape)
