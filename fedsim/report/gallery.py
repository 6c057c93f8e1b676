"""Originals beside reconstructions: one collapsible section per sweep point, one block
per attacked upload, each image with its PSNR, SSIM and label under it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsim.report.html import Html, details, image, join, tag, text
from fedsim.report.leakage import POSITIONS, best_image_psnr, format_psnr, verdict
from fedsim.results.points import final_accuracy
from fedsim.results.table import short_point

OPEN_IMAGES = 24
"""Runs with at most this many reconstructions show every sweep point opened; larger ones
open the first only."""
SMALL_BATCH = 4
"""Batches larger than this are drawn with smaller thumbnails."""


def _label(record: dict[str, Any], k: int, correct: bool | None) -> str:
    recovered = record["diagnostics"].get("recovered_labels")
    guess = f" ({recovered[k]})" if isinstance(recovered, list) and k < len(recovered) else ""
    if correct is None:
        return "label not guessed"
    return f"label {'right' if correct else 'wrong'}{guess}"


def _thumb(run_dir: Path, score: dict[str, Any], key: str, alt: str, caption: object) -> Html:
    file = score.get(key)
    picture = image(run_dir / file, alt) if file else tag("span", "not saved", class_="missing")
    return tag("figure", join([picture, tag("figcaption", caption)]))


def _pair(run_dir: Path, record: dict[str, Any], k: int, score: dict[str, Any]) -> Html:
    """One original beside its reconstruction, the scores under the reconstruction."""
    words, css = verdict(score["psnr"])
    images = [
        _thumb(run_dir, score, f"{role}_png", f"{role} {k + 1}", role)
        for role in ("original", "reconstruction")
    ]
    caption = join(
        [
            tag("b", format_psnr(score["psnr"]), class_=css, title=words),
            f" · SSIM {score['ssim']:.3f}",
            Html("<br>"),
            _label(record, k, score["label_correct"]),
        ]
    )
    return tag(
        "div",
        join([tag("div", join(images), class_="twins"), tag("div", caption, class_="scores")]),
        class_="pair",
    )


def _where(record: dict[str, Any]) -> str:
    upload = (
        "the round's aggregate"
        if record["client"] is None
        else f"client {record['client']}'s upload"
    )
    return f"round {record['round']}, {upload} ({record['update_kind']})"


def record_block(run_dir: Path, record: dict[str, Any]) -> Html:
    """One attack on one upload: its images, or why there are none."""
    position = POSITIONS.get(record["position"], record["position"])
    head = join([tag("b", record["attack"]), f" · attacker at {position} · {_where(record)}"])
    diagnostics = record["diagnostics"]
    cost = [f"{record['attack_seconds']:.1f} s"]
    if diagnostics.get("iterations") is not None:
        cost.append(f"{diagnostics['iterations']} steps")
    if record["status"] != "ok":
        body = tag(
            "p", f"{record['status']}: {record['reason'] or 'no reason given'}", class_="problem"
        )
    elif not record["images"]:
        body = tag("p", "not scored: the ground truth was not available", class_="problem")
    else:
        small = "small" if len(record["images"]) > SMALL_BATCH else None
        body = tag(
            "div",
            join(_pair(run_dir, record, k, s) for k, s in enumerate(record["images"])),
            class_=f"pairs {small or ''}".strip(),
        )
    return tag(
        "section",
        join([tag("h4", join([head, tag("span", " · " + ", ".join(cost), class_="muted")])), body]),
        class_="record",
    )


def point_summary(trial: dict[str, Any], records: list[dict[str, Any]], total: int) -> Html:
    """The one line a collapsed sweep point shows."""
    ok = [r for r in records if r["status"] == "ok" and r["metrics"]]
    parts: list[Html] = [tag("b", short_point(trial["point"]) if trial["point"] else "the run")]
    if total > 1:
        parts.insert(0, text(f"point {trial['index'] + 1} of {total}: "))
    if ok:
        psnr = max(best_image_psnr(r) for r in ok)
        words, css = verdict(psnr)
        parts.append(
            join([" — best image ", tag("span", f"{format_psnr(psnr)} ({words})", class_=css)])
        )
    accuracy = final_accuracy(trial)
    if accuracy is not None:
        parts.append(text(f" · test accuracy {accuracy:.3f}"))
    parts.append(text(f" · {len(records)} attacked upload{'s' if len(records) != 1 else ''}"))
    failed = len(records) - len(ok)
    if failed or trial["status"] != "complete":
        note = [f"{failed} not scored"] if failed else []
        if trial["status"] != "complete":
            note.append(f"point {trial['status']}")
        parts.append(tag("span", " · " + ", ".join(note), class_="problem"))
    return join(parts)


def gallery(run_dir: Path, results: dict[str, Any]) -> Html:
    """Every sweep point's attacked uploads, as collapsible sections."""
    trials = results["trials"]
    if not trials:
        return tag("p", "No sweep point ran.")
    open_all = sum(len(r["images"]) for r in results["records"]) <= OPEN_IMAGES
    sections = []
    for n, trial in enumerate(trials):
        records = sorted(
            (r for r in results["records"] if r["trial"] == trial["index"]),
            key=lambda r: (r["round"], r["attack_index"], r["client"] or -1),
        )
        body: list[Html] = []
        if trial["status"] not in ("complete", "running"):
            body.append(
                tag(
                    "p",
                    f"This point {trial['status']}: {trial['error'] or 'no reason'}",
                    class_="problem",
                )
            )
        body += [record_block(run_dir, r) for r in records]
        if not records:
            body.append(tag("p", "No attack ran at this point."))
        sections.append(
            details(
                point_summary(trial, records, len(trials)),
                join(body),
                is_open=open_all or n == 0,
                class_="point",
            )
        )
    return join(sections)


def overview(run_dir: Path, results: dict[str, Any]) -> Html | None:
    """For a sweep: one row per attack, the first attacked image's original and its
    reconstruction at every sweep point side by side (``None`` without a sweep).

    The same seed attacks the same client's same batch at every point, so a row shows
    one image (the reconstruction matched to the same original) under every setting;
    each is captioned with the point's swept values.
    """
    trials = results["trials"]
    if len(trials) < 2:
        return None
    keys = ", ".join(k.rsplit(".", 1)[-1] for k in trials[0]["point"])
    rows = []
    for index in sorted({r["attack_index"] for r in results["records"]}):
        mine = [r for r in results["records"] if r["attack_index"] == index]
        first = {}
        for r in sorted(mine, key=lambda r: (r["round"], r["client"] or -1)):
            first.setdefault(r["trial"], r)
        shown = next(
            (
                first[t["index"]]
                for t in trials
                if t["index"] in first and first[t["index"]]["images"]
            ),
            None,
        )
        if shown is None:
            continue
        original = shown["images"][0]
        cells = [_thumb(run_dir, original, "original_png", "original", "original")]
        for trial in trials:
            rec = first.get(trial["index"])
            point = ", ".join(str(v) for v in trial["point"].values())
            if rec is None or not rec["images"]:
                reason = rec["status"] if rec else "point " + trial["status"]
                if trial["status"] == "complete" and rec is None:
                    reason = "no attack ran"
                cells.append(
                    tag(
                        "figure",
                        join([tag("span", reason, class_="missing"), tag("figcaption", point)]),
                    )
                )
                continue
            score = next(
                (im for im in rec["images"] if im["original_index"] == original["original_index"]),
                rec["images"][0],
            )
            words, css = verdict(score["psnr"])
            cells.append(
                _thumb(
                    run_dir,
                    score,
                    "reconstruction_png",
                    point,
                    join(
                        [
                            point,
                            Html("<br>"),
                            tag("b", format_psnr(score["psnr"]), class_=css, title=words),
                        ]
                    ),
                )
            )
        head = f"{mine[0]['attack']} · attacker at the {mine[0]['position']} · " + _where(shown)
        rows.append(join([tag("h4", head), tag("div", join(cells), class_="strip")]))
    if not rows:
        return None
    return join(
        [tag("p", f"Under each reconstruction: {keys}; then its PSNR.", class_="muted"), *rows]
    )
