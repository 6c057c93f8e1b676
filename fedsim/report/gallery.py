"""Originals beside reconstructions: one collapsible section per sweep point, one block
per attacked upload, each image with its PSNR, SSIM and label under it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedsim.report.html import Html, details, image, join, tag
from fedsim.report.leakage import POSITIONS, best_image_psnr, format_psnr, verdict
from fedsim.results.points import final_accuracy
from fedsim.results.table import short_point

OPEN_POINTS = 3
"""Sweeps with at most this many points show every point opened; larger ones open the first."""
SMALL_BATCH = 4
"""Batches larger than this are drawn with smaller thumbnails."""


def _label(record: dict[str, Any], k: int, correct: bool | None) -> str:
    recovered = record["diagnostics"].get("recovered_labels")
    guess = f" ({recovered[k]})" if isinstance(recovered, list) and k < len(recovered) else ""
    if correct is None:
        return "label not guessed"
    return f"label {'right' if correct else 'wrong'}{guess}"


def _pair(run_dir: Path, record: dict[str, Any], k: int, score: dict[str, Any]) -> Html:
    """One original beside its reconstruction, the scores under the reconstruction."""
    words, css = verdict(score["psnr"])
    images = []
    for key, role in (("original_png", "original"), ("reconstruction_png", "reconstruction")):
        file = score.get(key)
        picture = image(run_dir / file, f"{role} {k + 1}") if file else tag(
            "span", "not saved (output.save_images = false)", class_="missing")  # fmt: skip
        images.append(tag("figure", join([picture, tag("figcaption", role)])))
    caption = join([
        tag("b", format_psnr(score["psnr"]), class_=css, title=words),
        f" · SSIM {score['ssim']:.3f}", tag("br", ""), _label(record, k, score["label_correct"]),
    ])  # fmt: skip
    return tag("div", join([tag("div", join(images), class_="twins"),
                            tag("div", caption, class_="scores")]), class_="pair")  # fmt: skip


def _where(record: dict[str, Any]) -> str:
    upload = "the round's aggregate" if record["client"] is None else f"client {record['client']}'s upload"
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
        body = tag("p", f"{record['status']}: {record['reason'] or 'no reason given'}",
                   class_="problem")  # fmt: skip
    elif not record["images"]:
        body = tag("p", "not scored: the ground truth was not available", class_="problem")
    else:
        small = "small" if len(record["images"]) > SMALL_BATCH else None
        body = tag("div", join(_pair(run_dir, record, k, s) for k, s in enumerate(record["images"])),
                   class_=f"pairs {small or ''}".strip())  # fmt: skip
    return tag("section", join([tag("h4", join([head, tag("span", " · " + ", ".join(cost),
                                                          class_="muted")])), body]),
               class_="record")  # fmt: skip


def point_summary(trial: dict[str, Any], records: list[dict[str, Any]], total: int) -> Html:
    """The one line a collapsed sweep point shows."""
    ok = [r for r in records if r["status"] == "ok" and r["metrics"]]
    parts: list[Html] = [tag("b", short_point(trial["point"]) if trial["point"] else "the run")]
    if total > 1:
        parts.insert(0, Html(f"point {trial['index'] + 1} of {total}: "))
    if ok:
        psnr = max(best_image_psnr(r) for r in ok)
        words, css = verdict(psnr)
        parts.append(join([" — best image ", tag("span", f"{format_psnr(psnr)} ({words})",
                                                    class_=css)]))  # fmt: skip
    accuracy = final_accuracy(trial)
    if accuracy is not None:
        parts.append(Html(f" · test accuracy {accuracy:.3f}"))
    parts.append(Html(f" · {len(records)} attacked upload{'s' if len(records) != 1 else ''}"))
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
    sections = []
    for n, trial in enumerate(trials):
        records = sorted((r for r in results["records"] if r["trial"] == trial["index"]),
                         key=lambda r: (r["round"], r["attack_index"], r["client"] or -1))  # fmt: skip
        body: list[Html] = []
        if trial["status"] not in ("complete", "running"):
            body.append(tag("p", f"This point {trial['status']}: {trial['error'] or 'no reason'}",
                            class_="problem"))  # fmt: skip
        body += [record_block(run_dir, r) for r in records]
        if not records:
            body.append(tag("p", "No attack ran at this point."))
        sections.append(details(point_summary(trial, records, len(trials)), join(body),
                                is_open=len(trials) <= OPEN_POINTS or n == 0, class_="point"))  # fmt: skip
    return join(sections)
