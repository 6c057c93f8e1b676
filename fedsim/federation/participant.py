"""What a participant attacker sees: the round's aggregate without its own update.

A participant is itself a client: it knows the update it sent and its weight in
FedAvg's mean (its example count). The server publishes the new global model,
from which the participant reads the aggregate ``ā = Σᵢ wᵢ Δᵢ / W`` (``W = Σᵢ wᵢ``).
Knowing ``W`` too (the other clients' example counts: the threat model's
``batch_size``), it isolates the weighted mean of the others' updates,
``(W ā − w_a Δ_a) / (W − w_a)``: exactly the other client's update when two
clients took part.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedsim.api import Update


def others_update(
    aggregate: Mapping[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    own_weight: float,
    total_weight: float,
) -> Update:
    """The weighted mean of the other clients' updates, from FedAvg's weighted mean.

    Args:
        aggregate: the round's aggregate (what the server applied), by parameter name.
        own: the participant's own upload.
        own_weight: the participant's weight in the mean (its example count).
        total_weight: the sum of every taking-part client's weight.

    Raises:
        ValueError: when no weight is left for other clients.
    """
    rest = total_weight - own_weight
    if rest <= 0:
        raise ValueError("no other client took part in the round")
    return {k: (total_weight * v - own_weight * own[k]) / rest for k, v in aggregate.items()}
