"""The ServerApp's side of secure aggregation: each round's ``train`` exchange run as
one round of Flower's SecAgg+ server workflow (see
:mod:`fedsim.scenario.secure_aggregation`).

The strategy samples and routes the round's clients and builds their train
instructions as ever; its grid, a :class:`SecAggPlusGrid`, sends them as the
masking stage of a SecAgg+ round, four exchanges with the sampled nodes:

1. ``setup``: the protocol's parameters out, two public keys per client back;
2. ``share_keys``: the neighbours' public keys out, each client's secret shares
   back, encrypted for their recipients;
3. ``collect_masked_vectors``: the shares forwarded, with fedsim's train
   instruction; each client trains and sends its masked upload and, in clear,
   its metadata (:meth:`~fedsim.federation.protocol.TrainReply.to_masked_content`);
   the server sums the masked uploads;
4. ``unmask``: who is left and who dropped out; the shares that remove the masks
   of the sum come back, and the server unmasks FedAvg's weighted mean.

The workflow is Flower's ``SecAggPlusWorkflow``, driven a round at a time through
a private ``LegacyContext`` whose legacy strategy samples the nodes fedsim chose
and keeps the mean; it never holds an individual upload in clear. A round is lost
(no aggregate) when fewer than ``reconstruction_threshold`` of some client's
neighbours are left at a stage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import Stage
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation.secaggplus_workflow import WorkflowState
from flwr.serverapp import Grid

from fedsim.federation import protocol
from fedsim.federation.nodes import DelegatingGrid, error_summary
from fedsim.federation.protocol import DefenceReport
from fedsim.scenario.checks import MASK_MODULUS
from fedsim.scenario.secure_aggregation import SecureSum


@dataclass(frozen=True)
class Dropout:
    """Why a sampled client's upload is not in the round's sum."""

    kind: Literal["error", "timeout"]
    reason: str


@dataclass(frozen=True)
class SecureRound:
    """What the server holds after one SecAgg+ round.

    Attributes:
        replies: the masking stage's replies whose masked uploads are in the sum
            (their metadata in clear, their update masked).
        dropped: every other sampled node, by node id, and why.
        mean: the unmasked weighted mean by parameter name (float64), or ``None``
            when the protocol halted (every sampled node is then in ``dropped``).
    """

    replies: list[Message]
    dropped: dict[int, Dropout]
    mean: dict[str, np.ndarray] | None


@dataclass(frozen=True)
class _Exchange:
    """One of the workflow's exchanges: its stage, the nodes asked, their replies."""

    stage: str
    nodes: list[int]
    replies: list[Message]
    timeout: float | None


class _StageLog(DelegatingGrid):
    """The grid the workflow talks through, remembering each exchange."""

    def __init__(self, grid: Grid) -> None:
        super().__init__(grid)
        self.exchanges: list[_Exchange] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        sent = list(messages)
        stage = protocol.secagg_stage(sent[0]) if sent else None  # before a client pops it
        replies = list(self._grid.send_and_receive(sent, timeout=timeout))
        nodes = [m.metadata.dst_node_id for m in sent]
        self.exchanges.append(_Exchange(stage or "", nodes, replies, timeout))
        return replies

    def masked(self) -> list[Message]:
        """The masking stage's replies without error: the uploads in the sum."""
        return [
            reply
            for exchange in self.exchanges
            if exchange.stage == Stage.COLLECT_MASKED_VECTORS
            for reply in exchange.replies
            if not reply.has_error()
        ]

    def dropouts(self) -> dict[int, Dropout]:
        """Each node's first failure: an error reply, or none within the timeout."""
        dropped: dict[int, Dropout] = {}
        for exchange in self.exchanges:
            answers = {reply.metadata.src_node_id: reply for reply in exchange.replies}
            for node in exchange.nodes:
                reply = answers.get(node)
                if node in dropped or (reply is not None and not reply.has_error()):
                    continue
                if reply is None:
                    waited = "" if exchange.timeout is None else f" within {exchange.timeout:g} s"
                    why = f"no reply{waited} in SecAgg+ {exchange.stage}"
                    dropped[node] = Dropout("timeout", why)
                else:
                    reason = error_summary(reply.error.reason or "")
                    dropped[node] = Dropout("error", f"SecAgg+ {exchange.stage}: {reason}")
        return dropped


class _ChosenNodes(Strategy):
    """The legacy strategy the workflow asks: it samples the nodes fedsim chose and
    keeps the unmasked mean the workflow hands to :meth:`aggregate_fit`."""

    def __init__(self, nodes: list[int], grid: Grid) -> None:
        self.nodes, self.grid = nodes, grid
        self.mean: list[np.ndarray] | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        run_id = self.grid.run.run_id
        return [(GridClientProxy(n, self.grid, run_id), FitIns(parameters, {})) for n in self.nodes]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Keeps the mean, which the workflow wrote into every result's parameters."""
        self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        return []

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return None


class _RoundWorkflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow for one fedsim round: the masking stage carries
    fedsim's train instructions (``instructions``, by node) instead of a legacy
    ``FitIns``."""

    def __init__(
        self,
        secure: SecureSum,
        max_weight: float,
        timeout: float | None,
        instructions: dict[int, RecordDict],
    ) -> None:
        params = secure.protocol
        super().__init__(
            params.num_shares,
            params.reconstruction_threshold,
            max_weight=max_weight,
            clipping_range=params.clipping_range,
            quantization_range=params.quantization_range,
            modulus_range=MASK_MODULUS,
            timeout=timeout,
        )
        self.instructions = instructions

    def share_keys_stage(self, grid: Grid, context: LegacyContext, state: WorkflowState) -> bool:
        """Flower's stage, then only the nodes that distributed their shares go on.

        Works around a bug of Flower 1.42: a node lost during ``setup`` or
        ``share_keys`` stays among the sampled nodes and its neighbours', so
        ``unmask`` asks the others for shares of it that they never received
        (``secaggplus_mod`` fails with a ``KeyError``) and the round halts. No one's
        mask involves such a node, so leaving it out is exact.
        """
        super().share_keys_stage(grid, context, state)
        keyed = set(state.active_node_ids)
        state.sampled_node_ids = keyed
        for node in keyed:
            state.nid_to_neighbours[node] &= keyed
        return self._check_threshold(state)

    def collect_masked_vectors_stage(
        self, grid: Grid, context: LegacyContext, state: WorkflowState
    ) -> bool:
        state.nid_to_fitins = {node: self.instructions[node] for node in state.nid_to_fitins}
        return super().collect_masked_vectors_stage(grid, context, state)


def round_report(secure: SecureSum, in_sum: int, dropped: int) -> DefenceReport:
    """The secure-aggregation defence's measurements of a round: the clients whose
    uploads are in the sum and those dropped, and the protocol's k and t."""
    return DefenceReport(
        secure.index,
        {
            "clients_in_sum": in_sum,
            "clients_dropped": dropped,
            "num_shares": secure.protocol.num_shares,
            "reconstruction_threshold": secure.protocol.reconstruction_threshold,
        },
    )


class SecAggPlusGrid(DelegatingGrid):
    """The strategy's grid under secure aggregation.

    A batch of ``train`` messages (fedsim's instructions, one per sampled node) is
    sent as the masking stage of one SecAgg+ round of ``secure``'s protocol with
    ``max_weight``; the replies returned are those whose masked uploads are in the
    sum, and :meth:`take_round` hands over the round. Every other call passes
    through to ``grid``.
    """

    def __init__(self, grid: Grid, secure: SecureSum, max_weight: float) -> None:
        super().__init__(grid)
        self.secure, self.max_weight = secure, max_weight
        self._round: SecureRound | None = None

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Each exchange of the protocol waits up to the protocol's ``timeout``, else
        ``timeout``."""
        sent = list(messages)
        if not sent or any(m.metadata.message_type != MessageType.TRAIN for m in sent):
            return self._grid.send_and_receive(sent, timeout=timeout)
        wait = timeout if self.secure.protocol.timeout is None else self.secure.protocol.timeout
        self._round = self._secure_round(sent, wait)
        return self._round.replies

    def take_round(self) -> SecureRound:
        """The last round sent, once."""
        if self._round is None:
            raise RuntimeError("no SecAgg+ round to take")
        taken, self._round = self._round, None
        return taken

    def _secure_round(self, messages: list[Message], timeout: float | None) -> SecureRound:
        """Run one SecAgg+ round whose masking stage carries ``messages``' contents."""
        instructions = {m.metadata.dst_node_id: m.content for m in messages}
        log = _StageLog(self._grid)
        chosen = _ChosenNodes(sorted(instructions), log)
        server_round = protocol.Addressee.from_message(messages[0]).server_round
        state = RecordDict(
            {
                MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND: server_round}),
                MAIN_PARAMS_RECORD: ArrayRecord(),  # the workflow's FitIns, unused
            }
        )
        context = LegacyContext(Context(self.run.run_id, 0, {}, state, {}), strategy=chosen)
        _RoundWorkflow(self.secure, self.max_weight, timeout, instructions)(log, context)
        masked, dropped = log.masked(), log.dropouts()
        if chosen.mean is None:
            last = log.exchanges[-1].stage if log.exchanges else "setup"
            halted = Dropout(
                "error",
                f"secure aggregation halted after SecAgg+ {last}: too few clients were left "
                "to remove the masks",
            )
            return SecureRound(masked, {n: dropped.get(n, halted) for n in instructions}, None)
        keys = {tuple(protocol.masked_update_keys(reply)) for reply in masked}
        if len(keys) != 1 or len(next(iter(keys))) != len(chosen.mean):
            raise ValueError(f"the masked uploads disagree on their parameters: {sorted(keys)}")
        in_sum = {reply.metadata.src_node_id for reply in masked}
        return SecureRound(
            masked,
            {node: why for node, why in dropped.items() if node not in in_sum},
            dict(zip(next(iter(keys)), chosen.mean, strict=True)),
        )
