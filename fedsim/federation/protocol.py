"""Every message between fedsim's ServerApp and ClientApp, typed; packed and unpacked here only.

Each message kind is a frozen dataclass with its pack (``to_message`` /
``to_content``) and unpack (``from_message``) functions; no other module
names a record or a key of Flower's ``RecordDict``.

Every message the server sends carries a :class:`Addressee` (``config``
ConfigRecord: ``server-round``, ``partition-id``, the client the message is
for, and ``scenario``, the trial's resolved scenario as JSON), so that a
client needs nothing but fedsim installed: no scenario file, no shared state.

Message kinds:

- ``train`` (:class:`TrainInstruction` → :class:`TrainReply`): one local round.
- ``query.partition`` (:func:`partition_query` → :class:`PartitionReply`):
  "which partition do you hold?" (the node's ``--node-config``).
- ``query.score`` (:class:`ScoreQuery` → :class:`ScoreReply`): the server sends
  a reconstruction; the client re-derives its batch of that round and replies
  with :class:`~fedsim.metrics.PairScores`: numbers only, never images.

Defence measurements travel as one ``MetricRecord`` per defence
(:class:`DefenceReport`), named after the defence's index in the scenario.

Under secure aggregation a ``train`` exchange is a round of Flower's SecAgg+
(:func:`secagg_stage` names the stage of its messages): the instruction comes
with the protocol's masking stage, and the reply
(:meth:`TrainReply.to_masked_content`) has the layout Flower's ``secaggplus_mod``
reads, a legacy ``FitRes``: the update as the record it masks, the client's
weight and the update's key order in clear, and the rest of the reply in clear
but the training loss. The server reads it back without the update
(:meth:`TrainReply.from_masked_message`).

Client state across rounds (a defence's, e.g. DP-SGD's privacy accountant)
lives on the client: in ``Context.state`` on a real node, which serves one
partition. Simulated nodes are interchangeable stand-ins that serve a different
partition each round, so there the server keeps each partition's state for it
and hands it back with the partition's next ``train`` message
(:attr:`TrainInstruction.client_state`); the reply returns it
(:attr:`TrainReply.client_state`). The state holds accounting history only,
never data, and no attack reads it.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

from fedsim.api import Update
from fedsim.metrics import PairScores
from fedsim.results.schema import Measured
from fedsim.scenario import Scenario

PARTITION_QUERY_ACTION = "partition"
"""The ClientApp's ``@app.query`` action answering :func:`partition_query`."""
SCORE_QUERY_ACTION = "score"
"""The ClientApp's ``@app.query`` action answering :class:`ScoreQuery`."""
_PARTITION_QUERY = f"{MessageType.QUERY}.{PARTITION_QUERY_ACTION}"
_SCORE_QUERY = f"{MessageType.QUERY}.{SCORE_QUERY_ACTION}"

# Record names.
CONFIG = "config"
ARRAYS = "arrays"
_UPDATE = "update"
_METRICS = "metrics"
_TRUTH = "truth"
_RECONSTRUCTION = "reconstruction"
_SCORES = "scores"
_DEFENCE = "defence"
"""Name stem of a defence's measurements record: ``defence[<index>]``."""

# Keys of the ``config`` record.
_SERVER_ROUND = "server-round"
_PARTITION_ID = "partition-id"
_SCENARIO = "scenario"
_SHARE_TRUTH = "share-truth"
_CLIENT_STATE = "client-state"
"""Also the name of the reply's record carrying the state back."""
_JSON = "json"

# Keys of a train reply's ``metrics`` record.
_NUM_EXAMPLES = "num-examples"
_LOCAL_STEPS = "local-steps"
_BATCH_SIZE = "batch-size"
_TRAIN_LOSS = "train-loss"

# A masked train reply: the records of a legacy FitRes, which secaggplus_mod reads.
_MASKED = "fitres.parameters"
"""The update: masked by secaggplus_mod, which empties every array record of the reply."""
_WEIGHT = "fitres.num_examples"
"""The client's weight in the sum (key ``num_examples``), in clear."""
_WEIGHT_KEY = "num_examples"
_FIT_METRICS = "fitres.metrics"
"""Scalars only; ``update-keys``: the update's parameter names in order, as JSON."""
_UPDATE_KEYS = "update-keys"
_FIT_STATUS = "fitres.status"

Truth = tuple[torch.Tensor, torch.Tensor]
"""A client's true batch: ``(B, C, H, W)`` images in [0, 1] and ``(B,)`` labels."""


def _number(value: object) -> float:
    """A scalar record value as a float (a list or text is a malformed message)."""
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError(f"expected a number in the message, got {value!r}")


@functools.lru_cache(maxsize=8)
def _parse(scenario_json: str) -> Scenario:
    return Scenario.model_validate_json(scenario_json)


@dataclass(frozen=True)
class Addressee:
    """Whom a server message is for: client ``partition_id`` of ``scenario_json``'s
    trial in ``server_round`` (the ``config`` record of every server message)."""

    scenario_json: str
    server_round: int
    partition_id: int

    @property
    def scenario(self) -> Scenario:
        """The trial's scenario (parsed once per process and trial)."""
        return _parse(self.scenario_json)

    def to_record(self) -> ConfigRecord:
        return ConfigRecord(
            {
                _SCENARIO: self.scenario_json,
                _SERVER_ROUND: self.server_round,
                _PARTITION_ID: self.partition_id,
            }
        )

    @classmethod
    def from_message(cls, message: Message) -> Addressee:
        config = message.content.config_records[CONFIG]
        return cls(
            str(config[_SCENARIO]),
            int(_number(config[_SERVER_ROUND])),
            int(_number(config[_PARTITION_ID])),
        )


@dataclass(frozen=True)
class DefenceReport:
    """What ``defences[index]`` of the scenario measured, by measurement name
    (noise std, ε, ...; ``inf`` is kept: ``epsilon = inf`` means no guarantee)."""

    index: int
    values: dict[str, float]

    @classmethod
    def finite_or_inf(cls, index: int, measured: Mapping[str, float]) -> DefenceReport:
        """The report of ``measured`` with NaN values dropped."""
        return cls(index, {k: float(v) for k, v in measured.items() if not math.isnan(v)})


def _flat_name(index: int, key: str) -> str:
    return f"{_DEFENCE}{index}.{key}"


def by_defence(reports: Iterable[DefenceReport]) -> Measured:
    """``reports`` by defence index, as ``results.json`` records them (a defence that
    reported nothing is left out)."""
    return {r.index: dict(r.values) for r in reports if r.values}


def _defence_record_name(index: int) -> str:
    return f"{_DEFENCE}[{index}]"


def _defence_index(record_name: str) -> int | None:
    """The defence index of a defence measurements record's name, else ``None``."""
    stem, _, rest = record_name.partition("[")
    if stem != _DEFENCE or not rest.endswith("]") or not rest[:-1].isdigit():
        return None
    return int(rest[:-1])


def state_record(state: Mapping[str, Any]) -> ConfigRecord:
    """A client's JSON-able state as a ConfigRecord (on the wire or in ``Context.state``)."""
    return ConfigRecord({_JSON: json.dumps(state)})


def state_of(record: ConfigRecord) -> dict[str, Any]:
    """Undo :func:`state_record`."""
    state: dict[str, Any] = json.loads(str(record[_JSON]))
    return state


@dataclass(frozen=True)
class TrainInstruction:
    """``train``: run one local round from ``parameters`` (the global model's state).

    ``share_truth``: send the true batch back (simulation's ``shared-truth``
    scoring). ``client_state``: the partition's state, kept by the server for
    stand-in nodes (``None`` on real nodes, which keep their own)."""

    to: Addressee
    parameters: ArrayRecord
    share_truth: bool
    client_state: dict[str, Any] | None

    def to_message(self, node: int) -> Message:
        config = self.to.to_record()
        config[_SHARE_TRUTH] = self.share_truth
        if self.client_state is not None:
            config[_CLIENT_STATE] = json.dumps(self.client_state)
        return Message(
            RecordDict({ARRAYS: self.parameters, CONFIG: config}),
            dst_node_id=node,
            message_type=MessageType.TRAIN,
        )

    @classmethod
    def from_message(cls, message: Message) -> TrainInstruction:
        config = message.content.config_records[CONFIG]
        state = config.get(_CLIENT_STATE)
        return cls(
            Addressee.from_message(message),
            message.content.array_records[ARRAYS],
            bool(config.get(_SHARE_TRUTH, False)),
            None if state is None else json.loads(str(state)),
        )


@dataclass(frozen=True)
class TrainReply:
    """A client's reply to ``train``.

    - ``update``: the defended upload, keyed by parameter name — the gradient
      (``fedsgd``) or the weight delta θ_after − θ_before (``fedavg``); empty in a
      reply the server read masked (:meth:`from_masked_message`);
    - ``num_examples`` (the weight in FedAvg's mean), ``local_steps``;
    - ``batch_size`` and ``train_loss``: ``None`` while a client defence with a
      formal guarantee acts (they stay on the client; under Poisson sampling the
      batch size is the realised one); a masked reply never carries the loss;
    - ``defences``: the measurements that may leave the client, per defence, in
      the order the defences acted;
    - ``truth`` (simulation only): the client's real batch, sent only when asked
      (``share_truth``); used to score reconstructions, it never reaches an attack;
    - ``client_state``: the state the server keeps for stand-in nodes (``None``
      on real nodes).
    """

    partition_id: int
    update: Update
    num_examples: int
    local_steps: int
    batch_size: int | None
    train_loss: float | None
    defences: tuple[DefenceReport, ...]
    truth: Truth | None = None
    client_state: dict[str, Any] | None = None

    @property
    def observed_batch_size(self) -> int:
        """The batch size the server takes: the reported one, else (a client under a
        formal guarantee keeps its realised batch size) the example count, the expected
        size of a Poisson-sampled batch."""
        return self.num_examples if self.batch_size is None else self.batch_size

    def metrics(self) -> dict[str, float]:
        """The ``metrics`` record's entries (defence measurements travel apart)."""
        metrics: dict[str, float] = {
            _NUM_EXAMPLES: self.num_examples,
            _PARTITION_ID: self.partition_id,
            _LOCAL_STEPS: self.local_steps,
        }
        if self.batch_size is not None:
            metrics[_BATCH_SIZE] = self.batch_size
        if self.train_loss is not None:
            metrics[_TRAIN_LOSS] = self.train_loss
        return metrics

    def to_content(self) -> RecordDict:
        content = self._clear_content(self.metrics())
        content[_UPDATE] = ArrayRecord.from_torch_state_dict(dict(self.update))
        return content

    def to_masked_content(self, weight: int) -> RecordDict:
        """The reply in ``secaggplus_mod``'s layout: the update in its key order as the
        record the mod masks, ``weight`` (the client's weight in the sum) and the key
        order in clear, and the rest of :meth:`to_content` in clear but the training
        loss, a statistic of the data that the sum would otherwise hide. The mod
        empties every other array record too: take them aside first
        (:func:`take_clear_arrays`)."""
        metrics = self.metrics()
        metrics.pop(_TRAIN_LOSS, None)
        content = self._clear_content(metrics)
        content[_MASKED] = ArrayRecord.from_torch_state_dict(dict(self.update))
        content[_WEIGHT] = MetricRecord({_WEIGHT_KEY: weight})
        content[_FIT_METRICS] = ConfigRecord({_UPDATE_KEYS: json.dumps(list(self.update))})
        content[_FIT_STATUS] = ConfigRecord({"code": 0, "message": "ok"})
        return content

    def _clear_content(self, metrics: dict[str, float]) -> RecordDict:
        """Everything but the update: ``metrics``, the defences' reports, the truth
        and the client's state."""
        content = RecordDict({_METRICS: MetricRecord(dict(metrics))})
        for report in self.defences:
            if report.values:
                content[_defence_record_name(report.index)] = MetricRecord(dict(report.values))
        if self.truth is not None:
            images, labels = self.truth
            content[_TRUTH] = ArrayRecord.from_torch_state_dict(
                {"images": images, "labels": labels}
            )
        if self.client_state is not None:
            content[_CLIENT_STATE] = state_record(self.client_state)
        return content

    @classmethod
    def from_message(cls, message: Message) -> TrainReply:
        content = message.content
        update = dict(content.array_records[_UPDATE].to_torch_state_dict())
        return cls._from_content(content, update)

    @classmethod
    def from_masked_message(cls, message: Message) -> TrainReply:
        """A reply in :meth:`to_masked_content`'s layout, as the server holds it: all but
        the update, which it has only masked (``update`` is empty)."""
        return cls._from_content(message.content, {})

    @classmethod
    def _from_content(cls, content: RecordDict, update: Update) -> TrainReply:
        metrics = {k: _number(v) for k, v in content.metric_records[_METRICS].items()}
        defences = []
        for name, record in content.metric_records.items():
            index = _defence_index(name)
            if index is not None:
                defences.append(DefenceReport(index, {k: _number(v) for k, v in record.items()}))
        truth = None
        if _TRUTH in content.array_records:
            arrays = content.array_records[_TRUTH].to_torch_state_dict()
            truth = (arrays["images"], arrays["labels"])
        state = content.config_records.get(_CLIENT_STATE)
        return cls(
            partition_id=int(metrics[_PARTITION_ID]),
            update=update,
            num_examples=int(metrics[_NUM_EXAMPLES]),
            local_steps=int(metrics[_LOCAL_STEPS]),
            batch_size=int(metrics[_BATCH_SIZE]) if _BATCH_SIZE in metrics else None,
            train_loss=metrics.get(_TRAIN_LOSS),
            defences=tuple(defences),
            truth=truth,
            client_state=None if state is None else state_of(state),
        )


def masked_update_keys(message: Message) -> list[str]:
    """The parameter names of a masked reply's update, in the order of its arrays."""
    keys: list[str] = json.loads(str(message.content.config_records[_FIT_METRICS][_UPDATE_KEYS]))
    return keys


def take_clear_arrays(content: RecordDict) -> dict[str, ArrayRecord]:
    """Remove from a masked reply's ``content``, and return, its array records that
    travel in clear (the truth): all but the update."""
    names = [name for name in content.array_records if name != _MASKED]
    return {name: content.array_records.pop(name) for name in names}


def secagg_stage(message: Message) -> str | None:
    """The stage of Flower's SecAgg+ a server message belongs to (``setup``,
    ``share_keys``, ``collect_masked_vectors`` or ``unmask``); ``None`` outside the
    protocol."""
    configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
    stage = None if configs is None else configs.get(Key.STAGE)
    return None if stage is None else str(stage)


def reply_contents(content: RecordDict) -> set[str]:
    """The names of what a train reply's ``content`` carried, as ``results.json`` records them
    (``client_sent``): its records' names and its metrics' keys, a defence's
    measurements named ``defence<index>.<name>``."""
    names: set[str] = set()
    for name, record in content.items():
        index = _defence_index(name)
        if index is not None:
            names.update(_flat_name(index, key) for key in record)
            continue
        names.add(name)
        if isinstance(record, MetricRecord):
            names.update(record)
    return names


def partition_query(node: int) -> Message:
    """``query.partition`` to ``node``: which partition does it hold?"""
    return Message(
        RecordDict({CONFIG: ConfigRecord()}), dst_node_id=node, message_type=_PARTITION_QUERY
    )


@dataclass(frozen=True)
class PartitionReply:
    """A node's answer to ``query.partition``: its ``--node-config partition-id``."""

    partition_id: int

    def to_content(self) -> RecordDict:
        return RecordDict({_METRICS: MetricRecord({_PARTITION_ID: self.partition_id})})

    @classmethod
    def from_message(cls, message: Message) -> PartitionReply:
        return cls(int(_number(message.content.metric_records[_METRICS][_PARTITION_ID])))


@dataclass(frozen=True)
class ScoreQuery:
    """``query.score``: score ``images`` (``(B', C, H, W)`` in [0, 1]) and optional
    ``labels`` (``(B',)``), a reconstruction, against the addressee's batch of that round."""

    to: Addressee
    images: torch.Tensor
    labels: torch.Tensor | None

    def to_message(self, node: int) -> Message:
        arrays = {"images": self.images.detach().cpu().float()}
        if self.labels is not None:
            arrays["labels"] = self.labels.detach().cpu().long()
        return Message(
            RecordDict(
                {
                    _RECONSTRUCTION: ArrayRecord.from_torch_state_dict(arrays),
                    CONFIG: self.to.to_record(),
                }
            ),
            dst_node_id=node,
            message_type=_SCORE_QUERY,
        )

    @classmethod
    def from_message(cls, message: Message) -> ScoreQuery:
        arrays = message.content.array_records[_RECONSTRUCTION].to_torch_state_dict()
        return cls(Addressee.from_message(message), arrays["images"], arrays.get("labels"))


@dataclass(frozen=True)
class ScoreReply:
    """A client's answer to ``query.score``: the pair scores (``mse``, ``ssim``,
    optional ``label-equal``, each ``(B, B')``), numbers only."""

    scores: PairScores

    def to_content(self) -> RecordDict:
        scores = self.scores
        arrays = {"mse": torch.from_numpy(scores.mse), "ssim": torch.from_numpy(scores.ssim)}
        if scores.label_equal is not None:
            arrays["label-equal"] = torch.from_numpy(scores.label_equal)
        return RecordDict({_SCORES: ArrayRecord.from_torch_state_dict(arrays)})

    @classmethod
    def from_message(cls, message: Message) -> ScoreReply:
        record = message.content.array_records[_SCORES]
        arrays = {k: np.asarray(v.numpy()) for k, v in record.to_torch_state_dict().items()}
        return cls(PairScores(arrays["mse"], arrays["ssim"], arrays.get("label-equal")))
