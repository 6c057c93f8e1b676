"""What ran: the scenario (as written and as resolved), versions, seed, times, machine."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fedsim.report.embed import Embedder, Text
from fedsim.report.rundir import RunFiles
from fedsim.results.schema import Environment, RunResults
from fedsim.results.table import short_point

RUN_FILES = {
    "results.json": "every record, trial and measurement",
    "metrics.csv": "one row per attacked upload",
    "sweep.csv": "one row per (sweep point, attack)",
    "scenario.toml": "the scenario as written",
    "scenario.resolved.json": "every sweep point's full scenario",
    "audit.json": "the c(M) audit",
    "flower.log": "Flower's log",
}


def duration(seconds: float | None) -> str:
    """``3 min 37 s`` (``-`` when unknown)."""
    if seconds is None:
        return "-"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


def _environment(env: Environment | None) -> list[tuple[str, str]]:
    if env is None:
        return [("software, machine", "not recorded (the run was made by an older fedsim)")]
    packages = ", ".join(f"{k} {v}" for k, v in env.packages.items() if v)
    memory = f", {env.memory_gib:.0f} GiB RAM" if env.memory_gib else ""
    return [
        ("software", f"Python {env.python}; {packages}"),
        (
            "machine",
            f"{env.host}: {env.platform} ({env.machine}), {env.cpus} CPUs"
            f"{memory}; torch threads {env.torch_threads}",
        ),
    ]


CLIENT_NOISE = {
    "seeded": "seeded (a simulation): the clients' DP noise is reproducible from the "
    "scenario's seed, so a server that knows the seed could regenerate it",
    "os-entropy": "from the operating system's entropy (a deployment): the server cannot "
    "know the clients' DP noise",
}


def _client_sent(results: RunResults) -> str | None:
    """What the clients' replies carried (each trial's ``client_sent``), once when every
    sweep point agrees, else per point; ``None`` when not recorded."""
    sent = {t.index: t.client_sent for t in results.trials if t.client_sent is not None}
    if not sent:
        return None
    listed = {index: ", ".join(names) or "nothing" for index, names in sent.items()}
    if len(set(listed.values())) == 1:
        return next(iter(listed.values()))
    return "; ".join(f"point {index + 1}: {names}" for index, names in listed.items())


def facts(run: RunFiles) -> list[tuple[str, str]]:
    """``(name, value)`` lines about the run."""
    results, scenario = run.results, run.first_scenario
    resolved = run.resolved or {}
    points = [short_point(t["point"]) for t in resolved.get("trials", [])]
    lines = [
        (
            "scenario",
            f"{results.scenario or '-'} ({resolved.get('source', 'source unknown')})",
        ),
        ("overrides", " ".join(f"--set {o}" for o in resolved.get("overrides", [])) or "none"),
        ("seed", str(scenario.get("seed", "-"))),
        (
            "sweep points",
            f"{len(points)}: " + "; ".join(points) if len(points) > 1 else "1 (no sweep)",
        ),
        ("status", results.status),
        ("started / finished", f"{results.started or '-'} / {results.finished or '-'}"),
        ("wall time", duration(results.wall_seconds)),
    ]
    if results.resumed:
        lines.append(("resumed", ", ".join(results.resumed)))
    if results.engine:
        lines.append(("engine", results.engine))
    truth = results.ground_truth_note or results.ground_truth
    if truth:
        lines.append(("scoring", truth))
    if results.client_noise:
        lines.append(("client noise", CLIENT_NOISE[results.client_noise]))
    sent = _client_sent(results)
    if sent is not None:
        lines.append(("what clients sent", sent))
    return lines + _environment(results.environment)


@dataclass(frozen=True)
class Provenance:
    """What ran: the :func:`facts`, the scenario as written (``scenario.toml``) and as
    resolved (the first sweep point's), each ``None`` when unknown, and the run's
    ``(file, what it holds)`` present in its directory."""

    facts: list[tuple[str, str]]
    written: Text | None
    resolved: Text | None
    files: list[tuple[str, str]]


def provenance(run: RunFiles, embed: Embedder) -> Provenance:
    """The facts, then the scenario as written and as resolved, and the run's files."""
    written = run.scenario_text
    return Provenance(
        facts(run),
        embed.text(written) if written is not None else None,
        embed.text(json.dumps(run.first_scenario, indent=1)) if run.first_scenario else None,
        [(name, what) for name, what in RUN_FILES.items() if (run.path / name).is_file()],
    )


PROTOCOLS = {
    "fedsgd": "FedSGD (one gradient step per upload)",
    "fedavg": "FedAvg (local epochs, weight deltas uploaded)",
}


def _with_params(entry: dict[str, Any]) -> str:
    """``name (key = value, …)`` of a scenario entry, as written (a swept value is a list)
    or resolved (parameters under ``params``)."""
    params = entry.get("params")
    if not isinstance(params, dict):
        params = {k: v for k, v in entry.items() if k != "name"}
    shown = ", ".join(f"{k} = {v}" for k, v in params.items())
    return f"{entry.get('name', '?')}" + (f" ({shown})" if shown else "")


def setup_sentence(run: RunFiles) -> str:
    """One plain sentence describing the federation, its defences and its attacks."""
    s = run.first_scenario
    if not s:
        return ""
    fed, model, data = s["federation"], s["model"], s["data"]
    raw = (run.resolved or {}).get("raw") or {}
    kind = model["name"] + (f" ({model['activation']})" if model.get("activation") else "")
    lines = [
        f"{fed['num_clients']} clients ({fed['clients_per_round']} per round) trained a {kind} "
        f"on {data['dataset']} ({data['image_size']}×{data['image_size']}) for {fed['rounds']} "
        f"round{'s' if fed['rounds'] != 1 else ''} of "
        f"{PROTOCOLS.get(fed['protocol'], fed['protocol'])}, batch size {fed['batch_size']}."
    ]
    sets = raw.get("defence_sets")
    if isinstance(sets, list) and sets:
        described = [
            f"{entry.get('label') or 'set'}: "
            + ("; ".join(_with_params(d) for d in entry.get("defences", [])) or "none")
            for entry in sets
            if isinstance(entry, dict)
        ]
        lines.append(f"Defence sets compared ({len(described)}): " + " | ".join(described) + ".")
    else:
        defences = raw.get("defences") or s.get("defences") or []
        lines.append(
            "Defences: "
            + ("; ".join(_with_params(d) for d in defences) if defences else "none")
            + "."
        )
    attacks = [
        f"{a['name']} at the {a['position']}"
        + (
            f" in round{'s' if len(a['rounds']) > 1 else ''} {', '.join(map(str, a['rounds']))}"
            if a.get("rounds")
            else " in every round"
        )
        for a in s.get("attacks", [])
    ]
    lines.append("Attacks: " + ("; ".join(attacks) if attacks else "none") + ".")
    return " ".join(lines)
