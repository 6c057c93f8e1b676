"""The c(M) architecture audit (``results.json``'s ``audit``), as a table with its advice."""

from __future__ import annotations

from dataclasses import dataclass

from fedsim.audit.cm import ScenarioAudit
from fedsim.report.view import Table
from fedsim.results.schema import RunResults

HEADERS = [
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


@dataclass(frozen=True)
class AuditView:
    """One audited model: ``title`` (model, input shape, sweep point), c(M) as shown, the
    sample it was measured on, the per-layer table (``None`` without layers), the
    ``(kind, text)`` warnings and notes, and the advice lines."""

    title: str
    c_m: str
    sample: str
    layers: Table | None
    notes: list[tuple[str, str]]
    advice: list[str]


def audit_view(audit: ScenarioAudit) -> AuditView:
    """One model's audit: c(M), the per-layer table, warnings, notes and advice."""
    shape = "×".join(str(s) for s in audit.input_shape)
    title = f"{audit.model} on {shape} inputs"
    if audit.point != "-":
        title += f" [{audit.point}]"
    rows = [
        [
            f"{a.index} {a.name}: {a.conv}",
            a.n,
            a.z,
            a.w,
            a.rank,
            a.count,
            a.deficit,
            f"{a.weight:.2f}",
            f"{a.contribution:.1f}",
        ]
        for a in audit.layers
    ]
    notes = [
        *(("warning", w) for w in audit.warnings),
        *(("note", n) for n in audit.notes),
    ]
    return AuditView(
        title,
        f"{audit.c_m:.1f}",
        audit.sample,
        Table.of(HEADERS, rows, "numbers") if rows else None,
        notes,
        list(audit.advice),
    )


def audits(results: RunResults) -> list[AuditView]:
    """Every audited model (none when no audit ran)."""
    return [audit_view(a) for a in results.audit or []]
