"""Which Flower node serves which client (partition id), and message exchange.

fedsim samples *clients* (partition ids) with a seeded RNG, so the same seed
picks the same clients and batches in every sweep point. How a partition
reaches a node depends on the engine:

- :class:`SimulatedNodes` (Flower's simulation engine): nodes are
  interchangeable stand-ins, one per client of a round; the i-th requested
  partition goes to the i-th node and the message names the partition. A
  client exists only while it handles a message, so memory and start-up do
  not grow with ``num_clients``.
- :class:`DeployedNodes` (real SuperNodes): each node holds its own partition
  (``--node-config partition-id=N``); the server asks every node once.
"""

from __future__ import annotations

import re
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import ClassVar

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedsim.federation.protocol import PartitionReply, partition_query

PULL_INTERVAL = 0.1
"""Seconds between polls for replies."""

STARTUP_TIMEOUT = 600.0
"""Seconds simulated nodes may take to answer their first message."""


def exchange(grid: Grid, messages: Sequence[Message], timeout: float) -> list[Message | None]:
    """Send ``messages`` and wait up to ``timeout`` seconds for their replies.

    Returns each message's reply (possibly an error reply) in order, ``None``
    where none arrived in time. Unlike ``Grid.send_and_receive`` it polls every
    :data:`PULL_INTERVAL` seconds and says which message went unanswered.
    """
    ids = list(grid.push_messages(messages))
    pending = {message_id: k for k, message_id in enumerate(ids) if message_id}
    replies: list[Message | None] = [None] * len(messages)
    deadline = time.monotonic() + timeout
    while pending:
        for reply in grid.pull_messages(list(pending)):
            k = pending.pop(reply.metadata.reply_to_message_id, None)
            if k is not None:
                replies[k] = reply
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(PULL_INTERVAL)
    return replies


class DelegatingGrid(Grid):
    """A Grid that hands every call to ``grid``; subclasses change what they override."""

    def __init__(self, grid: Grid) -> None:
        self._grid = grid

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self._grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


def error_summary(reason: str, limit: int = 300) -> str:
    """The gist of an error reply's reason: the message of the exception a ClientApp
    raised. Flower reports ``<class 'Type'>:<'message'>``, and in simulation the
    message is Ray's traceback around Flower's ``... Message: <the message>``;
    otherwise the reason's last line. The full reason is in Flower's log."""
    wrapped = re.fullmatch(r"<class '[\w.()]+'>:<'(.*)'>", reason.strip(), re.DOTALL)
    text = wrapped.group(1) if wrapped else reason
    marker = "Message: "
    gist = text.rsplit(marker, 1)[1] if marker in text else text.strip().rsplit("\n", 1)[-1]
    return gist.strip()[:limit] or "no reason given"


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    """Sorted ids of the connected nodes, once there are at least ``count``.

    Raises:
        TimeoutError: fewer than ``count`` nodes connected within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {count} client nodes connected")
        time.sleep(PULL_INTERVAL)
    return nodes


class NodePlacement(ABC):
    """Maps the partitions a message batch is for to the nodes that receive it."""

    stand_ins: ClassVar[bool] = False
    """Whether a node may serve a different partition each round (so a client's
    state across rounds cannot live in the node's ``Context.state``)."""

    @abstractmethod
    def nodes_for(self, grid: Grid, partitions: Sequence[int]) -> dict[int, int]:
        """Node id for each of ``partitions`` (distinct nodes for distinct partitions)."""


class SimulatedNodes(NodePlacement):
    """Flower's simulated nodes as stand-ins: partition i of a request → i-th node.

    Needs as many nodes as the largest request (``clients_per_round``). Before
    the first request every node answers a query once, so the engine's start-up
    (Ray workers, imports) is not counted against the first round's timeout.
    """

    stand_ins = True

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._nodes: list[int] = []

    def nodes_for(self, grid: Grid, partitions: Sequence[int]) -> dict[int, int]:
        if not self._nodes:
            self._nodes = wait_for_nodes(grid, len(partitions), self.timeout)
            exchange(grid, [partition_query(n) for n in self._nodes], STARTUP_TIMEOUT)
        return dict(zip(partitions, self._nodes, strict=False))


class DeployedNodes(NodePlacement):
    """Real nodes, each holding one partition; learnt by asking every node once."""

    def __init__(self, num_clients: int, timeout: float) -> None:
        self.num_clients, self.timeout = num_clients, timeout
        self._nodes: dict[int, int] = {}

    def nodes_for(self, grid: Grid, partitions: Sequence[int]) -> dict[int, int]:
        if not self._nodes:
            self._nodes = partition_nodes(grid, self.num_clients, self.timeout)
        return {p: self._nodes[p] for p in partitions}


def partition_nodes(grid: Grid, num_clients: int, timeout: float) -> dict[int, int]:
    """Ask every node for its partition id; returns partition id → node id.

    Nodes holding partitions beyond ``num_clients`` are left out.

    Raises:
        TimeoutError: fewer than ``num_clients`` nodes connected in time.
        RuntimeError: a partition is missing or held twice.
    """
    nodes = wait_for_nodes(grid, num_clients, timeout)
    found: dict[int, int] = {}
    replies = exchange(grid, [partition_query(n) for n in nodes], timeout)
    for node, reply in zip(nodes, replies, strict=True):
        if reply is None or reply.has_error():
            continue
        partition = PartitionReply.from_message(reply).partition_id
        if not 0 <= partition < num_clients:
            continue  # a node the scenario does not use
        if partition in found:
            raise RuntimeError(f"partition {partition} is held by two nodes")
        found[partition] = node
    if len(found) < num_clients:
        missing = sorted(set(range(num_clients)) - set(found))
        raise RuntimeError(f"no node reported partitions {missing}")
    return found
