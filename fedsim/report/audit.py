"""The c(M) architecture audit (``results.json["audit"]``), as a table with its advice."""

from __future__ import annotations

from typing import Any

from fedsim.report.html import Html, join, table, tag

INTRO = (
    "Before the federation ran, fedsim measured how much of each convolution layer's input "
    "the model's gradient can pin down (COPA's c(M)). Each layer contributes (rank(U) − n), "
    "the number of input directions its weight and gradient constraints cannot see, "
    "weighted more for layers near the input. c(M) = 0 means the gradient determines the "
    "input completely, so an analytic attack (R-GAP, COPA) can rebuild one training image "
    "exactly; the more negative, the less leaks."
)


def audit_block(audit: dict[str, Any]) -> Html:
    """One model's audit: c(M), the per-layer table, warnings, notes and advice."""
    shape = "×".join(str(s) for s in audit["input_shape"])
    title = f"{audit['model']} on {shape} inputs"
    if audit.get("point", "-") != "-":
        title += f" [{audit['point']}]"
    rows = [
        [
            f"{a['index']} {a['name']}: {a['conv']}",
            a["n"],
            a["z"],
            a["w"],
            a["rank"],
            a["count"],
            a["deficit"],
            f"{a['weight']:.2f}",
            f"{a['contribution']:.1f}",
        ]
        for a in audit["layers"]
    ]
    headers = [
        "layer",
        "inputs n",
        "outputs |Z|",
        "weights |W|",
        "rank(U)",
        "count bound",
        "rank − n",
        "weight",
        "contribution",
    ]
    parts: list[Html] = [
        tag("h3", title),
        tag(
            "p",
            join(
                [
                    "c(M) = ",
                    tag("b", f"{audit['c_m']:.1f}", class_="big"),
                    f"  (sample: {audit['sample']})",
                ]
            ),
        ),
    ]
    if rows:
        parts.append(table(headers, rows, class_="numbers"))
    notes = [
        *(("warning", w) for w in audit.get("warnings", [])),
        *(("note", n) for n in audit.get("notes", [])),
    ]
    if notes:
        parts.append(
            tag(
                "ul",
                join(tag("li", join([tag("b", k), f": {v}"])) for k, v in notes),
                class_="problems",
            )
        )
    parts.append(tag("h4", "What it means"))
    parts.append(tag("ul", join(tag("li", line) for line in audit.get("advice", []))))
    return tag("div", join(parts), class_="audit")


def audit_section(results: dict[str, Any]) -> Html | None:
    """Every audited model, or ``None`` when no audit ran."""
    audits = results.get("audit")
    if not audits:
        return None
    return join([tag("p", INTRO), *(audit_block(a) for a in audits)])
