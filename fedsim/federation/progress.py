"""What a running federation tells its display: typed progress events.

The ServerApp's federation emits them; ``fedsim run``'s progress bar advances
on :class:`RoundDone` only, and every display shows an event's :attr:`text`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass


class Event(ABC):
    """One progress event."""

    @property
    @abstractmethod
    def text(self) -> str:
        """The event as one line for a person."""


@dataclass(frozen=True)
class RoundDone(Event):
    """Round ``round`` (1-based) of ``rounds`` finished; the new global model
    classifies a fraction ``accuracy`` (in [0, 1]) of the test split correctly."""

    round: int
    rounds: int
    accuracy: float

    @property
    def text(self) -> str:
        return f"round {self.round}/{self.rounds} done, test accuracy {self.accuracy:.3f}"


@dataclass(frozen=True)
class AttackStarted(Event):
    """Attack ``attack`` (its plugin name) starts on ``who``'s upload in ``round``
    (``who``: ``"client <id>"`` or ``"aggregate"``)."""

    round: int
    attack: str
    who: str

    @property
    def text(self) -> str:
        return f"round {self.round}: {self.attack} on {self.who}"


@dataclass(frozen=True)
class AttackScored(Event):
    """Attack ``attack`` on ``who``'s upload in ``round`` was recorded: ``status``
    ``ok`` with the batch's mean ``psnr`` (dB) and fraction ``label_accuracy`` of
    labels recovered (in [0, 1]; ``None`` when the attack recovers none), or
    another status (``failed``, ...) with its ``reason``."""

    round: int
    attack: str
    who: str
    status: str
    psnr: float | None = None
    label_accuracy: float | None = None
    reason: str = ""

    @property
    def text(self) -> str:
        head = f"{self.attack} on {self.who}, round {self.round}"
        if self.status != "ok" or self.psnr is None:
            return f"{head}: {self.status}" + (f" ({self.reason})" if self.reason else "")
        labels = "" if self.label_accuracy is None else f", labels {self.label_accuracy:.0%}"
        return f"{head}: {self.psnr:.1f} dB{labels}"


@dataclass(frozen=True)
class ClientsFailed(Event):
    """``count`` (≥ 1) sampled clients of ``round`` produced no upload."""

    round: int
    count: int

    @property
    def text(self) -> str:
        return f"round {self.round}: {self.count} client(s) failed"


@dataclass(frozen=True)
class Note(Event):
    """Anything else worth a line (a stop requested, where the run directory is)."""

    message: str

    @property
    def text(self) -> str:
        return self.message


Progress = Callable[[Event], None]
"""Where a federation sends its events."""
