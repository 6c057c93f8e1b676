"""The README's "Writing a plugin" examples run as printed against the current API: the
attack reads a 4x4 image off a leading linear layer's gradient, the defence flips the sign
of about a fraction ``p`` of the coordinates."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.api import Attack, Defence, Observation
from fedsim.metrics import psnr

README = Path(__file__).resolve().parents[1] / "README.md"


def plugin_examples() -> dict[str, Any]:
    """Every ```python block of the README's "Writing a plugin" section, run in one namespace."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Writing a plugin") :]
    section = section[: section.index("\n## ", 1)]
    namespace: dict[str, Any] = {}
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2, "expected the attack and the defence examples"
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    return namespace


def test_the_attack_example_reconstructs_the_image() -> None:
    examples = plugin_examples()
    cls = examples["FirstLayerInversion"]
    assert issubclass(cls, Attack)
    torch.manual_seed(0)

    def factory() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Sigmoid(), nn.Linear(8, 3))

    model = factory()
    image = torch.rand(1, 1, 4, 4)
    loss = F.cross_entropy(model(image), torch.tensor([2]))
    names = [name for name, _ in model.named_parameters()]
    gradient = dict(zip(names, torch.autograd.grad(loss, list(model.parameters())), strict=True))
    observation = Observation(
        position="server", round=1, client_id=0, model_factory=factory,
        parameters=model.state_dict(), update=gradient, kind="gradient",
        input_shape=(1, 4, 4), num_classes=3, batch_size=1, lr=0.1, local_steps=1,
        device=torch.device("cpu"), seed=0,
    )  # fmt: skip
    attack = cls(cls.Params())
    assert attack.supports(factory()) is None
    assert attack.supports(nn.Sequential(nn.Conv2d(1, 2, 3))) is not None
    result = attack.reconstruct(observation)
    assert result.status == "ok" and result.images is not None
    assert psnr(image.numpy(), result.images.numpy()) > 60.0


def test_the_defence_example_flips_about_p_of_the_signs() -> None:
    examples = plugin_examples()
    cls = examples["SignFlip"]
    assert issubclass(cls, Defence) and cls.stage_for(cls.Params()) == "upload"
    defence = cls(cls.Params(p=0.25))
    update = {"w": torch.ones(100, 100)}
    out, measured = defence.apply(update, torch.Generator().manual_seed(0))
    flipped = float((out["w"] < 0).float().mean())
    assert abs(flipped - 0.25) < 0.02 and measured == {"flipped_fraction": 0.25}
    assert torch.equal(update["w"], torch.ones(100, 100))  # the input left as it was
