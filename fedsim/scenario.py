"""Scenario files: TOML → validated :class:`Scenario` objects, one per sweep point.

A value given as a list where the schema expects a scalar (e.g. a defence's
``sigma = [0.0, 0.01, 0.1]``) is a sweep axis; several axes form a grid.
Every error is a :class:`ScenarioError` whose message is one line naming the
file and the key path.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import re
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fedsim.api import Attack, Stage, UpdateKind
from fedsim.models.zoo import ACTIVATIONS, CNN3_PRESETS, ZOO_MODELS
from fedsim.registry import discover, registered_models
from fedsim.threat import KNOWLEDGE, Knowledge, granted_knowledge, knowledge_key, ordered

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KeyPath = tuple[str | int, ...]


class ScenarioError(ValueError):
    """An invalid scenario; ``str()`` is one line: ``FILE: KEY.PATH: message``."""

    def __init__(self, source: str, path: KeyPath, message: str) -> None:
        self.source, self.path, self.message = source, path, message
        where = format_path(path)
        super().__init__(f"{source}: {where + ': ' if where else ''}{message}")


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _suggest(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(allowed)})"


class DataConfig(Section):
    """Where the images come from and how they are split among clients.

    ``dataset`` names a plugin of the ``fedsim.datasets`` entry-point group
    (:class:`fedsim.data.source.DatasetSource`; built in: ``digits``, ``photos``,
    ``mnist``, ``cifar10``, ``imagefolder``).
    """

    dataset: str = "digits"
    root: Path | None = None
    download: bool = False
    image_size: int = Field(32, ge=8, le=512)
    grayscale: bool = False
    samples_per_class: int = Field(20, ge=1, le=10_000)
    max_samples: int | None = Field(None, ge=2)
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    holdout: Literal["random", "last"] = "random"
    classes: list[str] | None = Field(None, min_length=1)
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = Field(0.5, gt=0.0)

    @field_validator("dataset")
    @classmethod
    def _registered(cls, value: str) -> str:
        known = sorted(discover().datasets)
        if value not in known:
            raise ValueError(f"no dataset plugin {value!r}" + _suggest(value, known))
        return value

    @model_validator(mode="after")
    def _root_needed(self) -> DataConfig:
        if discover().datasets[self.dataset].needs_root and self.root is None:
            raise ValueError(f"dataset {self.dataset!r} needs data.root")
        return self


OUTPUT_ACTIVATIONS = ("none", *ACTIVATIONS)
"""``[model] output_activation`` values: none (logits) or an activation."""


class ModelConfig(Section):
    """A model of the ``fedsim.models`` entry-point group by name (the zoo: ``lenet``,
    ``convnet`` with ``layers`` or ``preset``) or an import path ``"pkg.module:Class"``.

    Every model is built as ``Class(input_shape=(C, H, W), num_classes=K, **kwargs)``
    (``input_shape`` and ``num_classes`` from the data, passed to a constructor that
    names them; see :mod:`fedsim.models.zoo`); the zoo models take ``activation``,
    ``output_activation``, ``negative_slope`` and ``layers``/``preset`` instead of
    ``kwargs``.
    """

    name: str = "lenet"
    activation: Literal[tuple(ACTIVATIONS)] = "sigmoid"  # type: ignore[valid-type]
    layers: list[tuple[int, int, int]] | None = None
    preset: Literal[tuple(CNN3_PRESETS)] | None = None  # type: ignore[valid-type]
    output_activation: Literal[OUTPUT_ACTIVATIONS] = "none"  # type: ignore[valid-type]
    negative_slope: float = Field(0.01, gt=0.0, lt=1.0, description="leaky_relu slope for z < 0")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path | None = Field(
        None, description="state dict to start from (torch.load with weights_only=True)"
    )
    pretrain_epochs: int = Field(
        0, ge=0, le=10_000, description="epochs of central SGD on the held-out split before round 1"
    )
    pretrain_lr: float = Field(0.1, gt=0.0, description="learning rate of the pre-training")

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_file():
            raise ValueError(f"no checkpoint file {str(value)!r}")
        return value

    @model_validator(mode="after")
    def _known(self) -> ModelConfig:
        registered = sorted(registered_models())
        if self.name not in registered and ":" not in self.name:
            names = ", ".join(repr(n) for n in registered)
            close = difflib.get_close_matches(self.name, registered, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown model {self.name!r}{hint}: use {names} or 'pkg.module:Class'"
            )
        if self.name == "convnet" and (self.layers is None) == (self.preset is None):
            raise ValueError("convnet needs exactly one of `layers` or `preset`")
        if self.layers is not None and any(min(layer) < 1 for layer in self.layers):
            raise ValueError("convnet layers are (kernel, channels, stride), all ≥ 1")
        if self.name not in ZOO_MODELS and self.output_activation != "none":
            raise ValueError("output_activation applies to the zoo models (lenet, convnet) only")
        return self


class RacecarConfig(Section):
    """Racecar training's reverse pass (:mod:`fedsim.training.racecar`)."""

    variant: Literal["full", "layerwise"] = Field(
        "full", description="reverse pass chained from the output, or each layer on its own"
    )
    lambdas: float | list[float] = Field(
        1e-3,
        description="λ per conv/linear layer from the input upwards, or one for all "
        "(terms are squared L2 norms summed over features: LeNet diverges at 0.1)",
    )

    @field_validator("lambdas")
    @classmethod
    def _non_negative(cls, value: float | list[float]) -> float | list[float]:
        if min(value if isinstance(value, list) else [value], default=0.0) < 0:
            raise ValueError("lambdas must be non-negative")
        return value


class FederationConfig(Section):
    """The Flower federation: clients, rounds and local training.

    ``training`` is the clients' objective: ``standard`` (cross-entropy) or
    ``racecar`` (cross-entropy plus the racecar loss of ``[federation.racecar]``).
    """

    num_clients: int = Field(4, ge=1, le=1_000_000)
    clients_per_round: int = Field(1, ge=1)
    rounds: int = Field(1, ge=1, le=100_000)
    protocol: Literal["fedsgd", "fedavg"] = "fedsgd"
    batch_size: int = Field(1, ge=1)
    lr: float = Field(0.1, gt=0.0)
    local_epochs: int = Field(1, ge=1)
    round_timeout: float = Field(
        3600.0, gt=0.0, description="seconds the server waits for a round's replies"
    )
    training: Literal["standard", "racecar"] = "standard"
    racecar: RacecarConfig = Field(default_factory=RacecarConfig)

    @model_validator(mode="after")
    def _fits(self) -> FederationConfig:
        if self.clients_per_round > self.num_clients:
            raise ValueError(
                f"clients_per_round ({self.clients_per_round}) exceeds "
                f"num_clients ({self.num_clients})"
            )
        return self


class AttackConfig(Section):
    """One attacker: a plugin, its position, what it targets, what it knows (``knows_*``,
    unset: the position's default, :data:`fedsim.threat.DEFAULT_KNOWLEDGE`), and its
    parameters."""

    name: str
    position: Literal["server", "participant"] = "server"
    rounds: list[int] | None = Field(None, description="rounds to attack (default: all)")
    max_clients: int = Field(1, ge=1, description="uploads attacked per round (server)")
    clients: list[int] | None = Field(
        None, min_length=1, description="partition ids to attack when sampled (default: any)"
    )
    participant_client: int | None = Field(
        None,
        ge=0,
        description="participant: its own partition id; it subtracts its own update from the "
        "aggregate and attacks the others' (in rounds where it took part)",
    )
    knows_labels: bool | None = None
    knows_batch_size: bool | None = None
    knows_local_hyperparameters: bool | None = None
    knows_model: bool | None = None
    knows_bn_statistics: bool | None = None
    knows_surrogate_data: bool | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def knowledge(self) -> frozenset[Knowledge]:
        """The flags granted to this attacker: the position's defaults, then ``knows_*``."""
        explicit = {flag: getattr(self, knowledge_key(flag)) for flag in KNOWLEDGE}
        return granted_knowledge(
            self.position, {flag: value for flag, value in explicit.items() if value is not None}
        )


class DefenceConfig(Section):
    """One defence plugin and its parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class AuditConfig(Section):
    """The architecture audit (COPA's c(M)) run once per distinct model before the federation."""

    method: Literal["structured", "dense"] = "structured"


class PerceptualConfig(Section):
    """relative-perceptual-L1 (VGG-19 ``relu4_2``, see :mod:`fedsim.perceptual`) next to
    PSNR/SSIM. ``stats_data`` names the dataset of the per-filter statistics (same keys
    as ``[data]``; default: the scenario's ``[data]``)."""

    weights: str = Field(
        "torchvision",
        description="'torchvision' (its file in torch.hub.get_dir()/checkpoints) or a path",
    )
    stats_data: DataConfig | None = None
    stats_samples: int = Field(1000, ge=1, le=1_000_000)
    cache_dir: Path | None = None

    @field_validator("weights")
    @classmethod
    def _weights_file(cls, value: str) -> str:
        if value != "torchvision" and not Path(value).expanduser().is_file():
            raise ValueError(f"no weights file {value!r} (or use 'torchvision')")
        return value


class MetricsConfig(Section):
    """Optional reconstruction metrics beyond MSE, PSNR and SSIM."""

    perceptual: PerceptualConfig | None = None


class SimulationConfig(Section):
    """Flower's simulation engine (Ray): the resources each running client reserves.

    Ray runs ``floor(cpus / client_cpus)`` clients at a time (fewer when GPUs
    are the limit); clients are built per round from their partition id, so
    ``num_clients`` costs neither memory nor processes.
    """

    client_cpus: float = Field(1.0, gt=0.0, description="CPU cores reserved per running client")
    client_gpus: float = Field(
        0.0, ge=0.0, description="GPUs per running client; 0.25 puts four clients on a GPU"
    )
    cpus: int | None = Field(
        None, ge=1, description="CPU cores Ray may use (default: all, at most what a round needs)"
    )

    @model_validator(mode="after")
    def _one_client_fits(self) -> SimulationConfig:
        if self.cpus is not None and self.client_cpus > self.cpus:
            raise ValueError(
                f"client_cpus ({self.client_cpus:g}) exceeds cpus ({self.cpus}): "
                "no client could run"
            )
        return self


class OutputConfig(Section):
    dir: Path = Path("runs")
    save_images: bool = True


class Scenario(Section):
    """A validated scenario with every sweep resolved to one value."""

    name: str = Field(
        "scenario",
        description="shown in results and reports; the run directory under output.dir "
        "takes a safe form of it (fedsim.run.safe_name: one path component)",
    )
    description: str = ""
    seed: int = Field(0, ge=0)
    device: str = "auto"
    threads: int = Field(
        1,
        ge=1,
        description=(
            "torch threads in every process that computes: the ServerApp (attacks, scoring) "
            "and each ClientApp, in both engines, so that their results agree bit for bit"
        ),
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    attacks: list[AttackConfig] = Field(default_factory=list)
    defences: list[DefenceConfig] = Field(default_factory=list)
    audit: AuditConfig | None = None
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _attack_targets_exist(self) -> Scenario:
        fed = self.federation
        for i, attack in enumerate(self.attacks):
            bad = [r for r in attack.rounds or [] if not 1 <= r <= fed.rounds]
            if bad:
                raise ValueError(
                    f"attacks[{i}].rounds: {bad} outside the federation's rounds 1..{fed.rounds}"
                )
            if attack.clients is not None and attack.position != "server":
                raise ValueError(
                    f"attacks[{i}].clients: a participant sees only the aggregate; "
                    "choose clients with position = 'server'"
                )
            bad = [c for c in attack.clients or [] if not 0 <= c < fed.num_clients]
            if bad:
                raise ValueError(
                    f"attacks[{i}].clients: {bad} outside the partition ids "
                    f"0..{fed.num_clients - 1}"
                )
            own = attack.participant_client
            if own is not None and attack.position != "participant":
                raise ValueError(f"attacks[{i}].participant_client: needs position = 'participant'")
            if own is not None and own >= fed.num_clients:
                raise ValueError(
                    f"attacks[{i}].participant_client: {own} outside the partition ids "
                    f"0..{fed.num_clients - 1}"
                )
        return self


SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "federation": FederationConfig,
    "audit": AuditConfig,
    "metrics": MetricsConfig,
    "simulation": SimulationConfig,
    "output": OutputConfig,
}
RESERVED_ATTACK_KEYS = (
    "name",
    "position",
    "rounds",
    "max_clients",
    "clients",
    "participant_client",
    *(knowledge_key(flag) for flag in KNOWLEDGE),
)


@dataclass(frozen=True)
class Trial:
    """One sweep point: its index, the swept values (``"defences[0].sigma": 0.1``), the scenario."""

    index: int
    point: dict[str, Any]
    scenario: Scenario


# ---------------------------------------------------------------- key checks


def _is_list_annotation(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_is_list_annotation(a) for a in get_args(annotation) if a is not type(None))
    return origin in (list, tuple, set, frozenset) or annotation in (list, tuple)


def _fields(cls: type[BaseModel]) -> dict[str, bool]:
    """Field name → whether the field itself takes a list."""
    return {name: _is_list_annotation(f.annotation) for name, f in cls.model_fields.items()}


@dataclass(frozen=True)
class _Axis:
    path: KeyPath
    values: list[Any]


def _scan_table(
    table: dict[str, Any], fields: dict[str, bool], path: KeyPath, source: str
) -> list[_Axis]:
    """Reject unknown keys; return the sweep axes of ``table``."""
    axes = []
    for key, value in table.items():
        if key not in fields:
            raise ScenarioError(source, (*path, key), "unknown key" + _suggest(key, list(fields)))
        if isinstance(value, list) and not fields[key]:
            if not value:
                raise ScenarioError(source, (*path, key), "an empty list cannot be swept")
            axes.append(_Axis((*path, key), value))
    return axes


def _section_type(annotation: Any) -> type[Section] | None:
    """The :class:`Section` a field holds (``X`` or ``X | None``), else ``None``."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, Section):
            return candidate
    return None


def _scan_section(
    table: dict[str, Any], cls: type[Section], path: KeyPath, source: str
) -> list[_Axis]:
    """:func:`_scan_table` for a section, recursing into its sub-sections' tables."""
    axes = _scan_table(table, _fields(cls), path, source)
    for key, value in table.items():
        sub = _section_type(cls.model_fields[key].annotation)
        if sub is not None and isinstance(value, dict):
            axes += _scan_section(value, sub, (*path, key), source)
    return axes


def _plugin_entry(
    kind: str, index: int, entry: Any, source: str
) -> tuple[type[BaseModel], dict[str, Any], dict[str, Any]]:
    """Split one ``[[attacks]]``/``[[defences]]`` table into reserved keys and plugin params."""
    path: KeyPath = (kind, index)
    if not isinstance(entry, dict):
        raise ScenarioError(source, path, "must be a table")
    registry = discover().attacks if kind == "attacks" else discover().defences
    name = entry.get("name")
    if isinstance(name, list):
        raise ScenarioError(source, (*path, "name"), "a plugin name cannot be swept")
    if not isinstance(name, str):
        raise ScenarioError(source, (*path, "name"), "missing plugin name")
    clash = discover().clashes.get(f"fedsim.{kind}:{name}")
    if name not in registry and clash:
        raise ScenarioError(source, (*path, "name"), f"{kind[:-1]} plugin {name!r} is {clash}")
    if name not in registry:
        known = sorted(registry)
        raise ScenarioError(
            source, (*path, "name"), f"no {kind[:-1]} plugin {name!r}" + _suggest(name, known)
        )
    reserved = RESERVED_ATTACK_KEYS if kind == "attacks" else ("name",)
    head = {k: v for k, v in entry.items() if k in reserved}
    params = {k: v for k, v in entry.items() if k not in reserved}
    return registry[name].Params, head, params


def _find_axes(raw: dict[str, Any], source: str) -> list[_Axis]:
    top = _fields(Scenario)
    axes = _scan_table(
        {k: v for k, v in raw.items() if k not in ("attacks", "defences")}, top, (), source
    )
    for section, cls in SECTIONS.items():
        value = raw.get(section, {})
        if not isinstance(value, dict):
            raise ScenarioError(source, (section,), "must be a table")
        axes += _scan_section(value, cls, (section,), source)
    for kind in ("attacks", "defences"):
        entries = raw.get(kind, [])
        if not isinstance(entries, list):
            raise ScenarioError(source, (kind,), f"must be a list of tables ([[{kind}]])")
        for i, entry in enumerate(entries):
            params_cls, head, params = _plugin_entry(kind, i, entry, source)
            head_cls = AttackConfig if kind == "attacks" else DefenceConfig
            head_fields = {k: v for k, v in _fields(head_cls).items() if k != "params"}
            axes += _scan_table(head, head_fields, (kind, i), source)
            axes += _scan_table(params, _fields(params_cls), (kind, i), source)
    return axes


# ---------------------------------------------------------------- resolution


def _set_path(raw: dict[str, Any], path: KeyPath, value: Any) -> None:
    node: Any = raw
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value


def _validate_point(raw: dict[str, Any], source: str) -> Scenario:
    """Validate one fully scalar scenario dict, plugin parameters included."""
    data = {k: v for k, v in raw.items() if k not in ("attacks", "defences")}
    for kind in ("attacks", "defences"):
        resolved = []
        for i, entry in enumerate(raw.get(kind, [])):
            params_cls, head, params = _plugin_entry(kind, i, entry, source)
            try:
                checked = params_cls.model_validate(params)
            except ValidationError as exc:
                raise _from_pydantic(exc, source, (kind, i)) from None
            resolved.append({**head, "params": checked.model_dump(mode="json")})
        data[kind] = resolved
    stages = _check_defence_stages(data["defences"], source)
    federation = data.get("federation", {})
    racecar = isinstance(federation, dict) and federation.get("training") == "racecar"
    if racecar and "training" in stages:
        i = stages["training"]
        raise ScenarioError(
            source,
            ("federation", "training"),
            f"racecar training cannot be combined with defences[{i}] "
            f"({data['defences'][i]['name']}), which runs the clients' training itself",
        )
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise _from_pydantic(exc, source, ()) from None
    _check_knowledge(scenario, source)
    return scenario


def _knowledge_needed(name: str, params: dict[str, Any], kind: UpdateKind) -> frozenset[Knowledge]:
    """The threat-model flags attack ``name`` with ``params`` needs against ``kind``: its
    class's ``needs``, unless the class overrides :meth:`Attack.knowledge_needed`, whose
    answer may depend on the parameters: then an instance is asked."""
    cls = discover().attacks[name]
    if cls.knowledge_needed is Attack.knowledge_needed:
        return cls.needs
    return cls(cls.Params.model_validate(params)).knowledge_needed(kind)


def _stage(name: str, params: dict[str, Any]) -> Stage:
    """Where defence ``name`` with ``params`` acts: the one stage its class declares, or,
    for a class declaring several, the choice its instance makes from the parameters."""
    cls = discover().defences[name]
    if len(cls.stages) == 1:
        return cls.stages[0]
    return cls(cls.Params.model_validate(params)).stage


def _check_knowledge(scenario: Scenario, source: str) -> None:
    """Reject an attack whose threat model lacks knowledge the attack needs."""
    kind: UpdateKind = "gradient" if scenario.federation.protocol == "fedsgd" else "delta"
    for i, config in enumerate(scenario.attacks):
        needed = set(_knowledge_needed(config.name, config.params, kind))
        if config.participant_client is not None:
            needed |= {"batch_size"}  # the clients' example counts weigh FedAvg's mean
        missing = ordered(needed - config.knowledge)
        if missing:
            keys = ", ".join(f"{knowledge_key(flag)} = true" for flag in missing)
            raise ScenarioError(
                source,
                ("attacks", i),
                f"attack {config.name!r} needs knowledge its threat model does not grant: "
                f"{', '.join(missing)} (set {keys})",
            )


REPLACING_STAGES = ("training", "aggregate")
"""Stages whose defence replaces a step (local training, FedAvg's mean): one defence each."""


def _check_defence_stages(defences: list[dict[str, Any]], source: str) -> dict[str, int]:
    """Reject two defences that would both replace local training, or both the aggregation;
    return the index of the defence at each replacing stage present."""
    seen: dict[str, int] = {}
    for i, entry in enumerate(defences):
        stage = _stage(entry["name"], entry["params"])
        if stage not in REPLACING_STAGES:
            continue
        if stage in seen:
            raise ScenarioError(
                source,
                ("defences", i),
                f"only one defence may act at stage {stage!r}; defences[{seen[stage]}] "
                "already does",
            )
        seen[stage] = i
    return seen


def _from_pydantic(exc: ValidationError, source: str, prefix: KeyPath) -> ScenarioError:
    err = exc.errors()[0]
    loc = tuple(p for p in err["loc"] if p != "params")
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "literal_error":
        message = f"{message}, got {err['input']!r}"
    return ScenarioError(source, (*prefix, *loc), message)


MAX_SWEEP_POINTS = 10_000
"""Most sweep points one scenario may give (the product of its axes' lengths)."""


def _check_sweep_size(axes: list[_Axis], source: str) -> None:
    """Refuse a grid of more than :data:`MAX_SWEEP_POINTS` points before building it."""
    count = math.prod(len(axis.values) for axis in axes)
    if count > MAX_SWEEP_POINTS:
        sizes = " × ".join(f"{format_path(a.path)}: {len(a.values):,}" for a in axes)
        raise ScenarioError(
            source,
            (),
            f"the sweep has {count:,} points ({sizes}), more than the limit of "
            f"{MAX_SWEEP_POINTS:,}; split it into several scenarios",
        )


def expand(raw: dict[str, Any], source: str) -> list[Trial]:
    """Validate ``raw`` and return one :class:`Trial` per sweep point (grid product).

    Raises:
        ScenarioError: an invalid point, or more than :data:`MAX_SWEEP_POINTS` points.
    """
    axes = _find_axes(raw, source)
    _check_sweep_size(axes, source)
    trials = []
    for index, values in enumerate(itertools.product(*(a.values for a in axes))):
        point_raw = copy.deepcopy(raw)
        point: dict[str, Any] = {}
        for axis, value in zip(axes, values, strict=True):
            _set_path(point_raw, axis.path, value)
            point[format_path(axis.path)] = value
        trials.append(Trial(index, point, _validate_point(point_raw, source)))
    return trials


# ---------------------------------------------------------------- files and overrides


OVERRIDE_KEY = re.compile(r"[^.\[\]]+(?:\.[^.\[\]]+|\[\d+\])*")
"""A ``--set`` key: names joined by dots, each optionally followed by ``[index]``s."""
MAX_NESTING = 32
"""How deeply tables and arrays may nest in a scenario (and in a ``--set`` value)."""


def parse_override(text: str, source: str = "--set") -> tuple[KeyPath, Any]:
    """``"federation.rounds=2"`` or ``"defences[0].sigma=[0, 0.1]"`` → (path, value).

    The value is read as a TOML value; if that fails, as a plain string.
    """
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not OVERRIDE_KEY.fullmatch(key):
        raise ScenarioError(source, (), f"--set {text!r} must look like key.path=value")
    path: list[str | int] = []
    for part in key.replace("[", ".").replace("]", "").split("."):
        path.append(int(part) if part.isdigit() else part)
    try:
        value = tomllib.loads(f"v = {value_text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text.strip()
    except RecursionError:
        raise ScenarioError(source, (), f"--set {key}: value nested too deeply") from None
    return tuple(path), value


def check_nesting(raw: dict[str, Any], source: str) -> None:
    """Refuse tables and arrays nested more than :data:`MAX_NESTING` levels deep: no key
    needs them, and a scenario travels to the clients as JSON, which pydantic reads
    and writes only to about 200 levels.

    Raises:
        ScenarioError: naming the key under which the nesting is too deep.
    """
    stack: list[tuple[KeyPath, Any]] = [((), raw)]
    while stack:
        path, value = stack.pop()
        if len(path) > MAX_NESTING:
            key = path[: max(i for i, p in enumerate(path) if isinstance(p, str)) + 1]
            raise ScenarioError(source, key, f"nested more than {MAX_NESTING} levels deep")
        if isinstance(value, dict):
            stack.extend(((*path, k), v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend(((*path, i), v) for i, v in enumerate(value))


def apply_override(raw: dict[str, Any], path: KeyPath, value: Any, source: str) -> None:
    node: Any = raw
    for depth, part in enumerate(path[:-1]):
        try:
            node = node[part] if isinstance(part, int) else node.setdefault(part, {})
        except (IndexError, KeyError, TypeError, AttributeError):
            raise ScenarioError(source, path[: depth + 1], "--set: no such entry") from None
    if not isinstance(node, dict) or isinstance(path[-1], int):
        raise ScenarioError(source, path, "--set: no such key")
    node[path[-1]] = value


def read_raw(path: Path) -> dict[str, Any]:
    """Parse a scenario file, raising :class:`ScenarioError` for unreadable TOML."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ScenarioError(str(path), (), "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(str(path), (), f"invalid TOML: {exc}") from None
    except RecursionError:
        raise ScenarioError(
            str(path), (), "invalid TOML: arrays or tables nested too deeply"
        ) from None
    except UnicodeDecodeError:
        raise ScenarioError(str(path), (), "not a UTF-8 text file") from None
    except OSError as exc:
        raise ScenarioError(str(path), (), f"cannot read: {exc.strerror or exc}") from None


def load(path: Path, overrides: Sequence[str] = ()) -> tuple[dict[str, Any], list[Trial]]:
    """Read, override and expand a scenario file; returns the raw dict and its trials.

    Raises:
        ScenarioError: unreadable or invalid, or a file that sets nothing at all.
    """
    raw = read_raw(path)
    if not raw:
        raise ScenarioError(
            str(path),
            (),
            "the file sets nothing (it is empty or only comments): describe the federation "
            "([data], [model], [federation]) and the [[attacks]] to run, as in "
            "scenarios/quickstart.toml",
        )
    for text in overrides:
        key, value = parse_override(text, str(path))
        apply_override(raw, key, value, str(path))
    check_nesting(raw, str(path))
    return raw, expand(raw, str(path))
