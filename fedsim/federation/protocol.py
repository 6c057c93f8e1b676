"""The messages between fedsim's ServerApp and ClientApp.

Every message the server sends carries a ``config`` ConfigRecord with
``server-round``, ``partition-id`` (the client the message is for) and
``scenario`` (the trial's resolved scenario as JSON), so that a client needs
nothing but fedsim installed: no scenario file, no shared state.

Message types:

- ``train``: one local round; the reply is described in ``client_app.py``.
- ``query.partition``: "which partition do you hold?"; the reply's ``metrics``
  holds ``partition-id`` (the node's ``--node-config``).
- ``query.score``: the server sends a ``reconstruction`` ArrayRecord
  (``images`` ``(B', C, H, W)`` in [0, 1], optional ``labels`` ``(B',)``); the
  client re-derives its batch of that round and replies with ``scores``, an
  ArrayRecord of :class:`~fedsim.metrics.PairScores` (``mse``, ``ssim``,
  optional ``label-equal``, each ``(B, B')``): numbers only, never images.

Client state across rounds (a defence's, e.g. DP-SGD's privacy accountant)
lives on the client: in ``Context.state`` on a real node, which serves one
partition. Simulated nodes are interchangeable stand-ins that serve a different
partition each round, so there the server keeps each partition's state for it
and hands it back with the partition's next ``train`` message (``client-state``,
JSON); the reply's ``client-state`` ConfigRecord returns it. The state holds
accounting history only, never data, and no attack reads it.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MessageType

from fedsim.metrics import PairScores
from fedsim.scenario import Scenario

PARTITION_QUERY = f"{MessageType.QUERY}.partition"
SCORE_QUERY = f"{MessageType.QUERY}.score"

SERVER_ROUND = "server-round"
PARTITION_ID = "partition-id"
SCENARIO = "scenario"
SHARE_TRUTH = "share-truth"
CLIENT_STATE = "client-state"


def message_config(scenario_json: str, server_round: int, partition_id: int) -> ConfigRecord:
    """The ``config`` record of a message for client ``partition_id`` in ``server_round``."""
    return ConfigRecord(
        {SCENARIO: scenario_json, SERVER_ROUND: server_round, PARTITION_ID: partition_id}
    )


@functools.lru_cache(maxsize=8)
def _parse(scenario_json: str) -> Scenario:
    return Scenario.model_validate_json(scenario_json)


def scenario_of(config: ConfigRecord) -> Scenario:
    """The scenario a message's ``config`` carries (parsed once per process and trial)."""
    return _parse(str(config[SCENARIO]))


def reconstruction_record(images: torch.Tensor, labels: torch.Tensor | None) -> ArrayRecord:
    arrays = {"images": images.detach().cpu().float()}
    if labels is not None:
        arrays["labels"] = labels.detach().cpu().long()
    return ArrayRecord.from_torch_state_dict(arrays)


def reconstruction_of(record: ArrayRecord) -> tuple[torch.Tensor, torch.Tensor | None]:
    arrays = record.to_torch_state_dict()
    return arrays["images"], arrays.get("labels")


def scores_record(scores: PairScores) -> ArrayRecord:
    arrays = {"mse": torch.from_numpy(scores.mse), "ssim": torch.from_numpy(scores.ssim)}
    if scores.label_equal is not None:
        arrays["label-equal"] = torch.from_numpy(scores.label_equal)
    return ArrayRecord.from_torch_state_dict(arrays)


def scores_of(record: ArrayRecord) -> PairScores:
    arrays = {k: np.asarray(v.numpy()) for k, v in record.to_torch_state_dict().items()}
    return PairScores(arrays["mse"], arrays["ssim"], arrays.get("label-equal"))
