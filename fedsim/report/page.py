"""The whole report page, from a run directory to ``report.html`` (one self-contained file:
images embedded as ``data:`` URIs, styles inline, no script, no network), rendered from
the Jinja2 templates in ``templates/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fedsim
from fedsim.report.audit import audits
from fedsim.report.embed import Embedder
from fedsim.report.figures import SWEEP, plots
from fedsim.report.gallery import gallery, overview
from fedsim.report.leaderboard import leaderboard
from fedsim.report.leakage import GLOSSARY, attack_table, findings, legend, point_table
from fedsim.report.problems import problems
from fedsim.report.provenance import provenance, setup_sentence
from fedsim.report.render import render
from fedsim.report.rundir import ReportError, RunFiles, load_run
from fedsim.results.store import atomic_write

REPORT_NAME = "report.html"


@dataclass(frozen=True)
class Section:
    """One section of the page: its anchor, its title, the template (a file under
    ``templates/``) that renders it from ``data``; an ``optional`` section is left out
    when it has no data."""

    anchor: str
    title: str
    template: str
    data: object
    optional: bool = False


def build_page(run: RunFiles) -> str:
    """The report of ``run`` as one HTML document.

    Images and texts are embedded in the order the page shows them, within the caps of
    :mod:`fedsim.report.embed`; the problems (listed near the top) include the images
    that were not embedded, so they are gathered last.
    """
    results = run.results
    embed = Embedder(run.path)
    sections = [
        Section("summary", "In short", "summary.html", (setup_sentence(run), findings(results))),
        Section("reading", "How to read this page", "reading.html", GLOSSARY),
        Section(
            "audit",
            "Architecture audit: how much can this model leak?",
            "audit.html",
            audits(results),
            optional=True,
        ),
        Section(
            "glance", "One image across the sweep", "strip.html", overview(embed, results), True
        ),
        Section("sweep", "The sweep", "plots.html", plots(embed, results, SWEEP), True),
        Section(
            "leaderboard",
            "Defence leaderboard",
            "leaderboard.html",
            leaderboard(embed, results),
            optional=True,
        ),
        Section(
            "leakage",
            "Leakage per attack",
            "leakage.html",
            (legend(), attack_table(results), point_table(results)),
        ),
        Section("images", "Originals and reconstructions", "gallery.html", gallery(embed, results)),
        Section(
            "training", "Training", "plots.html", plots(embed, results, ("accuracy.png",)), True
        ),
        Section(
            "attacks",
            "Attack loss curves",
            "plots.html",
            plots(embed, results, ("loss_curves.png",)),
            True,
        ),
        Section("other", "Other plots", "plots.html", plots(embed, results, None), True),
        Section("run", "What ran", "provenance.html", provenance(run, embed)),
    ]
    found = problems(results, embed.refused)
    sections.insert(1, Section("problems", f"Problems ({len(found)})", "problems.html", found))
    return render(
        "page.html",
        name=results.scenario or run.path.name,
        status=results.status,
        on_client=results.ground_truth == "on-client",
        sections=[s for s in sections if s.data or not s.optional],
        version=fedsim.__version__,
        run_dir=str(run.path),
    )


def write_report(run_dir: Path) -> Path:
    """Build ``run_dir/report.html`` from the run's saved results; returns its path.

    Raises:
        ReportError: ``run_dir`` is not a readable run directory, or its
            ``results.json`` does not have the shape fedsim writes (a missing key, a
            value of the wrong type): one line naming what was wrong.
    """
    run = load_run(run_dir)
    try:
        page = build_page(run)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise ReportError(
            f"{run_dir}: results.json is not a fedsim results file ({type(exc).__name__}: {what})"
        ) from None
    path = run_dir / REPORT_NAME
    atomic_write(path, page)
    return path
