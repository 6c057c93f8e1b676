"""Where a reconstruction is scored against the truth: one switch, two modes.

- ``shared-truth`` (simulation's default): clients add their true batch to the
  train reply under a separate key; the server scores with it and keeps the
  originals for the PNGs and ``grid.png``. It never reaches an attack.
- ``on-client`` (real machines, and ``fedsim run --scoring on-client``): the
  server sends the reconstruction to the client(s) it came from; each re-derives
  its batch of that round (deterministic from seed, round and partition) and
  returns :class:`~fedsim.metrics.PairScores`, numbers only. No image leaves a
  client; ``results.json`` then has no original PNGs.

Both end in the same :func:`fedsim.metrics.match_scores`, so a scenario gives
the same metrics in either mode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from flwr.serverapp import Grid

from fedsim.federation.nodes import NodePlacement, error_summary, exchange
from fedsim.federation.protocol import Addressee, ScoreQuery, ScoreReply, Truth
from fedsim.metrics import PairScores, pair_scores

ScoringMode = Literal["shared-truth", "on-client"]


class ScoringError(ValueError):
    """A reconstruction could not be scored (the record says why)."""


@dataclass(frozen=True)
class Scored:
    """Pair scores of each client behind an upload, in order, and — only when the
    truth was shared — their originals concatenated in the same order."""

    parts: list[PairScores]
    originals: torch.Tensor | None


class Scorer(ABC):
    """Scores a reconstruction of the batches of ``clients`` in ``server_round``."""

    mode: ClassVar[ScoringMode]

    @abstractmethod
    def score(
        self,
        server_round: int,
        clients: Sequence[int],
        truths: Sequence[Truth | None],
        images: torch.Tensor,
        labels: torch.Tensor | None,
    ) -> Scored:
        """``truths`` are what the clients' replies carried (``None`` when on-client).

        Raises:
            ScoringError: the truth or a client's scores are unavailable, or shapes differ.
        """


class SharedTruthScorer(Scorer):
    mode = "shared-truth"

    def score(
        self,
        server_round: int,
        clients: Sequence[int],
        truths: Sequence[Truth | None],
        images: torch.Tensor,
        labels: torch.Tensor | None,
    ) -> Scored:
        if any(t is None for t in truths):
            raise ScoringError("a client's reply carried no ground truth")
        known = [t for t in truths if t is not None]
        try:
            parts = [pair_scores(x, y, images, labels) for x, y in known]
        except ValueError as exc:
            raise ScoringError(str(exc)) from None
        return Scored(parts, torch.cat([x for x, _ in known]))


class OnClientScorer(Scorer):
    """Asks each client to score the reconstruction against its own batch."""

    mode = "on-client"

    def __init__(
        self, grid: Grid, nodes: NodePlacement, scenario_json: str, timeout: float
    ) -> None:
        self.grid, self.nodes = grid, nodes
        self.scenario_json, self.timeout = scenario_json, timeout

    def score(
        self,
        server_round: int,
        clients: Sequence[int],
        truths: Sequence[Truth | None],
        images: torch.Tensor,
        labels: torch.Tensor | None,
    ) -> Scored:
        route = self.nodes.nodes_for(self.grid, clients)
        queries = [
            ScoreQuery(Addressee(self.scenario_json, server_round, c), images, labels).to_message(
                route[c]
            )
            for c in clients
        ]
        parts = []
        for client, reply in zip(clients, exchange(self.grid, queries, self.timeout), strict=True):
            if reply is None:
                raise ScoringError(f"client {client} did not reply within {self.timeout:g} s")
            if reply.has_error():
                raise ScoringError(f"client {client}: {error_summary(reply.error.reason or '')}")
            parts.append(ScoreReply.from_message(reply).scores)
        return Scored(parts, None)


GROUND_TRUTH_NOTES: dict[ScoringMode, str] = {
    "shared-truth": "clients sent their true batch to the scorer only; attacks never saw it",
    "on-client": "each client scored reconstructions of its own batch; no image left a client",
}
