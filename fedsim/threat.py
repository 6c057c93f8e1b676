"""Threat models: what an attacker knows, its defaults per position, and its SoK class.

The scenario states an attacker's knowledge as ``knows_<flag>`` keys next to its
position; unset flags take :data:`DEFAULT_KNOWLEDGE` of the position. Each attack
declares the flags it needs (validation fails without them) and the flags it can
use; every result records the granted flags, the ones the attack could use, and
the class of the gradient-inversion SoK's taxonomy that fits (:func:`sok_class`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

Knowledge = Literal["labels", "batch_size", "local_hyperparameters", "model"]
"""One piece of knowledge an attacker may be granted (scenario key ``knows_<flag>``)."""

KNOWLEDGE: tuple[Knowledge, ...] = get_args(Knowledge)

KNOWLEDGE_DESCRIPTIONS: dict[Knowledge, str] = {
    "labels": "the labels of the attacked batch",
    "batch_size": "how many samples are behind the update",
    "local_hyperparameters": "the client's lr, local steps, local batch size and sample count",
    "model": "the architecture and the parameters the client started from",
}

Position = Literal["server", "participant"]
"""Where the attacker sits: ``server`` sees every client's upload separately;
``participant`` sees the global model before and after each round, so the
aggregate of the round's updates (from which it may subtract its own)."""

DEFAULT_KNOWLEDGE: dict[Position, frozenset[Knowledge]] = {
    # The server builds the model, configures the local training and receives every
    # client's example count with its upload.
    "server": frozenset({"model", "batch_size", "local_hyperparameters"}),
    # A participant receives the same model and training configuration as every
    # client (so the batch size and local hyperparameters all clients share).
    "participant": frozenset({"model", "batch_size", "local_hyperparameters"}),
}
"""What each position knows unless the scenario says otherwise (shown by ``fedsim plugins``)."""


def knowledge_key(flag: Knowledge) -> str:
    """The scenario key of ``flag`` on an ``[[attacks]]`` table."""
    return f"knows_{flag}"


def granted_knowledge(position: Position, overrides: dict[Knowledge, bool]) -> frozenset[Knowledge]:
    """The position's defaults with the scenario's explicit ``knows_*`` values applied."""
    granted = set(DEFAULT_KNOWLEDGE[position])
    for flag, value in overrides.items():
        (granted.add if value else granted.discard)(flag)
    return frozenset(granted)


def ordered(flags: Iterable[Knowledge]) -> list[Knowledge]:
    """``flags`` in the canonical order of :data:`KNOWLEDGE` (for records and messages)."""
    chosen = set(flags)
    return [flag for flag in KNOWLEDGE if flag in chosen]


SOK_CLASSES: dict[str, tuple[str, frozenset[str]]] = {
    "A": ("Eavesdropper", frozenset()),
    "B": ("Informed Eavesdropper", frozenset({"basic"})),
    "C": ("Parameter-Aware Eavesdropper", frozenset({"basic", "training"})),
    "D": ("Data-Enhanced Eavesdropper", frozenset({"basic", "training", "surrogate"})),
    "E": (
        "Statistical-Informed Eavesdropper",
        frozenset({"basic", "training", "surrogate", "distribution"}),
    ),
}
"""The SoK's passive classes: name and the knowledge columns beyond the model updates."""

SOK_COLUMNS: dict[str, Knowledge] = {
    "basic": "labels",
    "training": "local_hyperparameters",
}
"""Which fedsim flag stands for each knowledge column of the SoK's table. Its *surrogate
data* and *client data distribution* columns have no flag: no observation delivers them
(an attack would need the data or the batch-norm statistics handed to it), so classes D
and E are never assigned."""


def sok_class(knowledge: Iterable[Knowledge]) -> str | None:
    """The class of the gradient-inversion SoK's threat-model taxonomy that fits ``knowledge``.

    The taxonomy is Carletti, Foggia, Mazzocca, Parrella & Vento, "SoK: Gradient
    Inversion Attacks in Federated Learning", USENIX Security 2025, section
    "Threat Models" (its table of threat models A–H, also kept in the authors'
    repository ``gparrella12/sok_gias_fl``). Each class is a set of columns:
    *model updates* (every class), *basic knowledge*, *training details*,
    *surrogate data*, *client data distribution*, *active manipulation* and
    *client selection*. A–E are passive and nested (A ⊂ B ⊂ … ⊂ E); F–H
    manipulate the model or the client selection, which no fedsim attacker
    does, so they are never assigned.

    Our reading of the columns as fedsim flags (:data:`SOK_COLUMNS`): the model
    updates include the global model they were computed from (it is broadcast,
    so even the eavesdropper of class A has it — DLG, which needs the model, is
    class A in the SoK); *basic knowledge* is the batch's labels (the SoK puts
    Inverting Gradients, which assumes known labels, in B, and DLG/iDLG, which
    recover them, in A); *training details* are the local hyperparameters
    (Dimitrov et al.'s FedAvg attack, class C). *Surrogate data* (class D) and the
    *client data distribution* (the batch-norm statistics of Yin et al.'s
    GradInversion, class E) are not delivered to any fedsim attacker, so they have no
    flag and D and E are not assigned. The batch size is not a column (DLG assumes
    it, yet is A): it is recorded but leaves the class as it is.

    Returns:
        the letter of the smallest class whose columns include every column
        ``knowledge`` covers, or ``None`` without ``model`` (no class describes
        an attacker without the model its updates were computed from).
    """
    flags = set(knowledge)
    if "model" not in flags:
        return None
    columns = {column for column, flag in SOK_COLUMNS.items() if flag in flags}
    for letter, (_name, needed) in SOK_CLASSES.items():
        if columns <= needed:
            return letter
    return None  # pragma: no cover - C holds every column a fedsim flag stands for


def threat_model_record(
    position: Position, granted: Iterable[Knowledge], usable: Iterable[Knowledge]
) -> dict[str, object]:
    """What a result records of its attacker: position, the granted flags (``knows``), those
    the attack could use (``uses``: granted and needed or usable), and the SoK class of
    what it used (:func:`sok_class`)."""
    used = ordered(set(granted) & set(usable))
    return {
        "position": position,
        "knows": ordered(granted),
        "uses": used,
        "sok_class": sok_class(used),
    }
