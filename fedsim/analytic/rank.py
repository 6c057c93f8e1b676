"""Numerical rank of a conv layer's stacked constraints ``U = [W; G]`` (COPA eq. 4).

Two paths that must agree (the tests check they do on small layers):

- :func:`dense_rank`, the reference: build ``U`` densely, scale ``W`` and ``G``
  to unit Frobenius norm (rank does not change), take all singular values;
  rank = number of ``σ_i > rtol · σ_1``.
- :func:`structured_rank`, for layers of any size. It uses
  ``rank U = rank W + rank(G restricted to null W)`` and the structure of both:
  ``G = I_{C_in} ⊗ Γ`` so ``row(G) = I ⊗ row(Γ)`` (one small SVD of ``Γ``),
  and ``W Wᵀ`` / ``Wᵀ W`` are banded in spatial-major order (banded Cholesky).
  If ``|Z| ≥ n`` and ``Wᵀ W`` is well conditioned, ``W`` alone has full column
  rank and ``rank U = n``. Otherwise ``W`` has full row rank (``W Wᵀ`` well
  conditioned), ``rank W = |Z|``, and ``rank(G|null W)`` is the number of
  nonzero cosines between ``null(W)`` and ``row(G)``, found from a small
  symmetric eigenproblem of size ``min(C_in·ρ, n − |Z|)`` (``ρ = rank Γ``):
  either ``I − Qᵀ Π_W Q`` with ``Q = I ⊗ Q_Γ`` an orthonormal basis of
  ``row(G)``, or ``Yᵀ (Q Qᵀ) Y`` against ``Yᵀ Y`` with ``Y = (I − Π_W) R`` a
  random basis of ``null(W)``. Cosines below ``angle_tol`` count as zero.
  When ``W`` is rank deficient (e.g. a stride that skips input pixels) it falls
  back to the dense path if that fits in ``max_dense_bytes``.

Both paths estimate the memory they would need from the layer's shapes before
allocating it, and raise :class:`RankError` (one line) instead of running out
of memory when the estimate exceeds :func:`memory_budget`: half the memory
available when the layer's rank is computed (and, for the structured path's
dense fallback, at most ``max_dense_bytes``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import psutil
import scipy.linalg as sla
import torch

from fedsim.analytic.banded import BandedCholesky, largest_eigenvalue, spatial_major
from fedsim.analytic.conv import ConvOperator

RTOL = 1e-10
"""Singular values below ``RTOL × σ_max`` count as zero (dense ``U``, ``Γ``, ``W``)."""
ANGLE_TOL = 1e-6
"""Cosines between ``null(W)`` and ``row(G)`` below this count as zero (structured path;
they come from Gram-matrix eigenvalues, whose rounding floor is about 1e-8)."""
CLEAR_GAP = 1e3
"""A rank is unambiguous when the smallest kept value is this many times the largest dropped."""
MAX_DENSE_BYTES = 2 << 30
"""The structured path's dense fallback uses at most this many bytes."""
MEMORY_FRACTION = 0.5
"""Share of the available memory (``psutil``) one rank computation may plan to use."""


class RankError(RuntimeError):
    """The rank could not be established within the memory budget (message: one line)."""


def memory_budget(limit: int | None = None) -> int:
    """Bytes a rank computation may allocate: :data:`MEMORY_FRACTION` of the memory
    available now, and at most ``limit`` if given."""
    available = int(psutil.virtual_memory().available * MEMORY_FRACTION)
    return available if limit is None else min(available, limit)


def dense_peak_bytes(op: ConvOperator) -> int:
    """Estimated peak of :func:`dense_rank`: the ``n × n`` identity it applies the
    operators to, then ``W`` and ``G``, their scaled copies stacked into ``U``, and
    LAPACK's copy of ``U`` (about three dense ``U``)."""
    n = op.geometry.n_inputs
    return 8 * n * n + 3 * op.dense_bytes()


def eigenproblem_bytes(n: int, d_k: int, d_n: int) -> int:
    """Estimated peak of the structured path's eigenproblem for ``n`` inputs: three
    ``n × d_k`` arrays (row-space side, ``d_k ≤ d_n``), else two ``n × d_n`` bases
    of ``null(W)`` and their ``d_k × d_n`` projection."""
    return 8 * (3 * n * d_k if d_k <= d_n else 2 * n * d_n + d_k * d_n)


def _check_budget(needed: int, budget: int, what: str) -> None:
    """Raise :class:`RankError` (one line) if ``needed`` bytes exceed ``budget``."""
    if needed > budget:
        raise RankError(
            f"{what} would need {needed / 2**30:.1f} GiB, over the memory budget of "
            f"{budget / 2**30:.1f} GiB"
        )


@dataclass(frozen=True)
class RankResult:
    """A numerical rank and the evidence for it.

    Attributes:
        rank: rank of ``U``.
        method: ``dense`` or ``structured``.
        tolerance: the rule used, in words.
        kept: the smallest value counted as nonzero (relative: ``σ/σ_max`` or a cosine).
        dropped: the largest value counted as zero, or ``None`` if none was.
        warning: non-empty when the gap between ``kept`` and ``dropped`` is not clear.
        detail: how the rank was found, in one line.
        seconds: wall time.
        peak_bytes: the largest array this computation held at once (estimate).
    """

    rank: int
    method: Literal["dense", "structured"]
    tolerance: str
    kept: float | None
    dropped: float | None
    warning: str
    detail: str
    seconds: float
    peak_bytes: int

    @property
    def gap(self) -> float | None:
        """``kept / dropped`` (``inf`` when nothing was dropped)."""
        if self.kept is None:
            return None
        return float("inf") if not self.dropped else self.kept / self.dropped


def _count(
    values: np.ndarray, threshold: float, what: str
) -> tuple[int, float | None, float | None, str]:
    """Count ``values`` (non-negative, relative) above ``threshold``; report the gap."""
    values = np.sort(np.abs(values))[::-1]
    rank = int((values > threshold).sum())
    kept = float(values[rank - 1]) if rank else None
    dropped = float(values[rank]) if rank < len(values) else None
    warning = ""
    if kept is not None and dropped and kept / dropped < CLEAR_GAP:
        warning = (
            f"{what}: unclear gap, smallest kept {kept:.1e} vs largest dropped {dropped:.1e} "
            f"(tolerance {threshold:.0e}); the rank may be off"
        )
    elif kept is not None and dropped is None and kept < CLEAR_GAP * threshold:
        warning = (
            f"{what}: smallest kept value {kept:.1e} is close to the tolerance {threshold:.0e}"
        )
    return rank, kept, dropped, warning


def dense_rank(op: ConvOperator, rtol: float = RTOL, budget: int | None = None) -> RankResult:
    """Rank of the explicit dense ``U = [W/‖W‖; G/‖G‖]`` from all its singular values.

    Raises:
        RankError: :func:`dense_peak_bytes` exceeds ``budget`` (default :func:`memory_budget`).
    """
    _check_budget(
        dense_peak_bytes(op),
        memory_budget() if budget is None else budget,
        f"the dense path for this {op.geometry.describe()} layer",
    )
    began = time.perf_counter()
    w, g = op.dense()
    u = np.vstack([w / np.linalg.norm(w), g / max(np.linalg.norm(g), 1e-300)])
    sigma = np.linalg.svd(u, compute_uv=False)
    rank, kept, dropped, warning = _count(sigma / sigma[0], rtol, "singular values of U")
    return RankResult(
        rank=rank, method="dense", tolerance=f"σ_i > {rtol:.0e}·σ_max of U (blocks at unit norm)",
        kept=kept, dropped=dropped, warning=warning,
        detail=f"SVD of the dense {u.shape[0]}×{u.shape[1]} U",
        seconds=time.perf_counter() - began, peak_bytes=3 * u.nbytes,
    )  # fmt: skip


def _well_conditioned(chol: BandedCholesky, gram, rtol: float) -> float | None:
    """``σ_min/σ_max`` of the factor's ``W`` (from its Gram matrix), or ``None`` if
    below ``rtol`` (numerically rank deficient)."""
    ratio = np.sqrt(max(chol.smallest_eigenvalue(), 0.0) / largest_eigenvalue(gram))
    return float(ratio) if ratio > rtol else None


def structured_rank(
    op: ConvOperator,
    rtol: float = RTOL,
    angle_tol: float = ANGLE_TOL,
    max_dense_bytes: int = MAX_DENSE_BYTES,
    seed: int = 0,
) -> RankResult:
    """Rank of ``U`` without forming it; see the module docstring for the method.

    Raises:
        RankError: ``W`` is rank deficient and the dense path exceeds ``max_dense_bytes``
            or the memory budget, or the eigenproblem exceeds the memory budget.
    """
    began = time.perf_counter()
    geo = op.geometry
    n, nz = geo.n_inputs, geo.n_outputs
    w = op.weight_matrix()
    gamma = op.gamma()
    _, s_gamma, vt_gamma = np.linalg.svd(gamma, full_matrices=False)
    rho, _, _, g_warn = _count(s_gamma / max(s_gamma[0], 1e-300), rtol, "Γ")
    tolerance = (
        f"σ > {rtol:.0e}·σ_max for Γ and W; cosines > {angle_tol:.0e} between null(W) and row(G)"
    )
    try:
        if nz >= n:
            perm = spatial_major(*geo.input_shape)
            columns = w[:, perm].tocsc()
            gram = (columns.T @ columns).tocsr()
            chol = BandedCholesky(gram)
            ratio = _well_conditioned(chol, gram, rtol)
            if ratio is None:
                raise np.linalg.LinAlgError("W is rank deficient")
            return RankResult(
                rank=n, method="structured", tolerance=tolerance, kept=ratio, dropped=None,
                warning=g_warn,
                detail=f"W alone has full column rank {n} (σ_min/σ_max = {ratio:.1e}, banded "
                f"Cholesky of WᵀW, bandwidth {chol.bandwidth})",
                seconds=time.perf_counter() - began, peak_bytes=chol.nbytes,
            )  # fmt: skip
        perm = spatial_major(*geo.output_shape)
        rows = w[perm]
        gram = (rows @ rows.T).tocsr()
        chol = BandedCholesky(gram)
        ratio = _well_conditioned(chol, gram, rtol)
        if ratio is None:
            raise np.linalg.LinAlgError("W is rank deficient")
    except np.linalg.LinAlgError:
        budget = memory_budget(max_dense_bytes)
        what = f"the weight operator of this {geo.describe()} layer is rank deficient and the "
        _check_budget(dense_peak_bytes(op), budget, what + "dense path")
        dense = dense_rank(op, rtol, budget)
        return RankResult(
            **{**dense.__dict__, "detail": dense.detail + " (W is rank deficient: dense fallback)"}
        )
    q_gamma = vt_gamma[:rho].T  # (H·W, ρ) orthonormal basis of row(Γ)
    d_k, d_n = geo.in_channels * rho, n - nz
    _check_budget(
        eigenproblem_bytes(n, d_k, d_n),
        memory_budget(),
        f"the eigenproblem of size {min(d_k, d_n)} for this {geo.describe()} layer",
    )
    if d_k <= d_n:
        cosines, peak = _cosines_from_row_space(op, chol, perm, q_gamma)
        how = f"eigenproblem of size C_in·ρ = {d_k}"
    else:
        cosines, peak = _cosines_from_null_space(op, chol, perm, q_gamma, d_n, seed)
        how = f"eigenproblem of size n − |Z| = {d_n}"
    extra, kept, dropped, warning = _count(cosines, angle_tol, "cosines between null(W) and row(G)")
    return RankResult(
        rank=nz + extra, method="structured", tolerance=tolerance, kept=kept, dropped=dropped,
        warning="; ".join(x for x in (g_warn, warning) if x),
        detail=f"rank W = |Z| = {nz} (σ_min/σ_max = {ratio:.1e}, banded Cholesky of WWᵀ, bandwidth "
        f"{chol.bandwidth}); rank Γ = {rho}; {extra} of {min(d_k, d_n)} cosines between "
        f"null(W) and row(G) nonzero ({how})",
        seconds=time.perf_counter() - began,
        peak_bytes=peak + chol.nbytes,
    )  # fmt: skip


def _per_channel(q_gamma: np.ndarray, channels: int) -> torch.Tensor:
    """``I_C ⊗ Q_Γ`` as a batch of ``C·ρ`` input images ``(C·ρ, C, H·W)``."""
    hw, rho = q_gamma.shape
    basis = torch.zeros(channels, rho, channels, hw, dtype=torch.float64)
    for c in range(channels):
        basis[c, :, c] = torch.from_numpy(q_gamma.T)
    return basis.reshape(channels * rho, channels * hw)


def _null_projection(
    op: ConvOperator, chol: BandedCholesky, perm: np.ndarray, vectors: torch.Tensor
) -> np.ndarray:
    """``(I − Π_W) v`` for a batch ``(k, n)``, with ``Π_W = Wᵀ (W Wᵀ)⁻¹ W``; returns ``(n, k)``."""
    z = op.weight_apply(vectors).numpy().T[perm]
    solved = np.empty_like(z)
    solved[perm] = chol.solve(z)
    return (vectors - op.weight_adjoint(torch.from_numpy(solved.T))).numpy().T


def _cosines(matrix: np.ndarray) -> np.ndarray:
    """Singular values of ``matrix`` from the eigenvalues of its smaller Gram matrix."""
    gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
    return np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None))


def _cosines_from_row_space(
    op: ConvOperator, chol: BandedCholesky, perm: np.ndarray, q_gamma: np.ndarray
) -> tuple[np.ndarray, int]:
    """Cosines between ``row(G)`` and ``null(W)``: singular values of ``(I − Π_W) Q``
    with ``Q = I ⊗ Q_Γ`` an orthonormal basis of ``row(G)``."""
    projected = _null_projection(op, chol, perm, _per_channel(q_gamma, op.geometry.in_channels))
    return _cosines(projected), 3 * projected.nbytes


def _cosines_from_null_space(
    op: ConvOperator,
    chol: BandedCholesky,
    perm: np.ndarray,
    q_gamma: np.ndarray,
    dim: int,
    seed: int,
    chunk: int = 512,
) -> tuple[np.ndarray, int]:
    """Cosines between ``null(W)`` and ``row(G)``: singular values of ``Qᵀ B`` with
    ``B`` an orthonormal basis of ``null(W)`` (``(I − Π_W) R`` for a random ``R``,
    orthonormalised by one Cholesky-QR step)."""
    geo = op.geometry
    generator = torch.Generator().manual_seed(seed)
    basis = np.empty((geo.n_inputs, dim))
    for start in range(0, dim, chunk):
        r = torch.randn(
            min(chunk, dim - start), geo.n_inputs, generator=generator, dtype=torch.float64
        )
        basis[:, start : start + len(r)] = _null_projection(op, chol, perm, r)
    factor = np.linalg.cholesky(basis.T @ basis)  # Bᵀ B = C Cᵀ, C lower
    basis = sla.solve_triangular(factor, basis.T, lower=True, overwrite_b=True).T
    hw = geo.height * geo.width
    projected = np.vstack(
        [q_gamma.T @ basis[c * hw : (c + 1) * hw] for c in range(geo.in_channels)]
    )
    return _cosines(projected), 2 * basis.nbytes + projected.nbytes
