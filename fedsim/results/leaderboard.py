"""The defence leaderboard of a run whose scenario has ``defence_sets``.

Each trial belongs to one set (its point's ``defence_set``) and one strength (its
other swept values but the replicate ``seed``). Per (set, strength), over its
seeds:

- ``accuracy``: the model's test accuracy after the last round;
- per attacker position and metric (PSNR in dB with peak 1, SSIM), the best
  attack: the attack whose reconstructions score highest on average, with the
  mean, population standard deviation and count of its per-image scores, over
  the records of the last round at which an attack ran in each trial (the
  trained model) and over the seeds;
- ``epsilon``: the ε covering the server's view, else the participant's
  (:func:`~fedsim.results.points.view_epsilon`), after the last round (mean over
  seeds), for defences with an accountant.

The ranking ("leakage at matched accuracy") compares the sets at the accuracy a
defender would accept: for each set, of its strengths whose mean accuracy is at
most :data:`MATCHED_DROP` below the undefended set's (the set labelled ``none``;
without one, the best mean accuracy of any point), the one where the best
server-position attack (participant-position, if no attack ran at the server)
leaks least; sets ranked by that leakage, lowest first. A set with no strength
that accurate is listed after the ranked ones, unranked.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

from fedsim.results.points import point_summary, view_epsilon
from fedsim.results.schema import RunResults, TrialResult
from fedsim.results.sweep import REPLICATE_KEYS, mean_std
from fedsim.scenario.sweep import DEFENCE_SET

UNDEFENDED = "none"
"""The label of the reference set: no defence."""
MATCHED_DROP = 0.05
"""How far (absolute, in accuracy) below the undefended accuracy a strength may be and
still count as at matched accuracy."""
POSITIONS = ("server", "participant")
METRICS = ("psnr", "ssim")


@dataclass(frozen=True)
class Stat:
    """Mean, population standard deviation and count of some values."""

    mean: float
    std: float
    n: int

    def text(self, digits: int) -> str:
        """``"31.2 ± 4.0 (n=6)"``."""
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} (n={self.n})"


@dataclass(frozen=True)
class Best:
    """The best attack at one position for one metric, and its scores."""

    attack: str
    score: Stat


@dataclass
class Entry:
    """One (set, strength) of the leaderboard.

    Attributes:
        defence_set: the set's label.
        strength: the swept values that distinguish it within its set (``"sigma=0.01"``;
            empty for a set swept over nothing).
        value: the strength as a number when the set sweeps one numeric value.
        trials: indices of its trials (one per seed).
        accuracy: test accuracy after the last round, over the seeds.
        best: ``best[position][metric]``, where some attack at ``position`` scored.
        epsilon: ε after the last round covering the server's view, else the
            participant's, mean over seeds.
    """

    defence_set: str
    strength: str
    value: float | None
    trials: list[int] = field(default_factory=list)
    accuracy: Stat | None = None
    best: dict[str, dict[str, Best]] = field(default_factory=dict)
    epsilon: float | None = None

    def leakage(self) -> Best | None:
        """The best attack's PSNR at the server, else at a participant."""
        for position in POSITIONS:
            if "psnr" in self.best.get(position, {}):
                return self.best[position]["psnr"]
        return None


def is_leaderboard(results: RunResults) -> bool:
    """Whether the run compares defence sets (its points name a ``defence_set``)."""
    return any(DEFENCE_SET in t.point for t in results.trials)


def _strength(trial: TrialResult) -> tuple[str, float | None]:
    swept = {k: v for k, v in trial.point.items() if k != DEFENCE_SET and k not in REPLICATE_KEYS}
    text = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in swept.items())
    numbers = [v for v in swept.values() if isinstance(v, int | float) and not isinstance(v, bool)]
    return text, float(numbers[0]) if len(swept) == 1 and numbers else None


def leaderboard_entries(results: RunResults) -> list[Entry]:
    """The (set, strength) entries in the order of the scenario's points."""
    entries: dict[tuple[str, str], Entry] = {}
    for trial in results.trials:
        strength, value = _strength(trial)
        key = (str(trial.point.get(DEFENCE_SET)), strength)
        entries.setdefault(key, Entry(key[0], strength, value)).trials.append(trial.index)
    trials = {t.index: t for t in results.trials}
    for entry in entries.values():
        mine = [trials[i] for i in entry.trials]
        accuracy = mean_std([t.accuracy[max(t.accuracy)] for t in mine if t.accuracy])
        entry.accuracy = Stat(*accuracy) if accuracy else None
        epsilons = []
        for trial in mine:
            summary = point_summary(trial)
            epsilons.append(view_epsilon(summary, "server") or view_epsilon(summary, "participant"))
        found = mean_std(epsilons)
        entry.epsilon = found[0] if found else None
        entry.best = _best_attacks(results, set(entry.trials))
    return list(entries.values())


def _best_attacks(results: RunResults, trials: set[int]) -> dict[str, dict[str, Best]]:
    """Per position and metric, the attack with the highest mean per-image score over the
    records of ``trials`` at each trial's last attacked round."""
    last: dict[int, int] = {}
    for record in results.records:
        if record.trial in trials:
            last[record.trial] = max(last.get(record.trial, 0), record.round)
    scores: dict[tuple[str, str, str], list[float]] = {}
    for record in results.records:
        if record.trial not in trials or record.round != last[record.trial]:
            continue
        if record.status != "ok":
            continue
        for image in record.images:
            for metric in METRICS:
                value = getattr(image, metric)
                if math.isfinite(value):
                    key = (record.position, metric, record.attack)
                    scores.setdefault(key, []).append(value)
    best: dict[str, dict[str, Best]] = {}
    for (position, metric, attack), values in scores.items():
        stat = mean_std(values)
        if stat is None:
            continue
        current = best.setdefault(position, {}).get(metric)
        if current is None or stat[0] > current.score.mean:
            best[position][metric] = Best(attack, Stat(*stat))
    return best


@dataclass(frozen=True)
class Ranked:
    """One row of the ranking: the set's entry at matched accuracy (``None``: none of its
    strengths is that accurate), its rank (``None`` then, and for the reference set)."""

    defence_set: str
    entry: Entry | None
    rank: int | None


def ranking(entries: list[Entry]) -> tuple[float | None, list[Ranked]]:
    """The accuracy a strength must reach (:data:`MATCHED_DROP` below the undefended
    one) and the sets' rows, ranked first, then the reference, then the unranked."""
    reference = [e for e in entries if e.defence_set == UNDEFENDED and e.accuracy]
    accuracies = [e.accuracy.mean for e in (reference or entries) if e.accuracy]
    if not accuracies:
        return None, []
    target = max(accuracies) - MATCHED_DROP
    sets = list(dict.fromkeys(e.defence_set for e in entries if e.defence_set != UNDEFENDED))
    chosen: list[tuple[str, Entry | None]] = []
    for name in sets:
        candidates = [
            e
            for e in entries
            if e.defence_set == name and e.accuracy and e.accuracy.mean >= target and e.leakage()
        ]
        pick = min(candidates, key=lambda e: e.leakage().score.mean, default=None)  # type: ignore[union-attr]
        chosen.append((name, pick))
    ranked = sorted(
        ((n, e) for n, e in chosen if e is not None),
        key=lambda item: item[1].leakage().score.mean,  # type: ignore[union-attr]
    )
    rows = [Ranked(n, e, i + 1) for i, (n, e) in enumerate(ranked)]
    rows += [Ranked(UNDEFENDED, e, None) for e in reference]
    rows += [Ranked(n, None, None) for n, e in chosen if e is None]
    return target, rows


LEADERBOARD_COLUMNS = ("rank", "defence_set", "strength", "test_accuracy", "accuracy_std",
                       "seeds", "epsilon", *(f"{p}_{m}{suffix}" for p in POSITIONS
                       for m in METRICS for suffix in ("", "_std", "_n", "_attack")))  # fmt: skip


def leaderboard_csv(results: RunResults) -> str:
    """``leaderboard.csv``: every (set, strength) entry with its rank where ranked."""
    entries = leaderboard_entries(results)
    _, rows = ranking(entries)
    ranks = {id(r.entry): r.rank for r in rows if r.entry is not None}
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=LEADERBOARD_COLUMNS)
    writer.writeheader()
    for entry in entries:
        row: dict[str, Any] = {
            "rank": ranks.get(id(entry)) or "",
            "defence_set": entry.defence_set,
            "strength": entry.strength,
            "test_accuracy": entry.accuracy.mean if entry.accuracy else "",
            "accuracy_std": entry.accuracy.std if entry.accuracy else "",
            "seeds": len(entry.trials),
            "epsilon": "" if entry.epsilon is None else entry.epsilon,
        }
        for position in POSITIONS:
            for metric in METRICS:
                best = entry.best.get(position, {}).get(metric)
                prefix = f"{position}_{metric}"
                row[prefix] = best.score.mean if best else ""
                row[f"{prefix}_std"] = best.score.std if best else ""
                row[f"{prefix}_n"] = best.score.n if best else ""
                row[f"{prefix}_attack"] = best.attack if best else ""
        writer.writerow(row)
    return out.getvalue()
