"""The ``fedsim`` command: ``run`` a scenario, list ``plugins``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


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
    run.add_argument("--out", type=Path, help="run directory to create (must not exist)")
    run.add_argument(
        "--scoring",
        choices=("shared-truth", "on-client"),
        default="shared-truth",
        help="where reconstructions are scored: with the true batch the clients send to "
        "the scorer (default), or on the clients, as on real machines",
    )
    sub.add_parser("plugins", help="list installed attacks and defences with their parameters")
    return parser


def _plugins(console: Console) -> int:
    from fedsim.registry import discover

    found = discover()
    for kind, plugins in (("attacks", found.attacks), ("defences", found.defences)):
        table = Table(title=kind, show_lines=True)
        for column in ("name", "summary", "parameters (default)"):
            table.add_column(column)
        for name, cls in plugins.items():
            params = "\n".join(
                f"{field} = {info.default!r}  {info.description or ''}".rstrip()
                for field, info in cls.Params.model_fields.items()
            )
            summary = cls.summary
            if kind == "defences":
                summary += "\nformal guarantee: " + ("yes" if cls.formal_guarantee else "no")
            table.add_row(name, summary, params or "-")
        console.print(table)
    for where, error in found.broken.items():
        console.print(f"[red]could not load plugin {where}:[/] {error}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    if args.command == "plugins":
        return _plugins(console)

    from fedsim.run import RunError, run_scenario
    from fedsim.scenario import ScenarioError

    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_dir, status = run_scenario(
            args.scenario, args.overrides, args.out, console, args.scoring
        )
    except (ScenarioError, RunError) as exc:
        print(f"fedsim: {exc}", file=sys.stderr)
        return EXIT_USAGE
    console.print(f"results in [bold]{run_dir}[/] ({status})")
    if status == "interrupted":
        _abandon_federation()
    return EXIT_OK if status == "complete" else EXIT_FAILED


def _interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM stops a run like Ctrl-C: results so far are kept, status ``interrupted``."""
    raise KeyboardInterrupt


def _abandon_federation() -> None:
    """Exit now after Ctrl-C: Flower's ServerApp thread may still wait for replies
    that will never come, and would keep the process alive. Results are on disk."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    raise SystemExit(main())
