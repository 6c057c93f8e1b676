"""Where the global model starts: its seeded initialisation, a checkpoint, central pre-training.

"Attack a trained model" needs no extra code: ``[model] checkpoint = "file.pt"``
loads a state dict (``torch.load(..., weights_only=True)``: tensors only, no
pickled code), and ``pretrain_epochs = N`` trains the model centrally for ``N``
epochs before round 1 (after the checkpoint, if both are given) on the clients'
training split, all shards together: the model a federation that has trained on
those images would hold. The held-out split, where test accuracy is measured, is
never trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.data.source import ImageData
from fedsim.models.errors import one_line
from fedsim.scenario import ModelConfig

PRETRAIN_BATCH_SIZE = 32


class CheckpointError(ValueError):
    """A checkpoint that cannot start the model; ``str()`` is one line."""


def load_checkpoint(model: nn.Module, path: Path) -> None:
    """Load the state dict in ``path`` into ``model`` (every key, same shapes).

    Raises:
        CheckpointError: unreadable file, not a state dict of tensors, or keys and
            shapes that do not fit ``model``.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} not found") from None
    except Exception as exc:  # pickle, zip and weights_only errors all mean "not loadable"
        raise CheckpointError(f"cannot load checkpoint {str(path)!r}: {one_line(exc)}") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a state dict of tensors")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"has unknown key {unexpected[0]!r}"
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit the model: it {what}")
    for key, value in expected.items():
        if state[key].shape != value.shape:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not fit the model: {key!r} has shape "
                f"{tuple(state[key].shape)}, the model {tuple(value.shape)}"
            )
    model.load_state_dict(state)


def pretrain(
    model: nn.Module, data: ImageData, epochs: int, batch_size: int, lr: float, seed: int
) -> float:
    """Train ``model`` in place with SGD for ``epochs`` epochs over ``data`` (shuffled by
    ``seed``); returns the mean cross-entropy of the last epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model.train()
    n = len(data.labels)
    last = float("nan")
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch_size):
            x, y = data.batch(order[start : start + batch_size])
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(y)
        last = total / n
    model.eval()
    return last


def start_model(
    factory: Callable[[], nn.Module], config: ModelConfig, train: ImageData, seed: int
) -> tuple[nn.Module, dict[str, Any]]:
    """The global model of round 1 and a description of how it started (for the results).

    The seeded initialisation from ``factory``, then ``config.checkpoint`` if set,
    then ``config.pretrain_epochs`` epochs of SGD (lr ``config.pretrain_lr``, batches
    of :data:`PRETRAIN_BATCH_SIZE`) on ``train``, the clients' training split.
    """
    model = factory()
    info: dict[str, Any] = {"initialisation": "seeded"}
    if config.checkpoint is not None:
        load_checkpoint(model, config.checkpoint.expanduser())
        info["checkpoint"] = str(config.checkpoint)
    if config.pretrain_epochs:
        loss = pretrain(
            model, train, config.pretrain_epochs, PRETRAIN_BATCH_SIZE, config.pretrain_lr, seed
        )
        info["pretrained"] = {
            "epochs": config.pretrain_epochs,
            "lr": config.pretrain_lr,
            "samples": len(train.labels),
            "last_epoch_loss": loss,
            "on": "the clients' training split, centrally (the test split is not used)",
        }
    return model, info
