"""What one sweep point (trial) cost and how it was defended: accuracy, ε, noise.

Derived from a trial's entry in ``results.json``: ``accuracy`` per round and
``defences`` per round (the clients' measurements summarised over the round,
and the server's aggregate defence's, by defence index). The measurement names
read here are those of the :class:`fedsim.api.Defence` contract.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fedsim.results.schema import Measured, TrialResult


def final_accuracy(trial: TrialResult) -> float | None:
    """The global model's test accuracy after the trial's last round."""
    accuracy = trial.accuracy
    return accuracy[max(accuracy)] if accuracy else None


def _by_name(measured: Measured, name: str) -> list[float]:
    """``name``'s value from every defence that measured it."""
    return [values[name] for values in measured.values() if name in values]


def _root_sum_square(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values))


def _side(rounds: list[Measured]) -> dict[str, float | None]:
    """ε (largest over rounds; several accountants add up), δ, and noise (mean over
    rounds; several noise sources add as independent variances) of one side."""
    epsilons = [sum(_by_name(m, "epsilon")) for m in rounds if _by_name(m, "epsilon")]
    sums = [sum(_by_name(m, "epsilon_sum")) for m in rounds if _by_name(m, "epsilon_sum")]
    deltas = [sum(_by_name(m, "delta")) for m in rounds if _by_name(m, "delta")]
    stds = [_root_sum_square(_by_name(m, "measured_noise_std")) for m in rounds
            if _by_name(m, "measured_noise_std")]  # fmt: skip
    ratios = [_root_sum_square(_by_name(m, "noise_to_update_norm")) for m in rounds
              if _by_name(m, "noise_to_update_norm")]  # fmt: skip
    return {
        "epsilon": max(epsilons) if epsilons else None,
        "epsilon_sum": max(sums) if sums else None,
        "delta": max(deltas) if deltas else None,
        "noise_std": float(np.mean(stds)) if stds else None,
        "noise_ratio": float(np.mean(ratios)) if ratios else None,
    }


def point_summary(trial: TrialResult) -> dict[str, Any]:
    """Accuracy, privacy and noise of one trial.

    Returns ``test_accuracy`` (after the last round); ``epsilon_client`` (the
    worst client's ε so far, from client-side accountants: local DP, DP-SGD)
    and ``epsilon_server`` (ε of the server's aggregate defence), ``epsilon_sum`` (under
    secure aggregation, the worst client's ε against an observer of only the round's
    sum, the distributed-DP view of client-side noise), ``None``
    without an accountant and ``inf`` for one that added no noise; ``delta``;
    ``client_noise_std`` / ``client_noise_ratio`` (noise the clients added, per
    coordinate and relative to the update's norm, mean over rounds) and
    ``server_noise_std`` / ``server_noise_ratio`` (noise the server added to the
    aggregate).
    """
    rounds = [trial.defences[r] for r in sorted(trial.defences)]
    client = _side([r.clients for r in rounds])
    server = _side([r.aggregate for r in rounds])
    deltas = [d for d in (client["delta"], server["delta"]) if d is not None]
    return {
        "test_accuracy": final_accuracy(trial),
        "epsilon_client": client["epsilon"],
        "epsilon_server": server["epsilon"],
        "epsilon_sum": client["epsilon_sum"],
        "delta": max(deltas) if deltas else None,
        "client_noise_std": client["noise_std"],
        "client_noise_ratio": client["noise_ratio"],
        "server_noise_std": server["noise_std"],
        "server_noise_ratio": server["noise_ratio"],
    }


def view_epsilon(summary: dict[str, Any], position: str) -> float | None:
    """The ε that covers what an attacker at ``position`` sees.

    The server sees raw uploads: only client-side guarantees hold against it, unless
    secure aggregation hides them (``epsilon_sum``: it sees only the sum). A participant
    sees the aggregate, covered by client-side guarantees (by post-processing), by the
    sum's and by the server's central one: the smallest ε applies.
    """
    keys = ["epsilon_client", "epsilon_sum"]
    if position != "server":
        keys.append("epsilon_server")
    found = [summary[k] for k in keys if summary.get(k) is not None]
    return min(found) if found else None
