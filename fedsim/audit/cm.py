"""c(M) (COPA, Definition 2.1) and the per-layer numbers behind it.

For ``d`` conv layers (``i = 1..d`` from the input) followed by linear layers::

    c(M) = Σ_i (d − (i − 1)) / d · (rank(U_i) − n_i)

``U_i = [W_i; G_i]`` with ``G_i`` built from the true ``dJ/dZ_i`` of one
forward/backward pass (cross-entropy, as the clients train) on a real sample.
Ranks are computed numerically (:mod:`fedsim.analytic.rank`); the count
``min(n, |Z| + min(|W|, C_in·H·W) − C_out²)`` — every weight and gradient row,
less the ``C_out²`` known dependencies ``Σ_p g_c(p) W_row(c', p) = Σ w_{c'} G_row(c)``
— is kept beside it as a cross-check and for the advice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fedsim.analytic.chain import Chain, extract_chain
from fedsim.analytic.conv import ConvGeometry, ConvOperator
from fedsim.analytic.rank import ANGLE_TOL, RTOL, RankResult, dense_rank, structured_rank

Method = Literal["structured", "dense"]


@dataclass(frozen=True)
class LayerAudit:
    """One conv layer's line of the audit."""

    index: int
    name: str
    conv: str
    activation: str
    n: int
    z: int
    w: int
    rank: int
    count: int
    deficit: int
    weight: float
    contribution: float
    method: str
    kept: float | None
    dropped: float | None
    warning: str
    detail: str
    seconds: float
    peak_bytes: int
    dense_bytes: int


class AuditReport(BaseModel):
    """The audit of one model: its description, the input shape (C, H, W), the sample
    the gradients were computed on, c(M), its layers, the rank tolerance, plain-language
    advice, notes, the seconds it took and each layer's warning (``layer <i> (<name>):
    <warning>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str
    input_shape: tuple[int, int, int]
    sample: str
    c_m: float
    layers: list[LayerAudit]
    tolerance: str
    advice: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    warnings: list[str] = Field(default_factory=list)


class ScenarioAudit(AuditReport):
    """The audit of one model and the sweep point(s) whose model it is (``point``: the
    point's ``model.*`` values, ``-`` when every point has this model); the one
    definition of an audit in ``audit.json`` and ``results.json``."""

    point: str


def count_rank(geometry: ConvGeometry) -> int:
    """The rank the known row dependencies allow: ``min(n, |Z| + rank-bound(G) − C_out²)``."""
    g = geometry
    gradient_rows = min(g.n_weights, g.in_channels * g.height * g.width)
    return min(g.n_inputs, g.n_outputs + gradient_rows - g.out_channels**2)


def output_gradients(
    chain: Chain, model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> list[torch.Tensor]:
    """``dJ/dZ`` of every conv layer (pre-activation output) for one batch, cross-entropy loss."""
    outputs: list[torch.Tensor] = []
    hooks = [
        layer.module.register_forward_hook(lambda _m, _a, out: outputs.append(out))
        for layer in chain.convs
    ]
    try:
        loss = F.cross_entropy(model(x), y)
    finally:
        for hook in hooks:
            hook.remove()
    return list(torch.autograd.grad(loss, outputs)) if outputs else []


def audit_model(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    sample: tuple[torch.Tensor, torch.Tensor],
    sample_description: str,
    method: Method = "structured",
    model_description: str = "",
) -> AuditReport:
    """Audit ``model`` on one sample ``(x (1, C, H, W), y (1,))``.

    Raises:
        fedsim.analytic.chain.UnsupportedModel: the model is not a chain of convs and linear layers.
        fedsim.analytic.rank.RankError: a rank could not be established in memory.
    """
    began = time.perf_counter()
    model = model.double().eval()
    chain = extract_chain(model, input_shape)
    grads = output_gradients(chain, model, sample[0].double(), sample[1])
    d = len(chain.convs)
    layers = []
    for i, (layer, grad_z) in enumerate(zip(chain.convs, grads, strict=True), start=1):
        geometry = layer.geometry()
        op = ConvOperator(geometry, layer.module.weight.detach(), grad_z[0])
        result: RankResult = structured_rank(op) if method == "structured" else dense_rank(op)
        weight = (d - (i - 1)) / d
        layers.append(
            LayerAudit(
                index=i,
                name=layer.name,
                conv=geometry.describe(),
                activation=layer.activation.kind,
                n=geometry.n_inputs,
                z=geometry.n_outputs,
                w=geometry.n_weights,
                rank=result.rank,
                count=count_rank(geometry),
                deficit=result.rank - geometry.n_inputs,
                weight=weight,
                contribution=weight * (result.rank - geometry.n_inputs),
                method=result.method,
                kept=result.kept,
                dropped=result.dropped,
                warning=result.warning,
                detail=result.detail,
                seconds=result.seconds,
                peak_bytes=result.peak_bytes,
                dense_bytes=op.dense_bytes(),
            )
        )
    tolerance = (
        f"dense: σ_i > {RTOL:.0e}·σ_max of U (W and G scaled to unit norm); structured: σ > "
        f"{RTOL:.0e}·σ_max for Γ and W, cosines > {ANGLE_TOL:.0e} between null(W) and row(G)"
    )
    notes = [
        f"activation {a.kind} after '{layer.name}' is not invertible: the weight constraint only "
        "holds where it is active, so c(M) overstates what R-GAP/COPA can use"
        for layer in chain.layers[:-1]
        if not (a := layer.activation).invertible
    ]
    report = AuditReport(
        model=model_description or type(model).__name__, input_shape=input_shape,
        sample=sample_description, c_m=sum(a.contribution for a in layers), layers=layers,
        tolerance=tolerance, notes=notes, seconds=time.perf_counter() - began,
        warnings=[f"layer {a.index} ({a.name}): {a.warning}" for a in layers if a.warning],
    )  # fmt: skip
    return report.model_copy(update={"advice": advice(report)})


def advice(report: AuditReport) -> list[str]:
    """Plain-language reading of the audit, after COPA's recommendations."""
    layers = report.layers
    if not layers:
        return [
            "No conv layers: every fully-connected layer's input follows in closed form from its "
            "gradient (COPA Lemma A.1), so one gradient reveals the input exactly."
        ]
    lines = []
    if report.c_m == 0:
        lines.append(
            "c(M) = 0: every conv layer's input is pinned down by its weight and gradient "
            "constraints, so R-GAP/COPA can recover a single training image exactly from its "
            "gradient."
        )
    else:
        worst = min(layers, key=lambda a: a.contribution)
        lines.append(
            f"c(M) = {report.c_m:.1f}: layer {worst.index} ('{worst.name}', {worst.conv}) loses "
            f"the most — rank(U) = {worst.rank} of n = {worst.n} inputs ({-worst.deficit} "
            f"directions the constraints cannot see), weighted {worst.weight:.2f} → "
            f"{worst.contribution:.1f}."
        )
    for a in layers:
        if a.deficit == 0:
            lines.append(
                f"Layer {a.index} ({a.conv}): its input is fully determined ({a.z} outputs + {a.w} "
                f"weights ≥ {a.n} inputs). Fewer output channels or a larger stride here would "
                "make it underdetermined and lower leakage"
                + (
                    " — most effective at the first layer, which weighs most."
                    if a.index == 1
                    else "."
                )
            )
        else:
            lines.append(
                f"Layer {a.index} ({a.conv}): underdetermined by {-a.deficit}; more output "
                "channels or a smaller stride would raise rank(U) and leak more, fewer channels or "
                "a larger stride would leak less."
            )
    lines.append(
        "COPA's recommendation: networks whose early conv layers widen the feature space "
        "(many channels, stride 1) and shrink it only near the top are the least secure; shrink "
        "early to make reconstruction harder."
    )
    return lines
