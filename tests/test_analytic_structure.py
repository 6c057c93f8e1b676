"""Conv constraint operators and the rank of U = [W; G]: sparse = dense = matrix-free,
structured ranks = dense ranks, and the C_out² known dependencies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.analytic.conv import ConvGeometry, ConvOperator
from fedsim.analytic.rank import dense_rank, structured_rank
from fedsim.audit.cm import audit_model, count_rank
from fedsim.models.zoo import build_model

GEOMETRIES = [
    ConvGeometry(3, 9, 8, 4, (3, 3)),
    ConvGeometry(2, 10, 10, 3, (4, 4), (2, 2), (1, 1)),
    ConvGeometry(3, 8, 8, 2, (2, 3), (1, 2), (1, 0)),
]


def operator(geometry: ConvGeometry, seed: int = 0) -> ConvOperator:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.rand(geometry.weight_shape, generator=generator) * 2 - 1
    return ConvOperator(geometry, weight, torch.randn(geometry.output_shape, generator=generator))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: g.describe())
def test_sparse_dense_and_matrix_free_operators_agree(geometry: ConvGeometry) -> None:
    op = operator(geometry)
    w_dense, g_dense = op.dense()
    x = torch.randn(geometry.n_inputs, dtype=torch.float64)

    assert np.array_equal(op.weight_matrix().toarray(), w_dense)
    assert np.array_equal(op.gradient_matrix().toarray(), g_dense)
    assert np.allclose(
        op.weight_adjoint(torch.from_numpy(w_dense @ x.numpy())[None])[0],
        w_dense.T @ w_dense @ x.numpy(),
    )
    assert np.allclose(op.gradient_adjoint(op.gradient_apply(x)), g_dense.T @ g_dense @ x.numpy())
    # G = I_{C_in} ⊗ Γ: the block of input channel 1 is Γ
    kk = geometry.kernel[0] * geometry.kernel[1]
    rows = [
        (c * geometry.in_channels + 1) * kk + t
        for c in range(geometry.out_channels)
        for t in range(kk)
    ]
    hw = geometry.height * geometry.width
    assert np.array_equal(g_dense[rows][:, hw : 2 * hw], op.gamma())


def test_weight_and_gradient_rows_obey_the_cout_squared_dependencies() -> None:
    geometry = GEOMETRIES[0]
    op = operator(geometry)
    w, g = op.weight_matrix().toarray(), op.gradient_matrix().toarray()
    grad_z = op.g.numpy().reshape(geometry.out_channels, -1)
    weights = op.w.numpy().reshape(geometry.out_channels, -1)
    per_channel_rows = w.reshape(geometry.out_channels, -1, geometry.n_inputs)
    per_channel_grads = g.reshape(geometry.out_channels, -1, geometry.n_inputs)
    for c in range(geometry.out_channels):
        for c2 in range(geometry.out_channels):
            left = grad_z[c] @ per_channel_rows[c2]
            right = weights[c2] @ per_channel_grads[c]
            assert np.allclose(left, right)


SMALL = [
    ConvGeometry(4, 12, 12, 2, (3, 3)),  # |Z| < n: cosines from row(G)
    ConvGeometry(2, 12, 12, 3, (4, 4), (2, 2)),
    ConvGeometry(3, 10, 10, 6, (3, 3), (2, 2), (1, 1)),
    ConvGeometry(6, 10, 10, 3, (4, 4), (2, 2)),
    ConvGeometry(3, 9, 9, 2, (2, 2), (2, 2)),
    ConvGeometry(1, 12, 12, 5, (3, 3)),  # |Z| ≥ n: W alone has full column rank
    ConvGeometry(3, 12, 12, 4, (3, 3)),  # W rank deficient: dense fallback
    ConvGeometry(4, 14, 14, 3, (3, 3)),  # C_in·ρ > n − |Z|: cosines from null(W)
]


@pytest.mark.parametrize("geometry", SMALL, ids=lambda g: g.describe())
def test_structured_rank_equals_dense_rank(geometry: ConvGeometry) -> None:
    op = operator(geometry, seed=3)
    dense, structured = dense_rank(op), structured_rank(op)

    assert structured.rank == dense.rank
    assert dense.warning == "" and structured.warning == ""
    assert structured.rank <= count_rank(geometry)


@pytest.mark.parametrize(
    ("layers", "activation"),
    [([(3, 4, 1), (3, 2, 2)], "tanh"), ([(2, 3, 2), (3, 5, 1)], "sigmoid"),
     ([(3, 2, 1), (2, 4, 1), (3, 2, 1)], "leaky_relu")],
)  # fmt: skip
def test_audit_paths_agree_on_small_models(layers: list, activation: str) -> None:
    model = build_model(
        "convnet", input_shape=(3, 12, 12), num_classes=3, layers=layers, activation=activation
    )
    sample = (
        torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(0)),
        torch.tensor([1]),
    )
    dense = audit_model(model, (3, 12, 12), sample, "noise", "dense")
    structured = audit_model(model, (3, 12, 12), sample, "noise", "structured")

    assert [a.rank for a in structured.layers] == [a.rank for a in dense.layers]
    assert structured.c_m == dense.c_m
