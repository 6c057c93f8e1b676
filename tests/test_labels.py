"""Label recovery from the head's gradient: iDLG for one sample, counts for batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedsim.data.datasets import load_digits, load_photos
from fedsim.inversion.labels import batch_label_counts, find_head, idlg_label
from fedsim.models.zoo import build_model


def head_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    names, params = zip(*model.named_parameters(), strict=True)
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    return dict(zip(names, grads, strict=True))


def test_find_head_is_the_last_linear_layer_with_num_classes_outputs() -> None:
    model = build_model("lenet", input_shape=(3, 32, 32), num_classes=6)
    head = find_head(model, 6)
    assert (head.module, head.weight, head.bias) == ("fc", "fc.weight", "fc.bias")
    with pytest.raises(ValueError, match="7 outputs"):
        find_head(model, 7)


@pytest.mark.parametrize("use_bias", [True, False], ids=["bias", "weight-rows"])
def test_idlg_label_is_right_on_every_tested_image(use_bias: bool) -> None:
    data = load_photos(32, 5, 0)
    for i in range(len(data.labels)):
        model = build_model("lenet", input_shape=(3, 32, 32), num_classes=6, seed=i)
        x, y = data.batch([i])
        gradient = head_gradient(model, x, y)
        head = find_head(model, 6)
        if not use_bias:  # sigmoid features are non-negative: the weight rows suffice
            gradient.pop(head.bias)
        assert idlg_label(gradient, head) == int(y), f"image {i}"


def test_batch_label_counts_are_exact_on_batches_of_four() -> None:
    data = load_digits(32)
    generator = torch.Generator().manual_seed(0)
    exact = 0
    for trial in range(20):
        idx = torch.randint(0, len(data.labels), (4,), generator=generator)
        x, y = data.batch(idx)
        model = build_model("lenet", input_shape=(1, 32, 32), num_classes=10, seed=trial)
        counts = batch_label_counts(
            head_gradient(model, x, y), find_head(model, 10), model,
            input_shape=(1, 32, 32), batch_size=4, seed=trial,
        )  # fmt: skip
        assert int(counts.sum()) == 4
        exact += torch.equal(counts, torch.bincount(y, minlength=10))
    assert exact == 20
