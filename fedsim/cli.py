"""The ``fedsim`` command: ``run`` a scenario, rebuild a run's ``report``, ``audit`` a
model, list ``plugins``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

    from fedsim.api import Attack, Defence
    from fedsim.data.source import DatasetSource

from fedsim.stopping import REQUEST, Interrupted, describe, exit_status, interrupt_on_sigterm

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
WIDE = 200
"""Console width when the output is not a terminal (rich would assume 80 columns)."""
STAGE_NAMES = {
    "upload": "the client's upload",
    "training": "the client's training",
    "aggregate": "the server's aggregate",
    "secure_aggregation": "the exchange of uploads (masked: secure aggregation)",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedsim",
        description="Simulate federated learning on Flower with gradient-inversion attacks "
        "and defences.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario file end to end")
    run.add_argument("scenario", type=Path, help="scenario TOML file")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key, e.g. federation.rounds=2 or 'defences[0].sigma=[0, 0.1]'",
    )
    where = run.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="run directory to create (must not exist)")
    where.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="finish an interrupted run in RUN_DIR: completed sweep points are not run again "
        "(the scenario and --set overrides must give the same points)",
    )
    run.add_argument(
        "--scoring",
        choices=("shared-truth", "on-client"),
        default="shared-truth",
        help="where reconstructions are scored: with the true batch the clients send to "
        "the scorer (default), or on the clients, as on real machines",
    )
    report = sub.add_parser("report", help="rebuild RUN_DIR/report.html from the saved results")
    report.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")
    sub.add_parser("plugins", help="list installed attacks and defences with their parameters")
    audit = sub.add_parser("audit", help="c(M) architecture audit of a scenario's model(s)")
    audit.add_argument("scenario", type=Path, help="scenario TOML file")
    audit.add_argument("--json", action="store_true", help="print the audit as JSON")
    audit.add_argument("--dense", action="store_true", help="use the dense reference path")
    audit.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key, as for run",
    )  # fmt: skip
    return parser


def _audit(args: argparse.Namespace, console: Console) -> int:
    from fedsim.audit.render import print_audit
    from fedsim.audit.runner import audit_scenario, audits_json
    from fedsim.scenario import ScenarioError, load

    try:
        _raw, trials = load(args.scenario, args.overrides)
        audits = audit_scenario(trials, str(args.scenario), "dense" if args.dense else None)
    except ScenarioError as exc:
        print(f"fedsim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(audits_json(audits))
    else:
        for audit in audits:
            print_audit(audit, console)
    return EXIT_OK


def _report(args: argparse.Namespace, console: Console) -> int:
    from fedsim.report import ReportError, write_report

    try:
        path = write_report(args.run_dir)
    except ReportError as exc:
        print(f"fedsim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    console.print(f"report: {path}", highlight=False)
    return EXIT_OK


def _plugins(console: Console) -> int:
    from fedsim.registry import discover

    found = discover()
    failed: dict[str, str] = {}
    for kind, plugins in (("attacks", found.attacks), ("defences", found.defences)):
        table = Table(title=kind, show_lines=True)
        for column in ("name", "summary", "parameters (default)"):
            table.add_column(column)
        for name, cls in plugins.items():
            try:
                row = _plugin_row(cls)
            except Exception as exc:  # a third-party plugin's class may be faulty
                failed[f"{kind}:{name}"] = f"{type(exc).__name__}: {exc}"
                continue
            table.add_row(name, *row)
        console.print(table)
    console.print(_data_and_models(found.datasets))
    console.print(_threat_defaults())
    for where, error in {**found.broken, **failed}.items():
        console.print(f"[red]could not load plugin {escape(where)}:[/] {escape(error)}")
    for where, clash in found.clashes.items():
        console.print(f"[bold red]plugin name clash {escape(where)}:[/] {escape(clash)}")
    return EXIT_OK


def _plugin_row(cls: type[Attack[Any]] | type[Defence[Any]]) -> tuple[str, str]:
    """A plugin's summary and parameters for ``fedsim plugins``."""
    from fedsim.api import Attack

    params = "\n".join(
        f"{field} = {_default(info)}  {info.description or ''}".rstrip()
        for field, info in cls.Params.model_fields.items()
    )
    summary = str(cls.summary)
    if issubclass(cls, Attack):
        summary += "\n" + _knowledge_summary(cls)
    else:
        summary += "\nacts at: " + " or ".join(STAGE_NAMES[s] for s in cls.stages)
        summary += "\nformal guarantee: " + (
            "yes (clipping + noise + accountant)" if cls.formal_guarantee else "no"
        )
    return summary, params or "-"


def _data_and_models(datasets: dict[str, type[DatasetSource]]) -> Table:
    """The ``fedsim.datasets`` plugins (``[data] dataset``) and the ``fedsim.models``
    entry points (``[model] name``), for ``fedsim plugins``."""
    from fedsim.registry import registered_models

    table = Table(title=escape("datasets ([data] dataset) and models ([model] name)"))
    for column in ("name", "kind", "what"):
        table.add_column(column)
    for name, cls in datasets.items():
        table.add_row(name, "dataset", escape(cls.summary))
    for name, path in registered_models().items():
        table.add_row(name, "model", path)
    return table


def _default(info: FieldInfo) -> str:
    """A parameter's default as shown by ``fedsim plugins`` (``required`` if it has none)."""
    if info.is_required():
        return "(required)"
    return repr(info.get_default(call_default_factory=True))


def _knowledge_summary(cls: type[Attack[Any]]) -> str:
    """An attack's needed and usable threat-model flags, for ``fedsim plugins`` (with its
    default parameters; an attack with required parameters shows its class's ``needs``)."""

    from fedsim.threat import ordered

    on_gradient = cls.knowledge_needed("gradient")
    on_delta = cls.knowledge_needed("delta") - on_gradient
    needs = ", ".join(ordered(on_gradient)) or "-"
    if on_delta:
        needs += f" (+ {', '.join(ordered(on_delta))} on FedAvg deltas)"
    uses = ", ".join(ordered(cls.uses - on_gradient - on_delta)) or "-"
    return f"needs: {needs}\nuses if known: {uses}"


def _threat_defaults() -> Table:
    """What each attacker position knows by default (scenario keys ``knows_<flag>``)."""
    from fedsim.threat import DEFAULT_KNOWLEDGE, KNOWLEDGE, KNOWLEDGE_DESCRIPTIONS, knowledge_key

    table = Table(
        title=escape("threat model: what an attacker knows by default ([[attacks]] keys)")
    )
    table.add_column("key")
    table.add_column("what")
    for position in DEFAULT_KNOWLEDGE:
        table.add_column(position)
    for flag in KNOWLEDGE:
        table.add_row(
            knowledge_key(flag),
            KNOWLEDGE_DESCRIPTIONS[flag],
            *("yes" if flag in known else "no" for known in DEFAULT_KNOWLEDGE.values()),
        )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    """The ``fedsim`` command; returns its exit status. SIGINT or SIGTERM ends it
    with one line and status 130 or 143 (a run first writes its results)."""
    interrupt_on_sigterm()
    try:
        return _command(_parser().parse_args(argv))
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"fedsim: interrupted by {describe(signum)}", file=sys.stderr)
        return exit_status(signum)


def _command(args: argparse.Namespace) -> int:
    console = Console()
    if not console.is_terminal:  # a log file: keep the tables' rows on one line each
        console = Console(width=max(console.width, WIDE))
    if args.command == "plugins":
        return _plugins(console)
    if args.command == "audit":
        return _audit(args, console)
    if args.command == "report":
        return _report(args, console)
    return _run(args, console)


def _run(args: argparse.Namespace, console: Console) -> int:
    from fedsim.run import RunError, run_scenario
    from fedsim.scenario import ScenarioError

    try:
        run_dir, status = run_scenario(
            args.scenario,
            args.overrides,
            args.out,
            console,
            args.scoring,
            resume=args.resume,
        )
    except (ScenarioError, RunError) as exc:
        print(f"fedsim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    console.print(f"results in [bold]{escape(str(run_dir))}[/] ({status})")
    code = EXIT_OK if status == "complete" else EXIT_FAILED
    if REQUEST.signum is not None:  # the run stopped (or ended) after a signal
        code = exit_status(REQUEST.signum)
    if REQUEST.abandoned:  # a federation thread is still running: do not wait for it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
