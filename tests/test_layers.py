"""fedsim's layers, as docs/architecture.md draws them: no module imports one above it.

Every ``fedsim`` module (and the built-in plugins) is assigned the layer of the longest
prefix in :data:`LAYERS`; an import (at module level or inside a function) of a module in a
higher layer fails the test, as does a module that no prefix covers (a new module must be
placed on the map). Imports are read from the source with :mod:`ast`, so nothing is run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"fedsim": ROOT / "fedsim", "fedsim_plugins": ROOT / "plugins" / "fedsim_plugins"}

LAYERS: list[list[str]] = [
    # 0: vocabulary with no fedsim dependencies
    ["fedsim.threat", "fedsim.stopping", "fedsim.metrics", "fedsim.models.errors"],
    # 1: the plugin contracts
    ["fedsim.api"],
    # 2: engines and helpers plugins build on; data sources; import-path models
    [
        "fedsim.analytic",
        "fedsim.inversion",
        "fedsim.privacy",
        "fedsim.data",
        "fedsim.training.racecar",
        "fedsim.models.imports",
    ],
    # 3: discovery of installed plugins (attacks, defences, datasets, models)
    ["fedsim.registry"],
    # 4: the model zoo and the deployed clients' allow-list, through the registry
    ["fedsim.models"],
    # 5: the scenario: its sections, sweeps and semantic checks
    ["fedsim.scenario"],
    # 6: what a scenario builds before any federation runs, and the checks that build it
    [
        "fedsim.trial_inputs",
        "fedsim.scenario.preflight",
        "fedsim.training",
        "fedsim.perceptual",
        "fedsim.models.checkpoint",
    ],
    # 7: the c(M) audit and the results on disk
    ["fedsim.audit", "fedsim.results"],
    # 8: the Flower apps and the simulation around them
    ["fedsim.federation"],
    # 9: the HTML report, from results on disk
    ["fedsim.report"],
    # 10: one run of a scenario
    ["fedsim.run"],
    # 11: entry points: the command line, the deployment engine's apps, the built-in plugins
    ["fedsim.cli", "fedsim.deployment", "fedsim_plugins", "fedsim.__main__"],
]
PACKAGE_ROOT = "fedsim"  # fedsim/__init__.py: the version only, importable from anywhere


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def layer_of(module: str) -> int | None:
    """The layer of the longest prefix in :data:`LAYERS` that covers ``module``."""
    best: tuple[int, int] | None = None
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (
                best is None or len(prefix) > best[0]
            ):
                best = (len(prefix), level)
    return None if best is None else best[1]


def imported(module: str, path: Path) -> set[str]:
    """The fedsim modules ``module`` imports anywhere in its source."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES and name != module}


def test_every_module_is_on_the_map() -> None:
    unplaced = sorted(m for m in MODULES if m != PACKAGE_ROOT and layer_of(m) is None)
    assert not unplaced, f"modules not placed in a layer of tests/test_layers.py: {unplaced}"


@pytest.mark.parametrize("module", sorted(set(MODULES) - {PACKAGE_ROOT}))
def test_no_module_imports_one_above_it(module: str) -> None:
    level = layer_of(module)
    if level is None:
        pytest.skip("not on the map (test_every_module_is_on_the_map fails)")
    upward = sorted(
        f"{target} (layer {layer_of(target)})"
        for target in imported(module, MODULES[module])
        if target != PACKAGE_ROOT and (layer_of(target) or 0) > level
    )
    assert not upward, f"{module} (layer {level}) imports above itself: {upward}"


def test_the_checker_sees_function_local_and_relative_imports(tmp_path: Path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from fedsim.run import run_scenario\n", encoding="utf-8")
    assert imported("fedsim.federation.x", source) == {"fedsim.run"}
    source.write_text("from .. import scenario\n", encoding="utf-8")
    assert imported("fedsim.federation.x", source) == {"fedsim", "fedsim.scenario"}
