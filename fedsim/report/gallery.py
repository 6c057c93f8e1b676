"""Originals beside reconstructions: one collapsible section per sweep point, one block
per attacked upload, each image with its PSNR, SSIM and label under it."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.report.embed import Embedder, Picture
from fedsim.report.leakage import POSITIONS, Score, best_image_psnr, score
from fedsim.results.points import final_accuracy
from fedsim.results.schema import ImageResult, Record, RunResults, TrialResult
from fedsim.results.table import short_point

OPEN_IMAGES = 24
"""Runs with at most this many reconstructions show every sweep point opened; larger ones
open the first only."""
SMALL_BATCH = 4
"""Batches larger than this are drawn with smaller thumbnails."""


@dataclass(frozen=True)
class Pair:
    """One original (``None``: not saved) beside its reconstruction, with the scores."""

    index: int
    original: Picture
    reconstruction: Picture
    score: Score
    ssim: str
    label: str


@dataclass(frozen=True)
class RecordView:
    """One attack on one upload: who attacked what, its cost, and its images or the
    ``problem`` why there are none."""

    attack: str
    position: str
    where: str
    cost: str
    problem: str | None
    pairs: list[Pair]
    small: bool


@dataclass(frozen=True)
class Summary:
    """The one line a collapsed sweep point shows (``of``: ``point 2 of 5: `` in a sweep)."""

    of: str
    point: str
    best: Score | None
    accuracy: str | None
    uploads: str
    note: str | None


@dataclass(frozen=True)
class PointView:
    """One sweep point: its summary line, why it did not complete, its records."""

    summary: Summary
    problem: str | None
    records: list[RecordView]
    open: bool


@dataclass(frozen=True)
class StripCell:
    """One image of the sweep strip, captioned with the sweep point (and its PSNR)."""

    picture: Picture
    alt: str
    caption: str
    score: Score | None = None


@dataclass(frozen=True)
class StripRow:
    """One attack's first attacked image at every sweep point."""

    head: str
    cells: list[StripCell]


@dataclass(frozen=True)
class Strip:
    """The sweep strip: the swept parameters' names and one row per attack."""

    keys: str
    rows: list[StripRow]


def _label(record: Record, k: int, correct: bool | None) -> str:
    recovered = record.diagnostics.get("recovered_labels")
    guess = f" ({recovered[k]})" if isinstance(recovered, list) and k < len(recovered) else ""
    if correct is None:
        return "label not guessed"
    return f"label {'right' if correct else 'wrong'}{guess}"


def _picture(embed: Embedder, file: str | None) -> Picture:
    return embed.image(file) if file else Picture.absent("not saved")


def _pair(embed: Embedder, record: Record, k: int, image: ImageResult) -> Pair:
    return Pair(
        k + 1,
        _picture(embed, image.original_png),
        _picture(embed, image.reconstruction_png),
        score(image.psnr),
        f"{image.ssim:.3f}",
        _label(record, k, image.label_correct),
    )


def _where(record: Record) -> str:
    upload = (
        "the round's aggregate" if record.client is None else f"client {record.client}'s upload"
    )
    return f"round {record.round}, {upload} ({record.update_kind})"


def record_view(embed: Embedder, record: Record) -> RecordView:
    """One attack on one upload: its images, or why there are none."""
    cost = [f"{record.attack_seconds:.1f} s"]
    if record.diagnostics.get("iterations") is not None:
        cost.append(f"{record.diagnostics['iterations']} steps")
    problem = None
    if record.status != "ok":
        problem = f"{record.status}: {record.reason or 'no reason given'}"
    elif not record.images:
        problem = "not scored: the ground truth was not available"
    return RecordView(
        record.attack,
        POSITIONS.get(record.position, record.position),
        _where(record),
        ", ".join(cost),
        problem,
        [] if problem else [_pair(embed, record, k, s) for k, s in enumerate(record.images)],
        len(record.images) > SMALL_BATCH,
    )


def point_summary(trial: TrialResult, records: list[Record], total: int) -> Summary:
    """The one line a collapsed sweep point shows."""
    ok = [r for r in records if r.status == "ok" and r.metrics]
    accuracy = final_accuracy(trial)
    failed = len(records) - len(ok)
    note = [f"{failed} not scored"] if failed else []
    if trial.status != "complete":
        note.append(f"point {trial.status}")
    return Summary(
        f"point {trial.index + 1} of {total}: " if total > 1 else "",
        short_point(trial.point) if trial.point else "the run",
        score(max(best_image_psnr(r) for r in ok)) if ok else None,
        f"{accuracy:.3f}" if accuracy is not None else None,
        f"{len(records)} attacked upload{'s' if len(records) != 1 else ''}",
        ", ".join(note) or None,
    )


def gallery(embed: Embedder, results: RunResults) -> list[PointView]:
    """Every sweep point's attacked uploads, as collapsible sections."""
    trials = results.trials
    open_all = sum(len(r.images) for r in results.records) <= OPEN_IMAGES
    points = []
    for n, trial in enumerate(trials):
        records = sorted(
            (r for r in results.records if r.trial == trial.index),
            key=lambda r: (r.round, r.attack_index, r.client or -1),
        )
        problem = None
        if trial.status not in ("complete", "running"):
            problem = f"This point {trial.status}: {trial.error or 'no reason'}"
        points.append(
            PointView(
                point_summary(trial, records, len(trials)),
                problem,
                [record_view(embed, r) for r in records],
                open_all or n == 0,
            )
        )
    return points


def _strip_cell(
    embed: Embedder, trial: TrialResult, record: Record | None, original: int
) -> StripCell:
    """The reconstruction of ``original`` (an index into the batch) at ``trial``'s point."""
    point = ", ".join(str(v) for v in trial.point.values())
    if record is None or not record.images:
        reason = record.status if record else "point " + trial.status
        if trial.status == "complete" and record is None:
            reason = "no attack ran"
        return StripCell(Picture.absent(reason), point, point)
    image = next((im for im in record.images if im.original_index == original), record.images[0])
    return StripCell(_picture(embed, image.reconstruction_png), point, point, score(image.psnr))


def overview(embed: Embedder, results: RunResults) -> Strip | None:
    """For a sweep: one row per attack, the first attacked image's original and its
    reconstruction at every sweep point side by side (``None`` without a sweep).

    The same seed attacks the same client's same batch at every point, so a row shows
    one image (the reconstruction matched to the same original) under every setting;
    each is captioned with the point's swept values.
    """
    trials = results.trials
    if len(trials) < 2:
        return None
    rows = []
    for index in sorted({r.attack_index for r in results.records}):
        mine = [r for r in results.records if r.attack_index == index]
        first: dict[int, Record] = {}
        for r in sorted(mine, key=lambda r: (r.round, r.client or -1)):
            first.setdefault(r.trial, r)
        shown = next(
            (first[t.index] for t in trials if t.index in first and first[t.index].images), None
        )
        if shown is None:
            continue
        original = shown.images[0]
        cells = [StripCell(_picture(embed, original.original_png), "original", "original")]
        cells += [
            _strip_cell(embed, t, first.get(t.index), original.original_index) for t in trials
        ]
        head = f"{mine[0].attack} · attacker at the {mine[0].position} · " + _where(shown)
        rows.append(StripRow(head, cells))
    if not rows:
        return None
    return Strip(", ".join(k.rsplit(".", 1)[-1] for k in trials[0].point), rows)
