"""The scenario's sections as pydantic models: each key, its type, default and range,
and the checks that need only the section itself (and the plugin registries)."""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedsim import registry
from fedsim.models.zoo import ACTIVATIONS, CNN3_PRESETS, INITIALISATIONS, ZOO_MODELS
from fedsim.scenario.errors import suggest
from fedsim.threat import KNOWLEDGE, Knowledge, granted_knowledge, knowledge_key


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
        known = sorted(registry.discover().datasets)
        if value not in known:
            raise ValueError(f"no dataset plugin {value!r}" + suggest(value, known))
        return value

    @model_validator(mode="after")
    def _root_needed(self) -> DataConfig:
        if registry.discover().datasets[self.dataset].needs_root and self.root is None:
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
    ``output_activation``, ``negative_slope``, ``init`` and ``layers``/``preset``
    instead of ``kwargs``.
    """

    name: str = "lenet"
    activation: Literal[tuple(ACTIVATIONS)] = "sigmoid"  # type: ignore[valid-type]
    layers: list[tuple[int, int, int]] | None = None
    preset: Literal[tuple(CNN3_PRESETS)] | None = None  # type: ignore[valid-type]
    output_activation: Literal[OUTPUT_ACTIVATIONS] = "none"  # type: ignore[valid-type]
    negative_slope: float = Field(0.01, gt=0.0, lt=1.0, description="leaky_relu slope for z < 0")
    init: Literal[INITIALISATIONS] | None = Field(  # type: ignore[valid-type]
        None,
        description="zoo models: 'dlg' (U(-0.5, 0.5), lenet's default) or 'pytorch' (the "
        "layers' defaults, convnet's; lenet trains to >95% with it, see docs/training.md)",
    )
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
        registered = sorted(registry.registered_models())
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
        if self.name not in ZOO_MODELS and self.init is not None:
            raise ValueError("init applies to the zoo models (lenet, convnet) only")
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


MAX_ROUNDS = 100_000
"""The most rounds a federation may run."""


class FederationConfig(Section):
    """The Flower federation: clients, rounds and local training.

    ``training`` is the clients' objective: ``standard`` (cross-entropy) or
    ``racecar`` (cross-entropy plus the racecar loss of ``[federation.racecar]``).
    """

    num_clients: int = Field(4, ge=1, le=1_000_000)
    clients_per_round: int = Field(1, ge=1)
    rounds: int = Field(1, ge=1, le=MAX_ROUNDS)
    protocol: Literal["fedsgd", "fedavg"] = "fedsgd"
    batch_size: int = Field(1, ge=1)
    lr: float = Field(0.1, gt=0.0)
    local_epochs: int = Field(1, ge=1)
    server_momentum: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="FedAvgM (Hsu et al. 2019): momentum of the server's SGD on the averaged "
        "update; 0 applies the average as it is",
    )
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


ROUND_RANGE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*(?::\s*(\d+)\s*)?)?")
"""One part of a round selection: ``7``, ``1-50`` (every round) or ``1-50:5`` (every 5th)."""


def parse_rounds(spec: str | int | list[int | str]) -> list[int]:
    """Rounds from a selection: an int, a string of comma-separated parts ``a``,
    ``a-b`` or ``a-b:s`` (``a, a+s, … ≤ b``; ``"1-50:5"`` is 1, 6, …, 46 and
    ``"1,2,5-50:5"`` is 1, 2, 5, 10, …, 50), or a list of ints and such strings.

    Returns:
        The rounds, sorted, each once.

    Raises:
        ValueError: a part that is not of that form, a range that ends before it
            starts or has step 0, or a round beyond :data:`MAX_ROUNDS`.
    """
    items = spec if isinstance(spec, list) else [spec]
    rounds: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"a round must be a number or a range, got {item!r}")
        if isinstance(item, int):
            rounds.add(item)
            continue
        if not isinstance(item, str):
            raise ValueError(f"a round must be a number or a range, got {item!r}")
        for part in item.split(","):
            match = ROUND_RANGE.fullmatch(part)
            if match is None:
                raise ValueError(f"{part.strip()!r} is not a round, 'a-b' or 'a-b:step'")
            first, last, step = match.groups()
            start = int(first)
            stop = int(last) if last is not None else start
            stride = int(step) if step is not None else 1
            if stop < start or stride < 1:
                raise ValueError(f"{part.strip()!r} selects no rounds")
            if stop > MAX_ROUNDS:
                raise ValueError(f"{part.strip()!r} goes beyond round {MAX_ROUNDS:,}")
            rounds.update(range(start, stop + 1, stride))
    return sorted(rounds)


class AttackConfig(Section):
    """One attacker: a plugin, its position, what it targets, what it knows (``knows_*``,
    unset: the position's default, :data:`fedsim.threat.DEFAULT_KNOWLEDGE`), and its
    parameters."""

    name: str
    position: Literal["server", "participant"] = "server"
    rounds: list[int] | None = Field(
        None,
        description="rounds to attack (default: all): a list, or ranges such as '1-50:5' "
        "or '1,2,5-50:5' (see parse_rounds)",
    )
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
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("rounds", mode="before")
    @classmethod
    def _round_selection(cls, value: Any) -> Any:
        return None if value is None else parse_rounds(value)

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
    """Flower's simulation engine: where the ClientApps run, and the resources each
    running client reserves.

    ``floor(cpus / client_cpus)`` clients run at a time (with Ray, fewer when GPUs are
    the limit); clients are built per round from their partition id, so
    ``num_clients`` costs neither memory nor processes.
    """

    backend: Literal["threads", "ray"] = Field(
        "threads",
        description="threads: ClientApps run in threads of fedsim's process (no start-up, "
        "no memory beyond the model and data; a client that crashes the process ends "
        "the run); ray: each in a Ray actor process of its own (isolated, GPU shares)",
    )
    client_cpus: float = Field(1.0, gt=0.0, description="CPU cores reserved per running client")
    client_gpus: float = Field(
        0.0, ge=0.0, description="GPUs per running client; 0.25 puts four clients on a GPU"
    )
    cpus: int | None = Field(
        None,
        ge=1,
        description="CPU cores the engine may use (default: all, at most what a round needs)",
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

    def engine_cpus(self) -> int:
        """CPU cores the simulation engine may use (Ray's, or the threads' share):
        ``simulation.cpus``, else all cores but no more than the round's clients can use
        at once."""
        sim = self.simulation
        if sim.cpus is not None:
            return sim.cpus
        wanted = math.ceil(self.federation.clients_per_round * sim.client_cpus)
        return max(1, min(os.cpu_count() or 1, wanted))


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
