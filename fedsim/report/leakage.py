"""How much leaked, in words and colours: PSNR verdicts, the summary tables, the findings."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedsim.metrics import SUCCESS_PSNR
from fedsim.report.view import Cell, Table
from fedsim.results.schema import Record, RunResults
from fedsim.results.table import POINT_COLUMNS, format_cell, point_rows, short_point, summarise

RECOGNISABLE_PSNR = 25.0
"""Rule of thumb: from about this PSNR (peak 1) a person recognises the image."""
BLURRED_PSNR = 18.0
"""Rule of thumb: below about this PSNR little of the image's content is left."""

POSITIONS = {
    "server": "the server (sees each client's upload)",
    "participant": "a participant (sees only the round's aggregate)",
}


def verdict(psnr: float | None) -> tuple[str, str]:
    """``(words, css class)`` for a reconstruction's PSNR in dB (peak 1)."""
    if psnr is None or (isinstance(psnr, float) and math.isnan(psnr)):
        return "not scored", "leak-none"
    if psnr >= SUCCESS_PSNR:
        return "near-exact copy", "leak-exact"
    if psnr >= RECOGNISABLE_PSNR:
        return "recognisable", "leak-high"
    if psnr >= BLURRED_PSNR:
        return "blurred, partly recognisable", "leak-mid"
    return "not recognisable", "leak-low"


def format_psnr(psnr: float | None) -> str:
    """``46.3 dB``; ``∞ dB`` for an identical copy; ``-`` when not scored."""
    if psnr is None:
        return "-"
    return "∞ dB" if math.isinf(psnr) else f"{psnr:.1f} dB"


@dataclass(frozen=True)
class Score:
    """A PSNR as the page shows it: ``text`` (``46.3 dB``), its verdict ``words`` and the
    verdict's CSS class."""

    text: str
    words: str
    css: str


def score(psnr: float | None) -> Score:
    """The PSNR ``psnr`` (dB, peak 1) with its :func:`verdict`."""
    words, css = verdict(psnr)
    return Score(format_psnr(psnr), words, css)


GLOSSARY = (
    (
        "original / reconstruction",
        "left: a client's private training image, which never leaves the client; right: what the "
        "attacker rebuilt from what it observed (an upload or the round's aggregate) alone.",
    ),
    (
        "PSNR",
        "peak signal-to-noise ratio, in dB, from the mean squared pixel difference (pixels in "
        "[0, 1]). Higher means a closer copy. Rules of thumb: "
        f"≥ {SUCCESS_PSNR:.0f} dB a near-exact copy (fedsim counts the attack as a success), "
        f"{RECOGNISABLE_PSNR:.0f}–{SUCCESS_PSNR:.0f} dB recognisable, "
        f"{BLURRED_PSNR:.0f}–{RECOGNISABLE_PSNR:.0f} dB blurred but partly recognisable, "
        f"below {BLURRED_PSNR:.0f} dB not recognisable; ∞ means identical.",
    ),
    (
        "SSIM",
        "structural similarity, up to 1: 1 means the same structure (edges, shapes, textures), "
        "around 0 means unrelated. It agrees better with the eye than PSNR on blurred images.",
    ),
    (
        "label",
        'whether the attacker also got the image\'s class right (right / wrong); "not guessed" '
        "when the attack does not produce a label.",
    ),
    ("success", f"the share of attacked uploads whose every image reached {SUCCESS_PSNR:.0f} dB."),
    (
        "attacker position",
        "at the server it sees each client's upload; as a participant it sees only the "
        "aggregate of the round's uploads, which mixes several clients' data.",
    ),
    (
        "knew (SoK class)",
        "the attacker's threat model: the class of the gradient-inversion SoK's taxonomy "
        "(A: the updates only; B: also the labels; C: also the training details; D and E, "
        "which add surrogate data and the clients' data statistics, are not simulated) and "
        "what this attack used of what it was granted.",
    ),
    (
        "test accuracy",
        "the share of held-out images the global model classifies correctly after the last "
        "round: what a defence costs in usefulness.",
    ),
    (
        "ε (epsilon), δ",
        "the differential-privacy guarantee of a defence with an accountant: smaller ε means a "
        "stronger guarantee; ∞ means no guarantee (no noise); blank when no accountant ran.",
    ),
)


def legend() -> list[Score]:
    """The PSNR colours and what they mean: one sample per verdict, its ``text`` the
    verdict's range."""
    samples = [
        (f"≥ {SUCCESS_PSNR:.0f} dB", SUCCESS_PSNR),
        (f"{RECOGNISABLE_PSNR:.0f}–{SUCCESS_PSNR:.0f} dB", RECOGNISABLE_PSNR),
        (f"{BLURRED_PSNR:.0f}–{RECOGNISABLE_PSNR:.0f} dB", BLURRED_PSNR),
        (f"< {BLURRED_PSNR:.0f} dB", 0.0),
    ]
    return [Score(label, *verdict(psnr)) for label, psnr in samples]


def _psnr_cell(psnr: float | None) -> Cell:
    shown = score(psnr)
    return Cell(shown.text, shown.css, title=shown.words)


def attack_table(results: RunResults) -> Table | None:
    """One row per (sweep point, attack): leakage, its success, accuracy and ε (``None``
    when no attack ran)."""
    rows = summarise(results)
    if not rows:
        return None
    sweep = any(r["point"] != "-" for r in rows)
    headers = [
        *(["sweep point"] if sweep else []),
        "attack",
        "attacker at",
        "knew (SoK class)",
        "scored",
        "success",
        "PSNR",
        "what it means",
        "SSIM",
        "label",
        "test accuracy",
        "ε",
    ]
    body = []
    for row in rows:
        words, css = verdict(row["psnr"])
        body.append(
            [
                *([row["point"]] if sweep else []),
                row["attack"],
                row["position"],
                row["threat"],
                row["ok"],
                format_cell(row["success"], "success"),
                _psnr_cell(row["psnr"]),
                Cell(words, css),
                format_cell(row["ssim"], "ssim"),
                format_cell(row["label_accuracy"], "label_accuracy"),
                format_cell(row["test_accuracy"], "test_accuracy"),
                format_cell(row["epsilon"], "epsilon"),
            ]
        )
    return Table.of(headers, body, "numbers")


def point_table(results: RunResults) -> Table | None:
    """One row per sweep point (accuracy, ε, noise) when a defence measured something;
    the columns no point has a value for are left out."""
    rows = point_rows(results)
    shown = {
        k: h
        for k, h in POINT_COLUMNS.items()
        if k in ("point", "status") or any(r[k] is not None for r in rows)
    }
    if len(rows) < 2 and len(shown) <= 3:
        return None
    return Table.of(
        list(shown.values()), [[format_cell(r[k], k) for k in shown] for r in rows], "numbers"
    )


def scored(results: RunResults) -> list[Record]:
    """The records that were scored (status ``ok`` with metrics)."""
    return [r for r in results.records if r.status == "ok" and r.metrics]


def best_image_psnr(record: Record) -> float:
    """The highest PSNR among a scored record's images (its batch mean if none are listed).

    Raises:
        ValueError: the record has neither images nor a batch-mean PSNR.
    """
    if record.images:
        return max(im.psnr for im in record.images)
    batch_mean = record.metrics.get("psnr")
    if batch_mean is None:
        raise ValueError(f"record of {record.attack} in round {record.round} has no PSNR")
    return batch_mean


@dataclass(frozen=True)
class Best:
    """The best image an attacker ``position`` (in words) rebuilt: its score, by which
    attack, in which round, at which sweep point (``""`` without a sweep)."""

    position: str
    score: Score
    attack: str
    round: int
    point: str


def findings(results: RunResults) -> list[Best | str]:
    """A few sentences a newcomer can read first: what leaked most, where nothing leaked."""
    lines: list[Best | str] = []
    ok = scored(results)
    for position in sorted({r.position for r in ok}):
        best = max((r for r in ok if r.position == position), key=best_image_psnr)
        lines.append(
            Best(
                POSITIONS.get(position, position),
                score(best_image_psnr(best)),
                best.attack,
                best.round,
                short_point(best.point) if best.point else "",
            )
        )
    points = {t.index: t for t in results.trials}
    if len(points) > 1 and ok:
        safe = []
        for index, trial in points.items():
            mine = [best_image_psnr(r) for r in ok if r.trial == index]
            if mine and max(mine) < RECOGNISABLE_PSNR:
                safe.append(short_point(trial.point))
        if safe:
            lines.append(
                "Settings where no attack produced a recognisable image (every "
                f"PSNR below {RECOGNISABLE_PSNR:.0f} dB): " + "; ".join(safe) + "."
            )
        else:
            lines.append(
                f"No setting kept every attack below {RECOGNISABLE_PSNR:.0f} dB: "
                "some image stayed recognisable at every point."
            )
    if not ok:
        lines.append("No reconstruction was scored: see the problems below.")
    return lines
