"""The whole report page, from a run directory to ``report.html`` (one self-contained file:
images embedded as ``data:`` URIs, styles inline, no script, no network)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from string import Template
from typing import Any

import fedsim
from fedsim.report.audit import audit_section
from fedsim.report.figures import SWEEP, plots
from fedsim.report.gallery import gallery, overview
from fedsim.report.html import Html, join, tag
from fedsim.report.leakage import attack_table, findings, glossary, legend, point_table
from fedsim.report.problems import problems, problems_section
from fedsim.report.provenance import provenance, setup_sentence
from fedsim.report.rundir import RunFiles, load_run
from fedsim.results.store import atomic_write

REPORT_NAME = "report.html"
LEAD = (
    "fedsim simulated federated learning: clients trained a shared model on their own private "
    "images and sent only updates to a server. Attackers tried to rebuild the clients' images "
    "from what they could observe. This page shows how well they did, what the defences cost, "
    "and what ran."
)
GLANCE_INTRO = (
    "The same private image (first on the left) as each attack rebuilt it at every setting "
    "of the sweep, in the order the scenario lists them."
)
ON_CLIENT = (
    "This run was scored on the clients: the private originals never left them, so only "
    "the reconstructions are shown."
)
SWEEP_INTRO = "One federation ran per setting of the swept parameters."
LEAKAGE_INTRO = (
    "One row per attack (and sweep point), averaged over the uploads it attacked. The PSNR "
    "colour says how recognisable the reconstructions are:"
)
GALLERY_INTRO = (
    "Each block is one attack on one observed upload: every private image (left of each pair) "
    "beside the attacker's reconstruction (right), with its scores under it. Click a sweep "
    "point to open or close it."
)


Section = tuple[str, str, Html]
"""``(anchor, title, content)`` of one section of the page."""


def _section(anchor: str, title: str, *parts: object) -> Section:
    return (
        anchor,
        title,
        join(p if isinstance(p, Html) else tag("p", p, class_="intro") for p in parts),
    )


def _add_plots(
    sections: list[Section],
    run_dir: Path,
    results: dict[str, Any],
    anchor: str,
    title: str,
    names: tuple[str, ...] | None,
    intro: str = "",
) -> None:
    """Append a section of the plots ``names`` (see :func:`plots`) if the run has any."""
    figures = plots(run_dir, results, names)
    if figures is not None:
        sections.append(_section(anchor, title, *([intro] if intro else []), figures))


def build_page(run: RunFiles) -> str:
    """The report of ``run`` as one HTML document."""
    results, here = run.results, run.path
    name = results.get("scenario", run.path.name)
    status = results.get("status", "running")
    sections: list[Section] = [
        _section(
            "summary",
            "In short",
            setup_sentence(run),
            tag("ul", join(tag("li", f) for f in findings(results)), class_="findings"),
        ),
        _section("problems", f"Problems ({len(problems(results))})", problems_section(results)),
        _section("reading", "How to read this page", glossary()),
    ]
    audit = audit_section(results)
    if audit is not None:
        sections.append(
            _section("audit", "Architecture audit: how much can this model leak?", audit)
        )
    strip = overview(here, results)
    if strip is not None:
        sections.append(_section("glance", "One image across the sweep", GLANCE_INTRO, strip))
    _add_plots(sections, here, results, "sweep", "The sweep", SWEEP, SWEEP_INTRO)
    tables = [attack_table(results), point_table(results)]
    sections.append(
        _section(
            "leakage",
            "Leakage per attack",
            LEAKAGE_INTRO,
            legend(),
            *(t for t in tables if t is not None),
        )
    )
    on_client = [ON_CLIENT] if results.get("ground_truth") == "on-client" else []
    sections.append(
        _section(
            "images",
            "Originals and reconstructions",
            GALLERY_INTRO,
            *on_client,
            gallery(here, results),
        )
    )
    _add_plots(sections, here, results, "training", "Training", ("accuracy.png",))
    _add_plots(sections, here, results, "attacks", "Attack loss curves", ("loss_curves.png",))
    _add_plots(sections, here, results, "other", "Other plots", None)
    sections.append(_section("run", "What ran", provenance(run)))
    header = join(
        [
            tag("h1", join([f"{name} ", tag("span", status, class_=f"status {status}")])),
            tag("p", LEAD, class_="lead"),
            tag("nav", join(tag("a", title, href=f"#{anchor}") for anchor, title, _ in sections)),
        ]
    )
    body = join(
        [
            header,
            *(
                tag("section", join([tag("h2", title), content]), id=anchor)
                for anchor, title, content in sections
            ),
            tag(
                "footer",
                f"Written by fedsim {fedsim.__version__}. Rebuild it with: "
                f"fedsim report {run.path}",
            ),
        ]
    )
    template = Template(resources.files("fedsim.report").joinpath("page.html").read_text("utf-8"))
    return template.substitute(title=f"fedsim report: {name}", body=body)


def write_report(run_dir: Path) -> Path:
    """Build ``run_dir/report.html`` from the run's saved results; returns its path.

    Raises:
        ReportError: ``run_dir`` is not a readable run directory.
    """
    page = build_page(load_run(run_dir))
    path = run_dir / REPORT_NAME
    atomic_write(path, page)
    return path
