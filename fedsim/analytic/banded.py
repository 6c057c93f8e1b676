"""Banded symmetric positive-definite matrices: block Cholesky and block solves.

A convolution couples an output only to outputs whose receptive fields
overlap, so ``W Wᵀ`` and ``Wᵀ W`` are banded once indices run spatial-major
(row, column, channel) instead of channel-major; the bandwidth is about
``kernel height × row length × channels``. Cut into blocks at least as wide
as the band, such a matrix is block tridiagonal, and its Cholesky factor is
block bidiagonal: every step is a dense BLAS-3 operation on one block.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, eigsh

MIN_BLOCK = 256


def spatial_major(channels: int, height: int, width: int) -> np.ndarray:
    """Permutation ``perm`` with ``new[k] = old[perm[k]]`` that reorders a flat
    channel-major ``(C, H, W)`` vector into spatial-major ``(H, W, C)`` order."""
    order = np.arange(channels * height * width).reshape(channels, height, width)
    return order.transpose(1, 2, 0).ravel()


class BandedCholesky:
    """``S = L Lᵀ`` for a symmetric positive-definite sparse ``S`` with a narrow band.

    ``L`` is kept as dense diagonal blocks ``L_ii`` (lower triangular) and
    sub-diagonal blocks ``L_{i+1,i}``; memory ``≈ 2 × size × block × 8`` bytes.

    Raises:
        numpy.linalg.LinAlgError: if ``S`` is not numerically positive definite.
    """

    def __init__(self, matrix: sp.spmatrix) -> None:
        matrix = sp.csr_matrix(matrix)
        self.size = matrix.shape[0]
        upper = sp.triu(matrix).tocoo()
        self.bandwidth = int((upper.col - upper.row).max()) if upper.nnz else 0
        block = max(self.bandwidth, MIN_BLOCK)
        self.edges = [(s, min(s + block, self.size)) for s in range(0, self.size, block)]
        self.diag: list[np.ndarray] = []
        self.sub: list[np.ndarray] = []  # sub[i] = L_{i+1,i}
        carry = None
        for k, (r0, r1) in enumerate(self.edges):
            d = matrix[r0:r1, r0:r1].toarray()
            if carry is not None:
                d -= carry @ carry.T
            factor = np.linalg.cholesky(d)
            self.diag.append(factor)
            if k + 1 < len(self.edges):
                n0, n1 = self.edges[k + 1]
                below = matrix[n0:n1, r0:r1].toarray()
                carry = sla.solve_triangular(factor, below.T, lower=True).T
                self.sub.append(carry)
        self.nbytes = sum(b.nbytes for b in self.diag + self.sub)

    def solve_lower(self, rhs: np.ndarray) -> np.ndarray:
        """``L⁻¹ rhs`` for ``rhs`` of shape ``(size, k)`` (a copy)."""
        out = np.array(rhs, dtype=np.float64, copy=True).reshape(self.size, -1)
        for k, (r0, r1) in enumerate(self.edges):
            if k:
                p0, p1 = self.edges[k - 1]
                out[r0:r1] -= self.sub[k - 1] @ out[p0:p1]
            out[r0:r1] = sla.solve_triangular(self.diag[k], out[r0:r1], lower=True)
        return out

    def solve_upper(self, rhs: np.ndarray) -> np.ndarray:
        """``L⁻ᵀ rhs`` for ``rhs`` of shape ``(size, k)`` (a copy)."""
        out = np.array(rhs, dtype=np.float64, copy=True).reshape(self.size, -1)
        for k in range(len(self.edges) - 1, -1, -1):
            r0, r1 = self.edges[k]
            if k + 1 < len(self.edges):
                n0, n1 = self.edges[k + 1]
                out[r0:r1] -= self.sub[k].T @ out[n0:n1]
            out[r0:r1] = sla.solve_triangular(self.diag[k], out[r0:r1], lower=True, trans="T")
        return out

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """``S⁻¹ rhs``, same shape as ``rhs``."""
        return self.solve_upper(self.solve_lower(rhs)).reshape(np.shape(rhs))

    def smallest_eigenvalue(self, seed: int = 0) -> float:
        """``λ_min(S)`` to about two digits (Lanczos on ``S⁻¹``)."""
        if self.size <= 3:
            dense = self.solve(np.eye(self.size))
            return float(1.0 / np.linalg.eigvalsh(dense).max())
        operator = LinearOperator((self.size, self.size), matvec=self.solve, dtype=np.float64)
        start = np.random.default_rng(seed).standard_normal(self.size)
        top = eigsh(operator, k=1, which="LA", tol=1e-2, v0=start, return_eigenvectors=False)
        return float(1.0 / top[0])


def largest_eigenvalue(matrix: sp.spmatrix, seed: int = 0) -> float:
    """``λ_max`` of a symmetric sparse matrix to about two digits."""
    if matrix.shape[0] <= 3:
        return float(np.linalg.eigvalsh(matrix.toarray()).max())
    start = np.random.default_rng(seed).standard_normal(matrix.shape[0])
    return float(eigsh(matrix, k=1, which="LA", tol=1e-2, v0=start, return_eigenvectors=False)[0])
