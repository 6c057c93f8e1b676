"""The right singular vectors of a layer's weight map: what the weights alone reveal.

For a layer ``z = M x + b`` the right singular vectors of ``M`` are the input
patterns it responds to most strongly. Racecar training drives them towards
the dominant structures of the training data (Xie & Thuerey), so for the first
layer they are candidate images read off the parameters, with no gradient.
A linear layer's ``M`` is its weight matrix (exact SVD); a conv layer's is the
convolution as a map of the whole input, handled matrix-free (Lanczos on
``MᵀM`` with :meth:`Layer.weight_map` and :meth:`Layer.adjoint`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from fedsim.analytic.chain import Layer


def top_right_singular_vectors(
    layer: Layer, k: int, seed: int = 0
) -> tuple[np.ndarray, torch.Tensor]:
    """The ``k`` largest singular values of the layer's weight map and their right singular vectors.

    Returns:
        ``(k,)`` singular values in decreasing order, and ``(k, *layer.input_shape)``
        float32 unit vectors (each defined up to sign). ``k`` is capped at the
        input's dimension. Conv layers are computed in float32 (the weights'
        precision) with a float64 Lanczos iteration seeded by ``seed``.
    """
    n = math.prod(layer.input_shape)
    k = min(k, n)
    weight = layer.module.weight.detach()
    dtype = weight.dtype
    if layer.kind == "linear":
        _, values, vh = torch.linalg.svd(weight.double(), full_matrices=True)
        padded = torch.zeros(n, dtype=torch.float64)
        padded[: len(values)] = values
        return padded[:k].numpy(), vh[:k].float().reshape(k, *layer.input_shape)
    shape = (1, *layer.input_shape)

    def gram(v: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(v, dtype=np.float32)).reshape(shape)
        with torch.no_grad():
            out = layer.adjoint(layer.weight_map(x.to(dtype)))
        return out.reshape(-1).double().numpy()

    operator = LinearOperator((n, n), matvec=gram, dtype=np.float64)
    start = np.random.default_rng(seed).standard_normal(n)
    if k >= n - 1:
        dense = operator @ np.eye(n)
        eigenvalues, eigenvectors = np.linalg.eigh(dense)
    else:
        eigenvalues, eigenvectors = eigsh(operator, k=k, which="LA", v0=start)
    order = np.argsort(eigenvalues)[::-1][:k]
    values = np.sqrt(np.clip(eigenvalues[order], 0.0, None))
    vectors = torch.from_numpy(eigenvectors[:, order].T.copy()).float()
    return values, vectors.reshape(k, *layer.input_shape)
