"""The audit on the console: one table per model, then c(M), the evidence and the advice."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from fedsim.audit.cm import ScenarioAudit


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def print_audit(audit: ScenarioAudit, console: Console) -> None:
    """Print ``audit`` (table, c(M), tolerance, gaps, warnings, advice)."""
    r = audit
    title = f"audit: {r.model} on {r.input_shape[0]}×{r.input_shape[1]}×{r.input_shape[2]}"
    if audit.point != "-":
        title += f" [{audit.point}]"
    table = Table(title=Text(title, style="table.title"))  # plain text: a point's values
    headers = ("layer", "n_i", "|Z_i|", "|W_i|", "rank(U_i)", "count", "rank−n", "weight",
               "contrib.")  # fmt: skip
    for header in headers:
        table.add_column(header, justify="left" if header == "layer" else "right")
    for a in r.layers:
        table.add_row(
            f"{a.index} {a.name}: {a.conv}", str(a.n), str(a.z), str(a.w), str(a.rank),
            str(a.count), str(a.deficit), f"{a.weight:.2f}", f"{a.contribution:.1f}",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"[bold]c(M) = {r.c_m:.1f}[/]  (0 = every layer's input determined; lower = less leakage)"
    )
    console.print(f"sample: {r.sample}")
    console.print(f"tolerance: {r.tolerance}; a gap kept/dropped ≥ 1e3 is called clear")
    for a in r.layers:
        console.print(
            f"  layer {a.index} ({a.method}, {a.seconds:.1f} s): smallest kept {_num(a.kept)}, "
            f"largest dropped {_num(a.dropped)}; {a.detail}",
            highlight=False,
        )
    for warning in r.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    for note in r.notes:
        console.print(f"[yellow]note:[/] {note}")
    for line in r.advice:
        console.print(f"• {line}", highlight=False)
