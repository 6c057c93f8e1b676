"""Label recovery from the gradient of the classification head.

For a mean cross-entropy loss over a batch of B samples and a last linear layer
``z = W h + b`` with K outputs::

    dL/db_k = (1/B) Σ_i (p_ik − y_ik)        dL/dW_k = (1/B) Σ_i (p_ik − y_ik) h_i

where p_i is the softmax output and y_i the one-hot label of sample i.
One sample's label is the one entry of ``dL/db`` that is negative (iDLG);
a batch's per-class counts are estimated from ``dL/db`` and the head's input.
Gradients are keyed by parameter name; labels are int64 class indices in
``[0, K)``. :func:`recover_labels` applies the rule that fits an
:class:`~fedsim.api.Observation`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.api import Observation


@dataclass(frozen=True)
class Head:
    """The last linear layer (the classification head): its module and parameter names."""

    module: str
    weight: str
    bias: str | None


def find_head(model: nn.Module, num_classes: int) -> Head:
    """The last ``nn.Linear`` with ``num_classes`` outputs, by module order.

    Raises:
        ValueError: if the model has no such layer.
    """
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == num_classes:
            prefix = f"{name}." if name else ""
            bias = prefix + "bias" if module.bias is not None else None
            found = Head(name, prefix + "weight", bias)
    if found is None:
        raise ValueError(f"no linear layer with {num_classes} outputs to read labels from")
    return found


def idlg_label(gradient: Mapping[str, torch.Tensor], head: Head) -> int:
    """iDLG (Zhao et al. 2020): the label of a single sample.

    Only the true class has ``p_k − y_k < 0``, so it is the one negative entry of
    the bias gradient; without a bias, the row of the weight gradient with the
    most negative sum (exact when the head's inputs are non-negative, e.g. after
    a sigmoid or ReLU).
    """
    if head.bias is not None and head.bias in gradient:
        return int(torch.argmin(gradient[head.bias]))
    return int(torch.argmin(gradient[head.weight].sum(dim=1)))


def batch_label_counts(
    gradient: Mapping[str, torch.Tensor],
    head: Head,
    model: nn.Module,
    *,
    input_shape: tuple[int, int, int],
    batch_size: int,
    probes: int = 64,
    seed: int = 0,
) -> torch.Tensor:
    """How many samples of each class the batch holds, ``(K,)`` int64 summing to B.

    From the bias gradient, ``n_k = Σ_i p_ik − B dL/db_k``. The unknown
    ``Σ_i p_ik`` is estimated as ``B × p̄_k``, the model's mean softmax on
    ``probes`` uniform-noise images (in the spirit of Geng et al. 2021): close on
    an untrained model, whose posteriors vary little between inputs. Without a
    bias, the weight-gradient row sums are used, scaled by the mean feature
    L1 norm on the same probes. Counts are rounded by largest remainder.
    """
    device = gradient[head.weight].device
    generator = torch.Generator().manual_seed(seed)
    probe = torch.rand((probes, *input_shape), generator=generator).to(device)
    features: list[torch.Tensor] = []
    head_module = model.get_submodule(head.module)
    hook = head_module.register_forward_hook(lambda _m, args, _out: features.append(args[0]))
    try:
        with torch.no_grad():
            mean_probs = F.softmax(model(probe), dim=-1).mean(dim=0)
    finally:
        hook.remove()
    if head.bias is not None and head.bias in gradient:
        per_class = gradient[head.bias]
    else:
        scale = features[0].flatten(1).abs().sum(dim=1).mean()
        per_class = gradient[head.weight].sum(dim=1) / scale
    estimate = (batch_size * (mean_probs - per_class)).clamp(min=0).double().cpu()
    counts = torch.floor(estimate).long()
    missing = batch_size - int(counts.sum())
    if missing > 0:
        order = torch.argsort(estimate - counts, descending=True)
        counts[order[:missing]] += 1
    while missing < 0:
        candidates = torch.nonzero(counts > 0).flatten()
        worst = candidates[torch.argmin((estimate - counts)[candidates])]
        counts[worst] -= 1
        missing += 1
    return counts


def labels_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """``(K,)`` counts → ``(B,)`` labels, sorted."""
    return torch.repeat_interleave(torch.arange(len(counts)), counts)


def recover_labels(observation: Observation) -> torch.Tensor:
    """The batch's labels read off the head's gradient, ``(B,)`` int64, sorted.

    One sample: the iDLG rule (:func:`idlg_label`). Several: per-class counts
    (:func:`batch_label_counts`). Raises ``ValueError`` if the model has no
    linear layer with ``num_classes`` outputs.
    """
    model = observation.model()
    head = find_head(model, observation.num_classes)
    gradient = observation.gradient_estimate()
    if observation.batch_size == 1:
        return torch.tensor([idlg_label(gradient, head)])
    counts = batch_label_counts(
        gradient, head, model, input_shape=observation.input_shape,
        batch_size=observation.batch_size, seed=observation.seed,
    )  # fmt: skip
    return labels_from_counts(counts)
