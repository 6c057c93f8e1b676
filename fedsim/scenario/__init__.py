"""Scenario files: TOML → validated :class:`Scenario` objects, one per sweep point.

A value given as a list where the schema expects a scalar (e.g. a defence's
``sigma = [0.0, 0.01, 0.1]``) is a sweep axis; several axes form a grid.
Every error is a :class:`ScenarioError` whose message is one line naming the
file and the key path.

:mod:`~fedsim.scenario.model` holds the sections (pydantic models),
:mod:`~fedsim.scenario.sweep` reading, overrides and sweep expansion, and
:mod:`~fedsim.scenario.checks` the checks across sections and plugins, and
:mod:`~fedsim.scenario.preflight` (imported on its own: it builds data and models) the
checks that need the data, the model or the machine: every check of a scenario is in
this package.
"""

from fedsim.scenario.checks import REPLACING_STAGES
from fedsim.scenario.errors import KeyPath, ScenarioError, format_path
from fedsim.scenario.model import (
    OUTPUT_ACTIVATIONS,
    RESERVED_ATTACK_KEYS,
    SECTIONS,
    AttackConfig,
    AuditConfig,
    DataConfig,
    DefenceConfig,
    FederationConfig,
    MetricsConfig,
    ModelConfig,
    OutputConfig,
    PerceptualConfig,
    RacecarConfig,
    Scenario,
    Section,
    SimulationConfig,
    Trial,
)
from fedsim.scenario.sweep import (
    MAX_NESTING,
    MAX_SWEEP_POINTS,
    OVERRIDE_KEY,
    apply_override,
    check_nesting,
    expand,
    load,
    parse_override,
    read_raw,
)

__all__ = [
    "MAX_NESTING",
    "MAX_SWEEP_POINTS",
    "OUTPUT_ACTIVATIONS",
    "OVERRIDE_KEY",
    "REPLACING_STAGES",
    "RESERVED_ATTACK_KEYS",
    "SECTIONS",
    "AttackConfig",
    "AuditConfig",
    "DataConfig",
    "DefenceConfig",
    "FederationConfig",
    "KeyPath",
    "MetricsConfig",
    "ModelConfig",
    "OutputConfig",
    "PerceptualConfig",
    "RacecarConfig",
    "Scenario",
    "ScenarioError",
    "Section",
    "SimulationConfig",
    "Trial",
    "apply_override",
    "check_nesting",
    "expand",
    "format_path",
    "load",
    "parse_override",
    "read_raw",
]
