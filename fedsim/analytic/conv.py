"""A convolution layer's two linear constraints on its input, in three forms.

For a ``Conv2d`` with weight ``w`` of shape ``(C_out, C_in, kh, kw)``, stride
``(sh, sw)`` and zero padding ``(ph, pw)``, acting on an input ``x`` of shape
``(C_in, H, W)`` (flattened in PyTorch's channel-major order, ``n = C_in·H·W``):

- the *weight constraint* ``W x = z``: ``W`` is ``|Z| × n`` with
  ``|Z| = C_out·H'·W'``, the convolution itself (the pre-activation output
  without bias);
- the *gradient constraint* ``G x = dJ/dw``: given the output gradient
  ``g = dJ/dZ`` of shape ``(C_out, H', W')``, ``G`` is ``|w| × n``, row
  ``(c, c'', u, v)`` being ``Σ_p g_c(p) e_{c''}(s·p + (u, v) − pad)``.

``G`` is block-diagonal over input channels with identical blocks:
``G = I_{C_in} ⊗ Γ`` up to a row permutation, with ``Γ`` of size
``(C_out·kh·kw) × (H·W)`` (:meth:`ConvOperator.gamma`).

Each operator exists matrix-free (PyTorch convolutions), as a
``scipy.sparse`` matrix built by index arithmetic, and densely from the
matrix-free form (the reference path, small layers only).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input, conv2d_weight


@dataclass(frozen=True)
class ConvGeometry:
    """Shapes of one convolution: input ``(in_channels, height, width)``, the kernel,
    stride and zero padding (each ``(rows, cols)``)."""

    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    @classmethod
    def of(cls, conv: nn.Conv2d, input_shape: tuple[int, int, int]) -> ConvGeometry:
        """Geometry of ``conv`` applied to one input of shape ``(C, H, W)``."""
        c, h, w = input_shape
        return cls(
            c, h, w, conv.out_channels, tuple(conv.kernel_size),  # type: ignore[arg-type]
            tuple(conv.stride), tuple(conv.padding),  # type: ignore[arg-type]
        )  # fmt: skip

    @property
    def out_height(self) -> int:
        return (self.height + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1

    @property
    def out_width(self) -> int:
        return (self.width + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.height, self.width)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self.out_channels, self.out_height, self.out_width)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, *self.kernel)

    @property
    def n_inputs(self) -> int:
        """n: elements of one input."""
        return self.in_channels * self.height * self.width

    @property
    def n_outputs(self) -> int:
        """|Z|: elements of one pre-activation output."""
        return self.out_channels * self.out_height * self.out_width

    @property
    def n_weights(self) -> int:
        """|W|: elements of the weight (no bias)."""
        return self.out_channels * self.in_channels * self.kernel[0] * self.kernel[1]

    def describe(self) -> str:
        """``"k3 s1 p0, 3→6 ch"``-style summary."""
        k = (
            self.kernel[0]
            if self.kernel[0] == self.kernel[1]
            else f"{self.kernel[0]}×{self.kernel[1]}"
        )
        s = (
            self.stride[0]
            if self.stride[0] == self.stride[1]
            else f"{self.stride[0]}×{self.stride[1]}"
        )
        p = (
            self.padding[0]
            if self.padding[0] == self.padding[1]
            else f"{self.padding[0]}×{self.padding[1]}"
        )
        return f"k{k} s{s} p{p}, {self.in_channels}→{self.out_channels} ch"


@dataclass(frozen=True)
class Taps:
    """Every (output position, kernel tap) pair that reads a real (unpadded) input pixel.

    Arrays of equal length: ``out`` the flat output index ``(c, i, j)``, ``weight``
    the flat weight index ``(c, c'', u, v)``, ``inp`` the flat input index
    ``(c'', s·i + u − p, s·j + v − p)``, ``pos`` the flat spatial output index
    ``(i, j)`` and ``channel`` the output channel ``c``.
    """

    out: np.ndarray
    weight: np.ndarray
    inp: np.ndarray
    pos: np.ndarray
    channel: np.ndarray


def taps(geometry: ConvGeometry) -> Taps:
    """Enumerate the convolution's taps by index arithmetic (no matrices)."""
    g = geometry
    kh, kw = g.kernel
    c, ci, u, v, i, j = np.meshgrid(
        np.arange(g.out_channels), np.arange(g.in_channels), np.arange(kh), np.arange(kw),
        np.arange(g.out_height), np.arange(g.out_width), indexing="ij", sparse=True,
    )  # fmt: skip
    row = g.stride[0] * i + u - g.padding[0]
    col = g.stride[1] * j + v - g.padding[1]
    shape = (g.out_channels, g.in_channels, kh, kw, g.out_height, g.out_width)
    inside = np.broadcast_to((row >= 0) & (row < g.height) & (col >= 0) & (col < g.width), shape)

    def flat(value: np.ndarray) -> np.ndarray:
        return np.broadcast_to(value, shape)[inside].astype(np.int64)

    pos = flat(i * g.out_width + j)
    channel = flat(c)
    return Taps(
        out=channel * (g.out_height * g.out_width) + pos,
        weight=flat(((c * g.in_channels + ci) * kh + u) * kw + v),
        inp=flat((ci * g.height + row) * g.width + col),
        pos=pos,
        channel=channel,
    )


class ConvOperator:
    """The weight and gradient constraints of one conv layer on its flattened input.

    Args:
        geometry: the layer's shapes.
        weight: ``(C_out, C_in, kh, kw)``.
        grad_z: ``dJ/dZ`` of shape ``(C_out, H', W')``; needed only for ``G``.

    Matrix-free methods take and return tensors in float64 on the CPU; the
    flattened order is PyTorch's (channel, row, column) everywhere.
    """

    def __init__(
        self, geometry: ConvGeometry, weight: torch.Tensor, grad_z: torch.Tensor | None = None
    ) -> None:
        if tuple(weight.shape) != geometry.weight_shape:
            raise ValueError(f"weight {tuple(weight.shape)} ≠ {geometry.weight_shape}")
        if grad_z is not None and tuple(grad_z.shape) != geometry.output_shape:
            raise ValueError(f"dJ/dZ {tuple(grad_z.shape)} ≠ {geometry.output_shape}")
        self.geometry = geometry
        self.w = weight.detach().double().cpu()
        self.g = None if grad_z is None else grad_z.detach().double().cpu()

    # -- matrix-free -------------------------------------------------------------
    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        g = self.geometry
        return F.conv2d(x, weight, stride=g.stride, padding=g.padding)

    def weight_apply(self, x: torch.Tensor) -> torch.Tensor:
        """``W x`` for a batch ``(B, n)`` → ``(B, |Z|)``."""
        g = self.geometry
        return self._conv(x.reshape(-1, *g.input_shape), self.w).flatten(1)

    def weight_adjoint(self, z: torch.Tensor) -> torch.Tensor:
        """``Wᵀ z`` for a batch ``(B, |Z|)`` → ``(B, n)``."""
        g = self.geometry
        z = z.reshape(-1, *g.output_shape)
        shape = (len(z), *g.input_shape)
        return conv2d_input(shape, self.w, z, stride=g.stride, padding=g.padding).flatten(1)

    def _grad(self) -> torch.Tensor:
        if self.g is None:
            raise ValueError("this ConvOperator has no dJ/dZ: the gradient constraint is unknown")
        return self.g[None]

    def gradient_apply(self, x: torch.Tensor) -> torch.Tensor:
        """``G x`` for one input ``(n,)`` → ``(|W|,)``: the weight gradient it would cause."""
        g = self.geometry
        out = conv2d_weight(
            x.reshape(1, *g.input_shape), g.weight_shape, self._grad(),
            stride=g.stride, padding=g.padding,
        )  # fmt: skip
        return out.flatten()

    def gradient_adjoint(self, d: torch.Tensor) -> torch.Tensor:
        """``Gᵀ d`` for ``d`` of ``|W|`` elements → ``(n,)``."""
        g = self.geometry
        kernel = d.reshape(g.weight_shape)
        out = conv2d_input(
            (1, *g.input_shape), kernel, self._grad(), stride=g.stride, padding=g.padding
        )
        return out.flatten()

    # -- sparse, by index arithmetic ----------------------------------------------
    @cached_property
    def _taps(self) -> Taps:
        return taps(self.geometry)

    def weight_matrix(self) -> sp.csr_matrix:
        """``W`` as a sparse ``|Z| × n`` matrix."""
        t, g = self._taps, self.geometry
        values = self.w.numpy().ravel()[t.weight]
        return sp.csr_matrix((values, (t.out, t.inp)), shape=(g.n_outputs, g.n_inputs))

    def gradient_matrix(self) -> sp.csr_matrix:
        """``G`` as a sparse ``|W| × n`` matrix (rows in the weight's flat order)."""
        t, g = self._taps, self.geometry
        values = self._grad().numpy().ravel()[t.out]
        return sp.csr_matrix((values, (t.weight, t.inp)), shape=(g.n_weights, g.n_inputs))

    def gamma(self) -> np.ndarray:
        """``Γ``, the identical per-input-channel block of ``G``: dense
        ``(C_out·kh·kw) × (H·W)``, rows ``(c, u, v)``."""
        t, g = self._taps, self.geometry
        kk = g.kernel[0] * g.kernel[1]
        first = t.inp < g.height * g.width  # taps reading input channel 0
        rows = (t.weight[first] // (g.in_channels * kk)) * kk + t.weight[first] % kk
        out = np.zeros((g.out_channels * kk, g.height * g.width))
        out[rows, t.inp[first]] = self._grad().numpy().ravel()[t.out[first]]
        return out

    # -- dense reference ---------------------------------------------------------
    def dense(self) -> tuple[np.ndarray, np.ndarray]:
        """``(W, G)`` as dense arrays, built column by column from the matrix-free
        operators (independent of the index arithmetic; small layers only)."""
        n = self.geometry.n_inputs
        eye = torch.eye(n, dtype=torch.float64)
        w_dense = self.weight_apply(eye).T.numpy()
        g_dense = torch.stack([self.gradient_apply(eye[k]) for k in range(n)], dim=1).numpy()
        return w_dense, g_dense

    def dense_bytes(self) -> int:
        """Bytes of a dense float64 ``U = [W; G]``."""
        g = self.geometry
        return 8 * (g.n_outputs + g.n_weights) * g.n_inputs
