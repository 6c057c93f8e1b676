"""The one typed definition of ``results.json``, shared by the store that writes it and
every reader (tables, plots, the report, resume).

The file is strict JSON: non-finite floats are stored as the strings ``inf``, ``-inf``
and ``nan`` (:func:`results_json` writes them, :func:`parse_results` restores them).
``schema_version`` (:data:`SCHEMA_VERSION`) says which shape a file has; files written
before it existed (fedsim 0.1) have none and are read as version 1. Version 2 nests the
defences' measurements by defence index (:data:`Measured`); version 1 named them
``defence<i>.<name>`` in one flat mapping, and is read by nesting them. A field listed in a
model's ``ABSENT_UNLESS_SET`` is left out of the file until it was given a value (as the
writers always did: e.g. a trial's ``finished`` appears when it ends), so a file read
and written again keeps its keys.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from fedsim.audit.cm import ScenarioAudit
from fedsim.metrics import PSNR_PEAK
from fedsim.privacy.noise import NoiseSource

SCHEMA_VERSION = 2
"""The newest ``results.json`` shape this fedsim reads and the one it writes."""

Measured = dict[int, dict[str, float]]
"""Defence measurements: the index of the defence in the scenario's ``defences`` → the
measurement's name (the :class:`fedsim.api.Defence` contract's: ``epsilon``,
``noise_std``, …) → its value (``inf`` kept: ``epsilon = inf`` means no guarantee)."""


class ResultsFileError(ValueError):
    """A parsed ``results.json`` does not have the shape fedsim writes; the message is
    one line naming where."""


class NewerSchemaError(ResultsFileError):
    """A ``results.json`` of a newer schema version than this fedsim reads; the message
    (one line) completes ``results.json …``."""


class _Stored(BaseModel):
    """A part of ``results.json``: unknown keys are refused; the fields named in
    ``ABSENT_UNLESS_SET`` are written only once set (read from a file or assigned)."""

    model_config = ConfigDict(extra="forbid")
    ABSENT_UNLESS_SET: ClassVar[frozenset[str]] = frozenset()

    @model_serializer(mode="wrap")
    def _leave_out_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        for name in self.ABSENT_UNLESS_SET - self.model_fields_set:
            out.pop(name, None)
        return out


class ImageResult(_Stored):
    """One reconstructed image: its scores against the original it was matched to
    (:class:`fedsim.metrics.ImageScore`; PSNR in dB) and its PNGs (paths relative to the
    run directory, ``None`` when not saved)."""

    ABSENT_UNLESS_SET = frozenset({"rel_perceptual_l1"})

    original_index: int
    mse: float
    psnr: float
    ssim: float
    label_correct: bool | None = None
    psnr_peak: float = PSNR_PEAK
    psnr_255: float = math.nan
    original_png: str | None = None
    reconstruction_png: str | None = None
    rel_perceptual_l1: float | None = None
    """Set when ``[metrics.perceptual]`` is configured (``None``: not computable)."""


class ThreatRecord(_Stored):
    """The attacker's threat model (:func:`fedsim.threat.threat_model_record`)."""

    position: str
    knows: list[str] = Field(default_factory=list)
    uses: list[str] = Field(default_factory=list)
    sok_class: str | None = None


class Record(_Stored):
    """One scored attack on one upload (or aggregate).

    ``metrics`` holds batch means (``psnr``, ``ssim``, ``mse``, ``label_accuracy``,
    ``label_count_accuracy``, ``success``, ``psnr_peak``, ``psnr_255``, and
    ``rel_perceptual_l1`` when ``[metrics.perceptual]`` is set: ``None`` if unavailable,
    the trial says why); empty when the record was not scored. ``images`` holds one
    entry per reconstructed image. ``diagnostics`` is what the attack reported (open:
    e.g. ``iterations``, ``loss_curve``, ``recovered_labels``). ``client`` is ``None``
    for an attack on the round's aggregate.
    """

    ABSENT_UNLESS_SET = frozenset({"threat_model"})

    trial: int
    point: dict[str, Any]
    round: int
    client: int | None
    position: str
    attack: str
    attack_index: int
    update_kind: str
    status: str
    reason: str = ""
    metrics: dict[str, float | None] = Field(default_factory=dict)
    images: list[ImageResult] = Field(default_factory=list)
    diagnostics: dict[str, Any] = Field(default_factory=dict)
    defence_measurements: Measured = Field(default_factory=dict)
    attack_seconds: float = 0.0
    threat_model: ThreatRecord | None = None


class RoundDefences(_Stored):
    """One round's defence measurements: the clients' summarised over the round (mean;
    max for ε and δ) and the server's aggregate defence's."""

    clients: Measured = Field(default_factory=dict)
    aggregate: Measured = Field(default_factory=dict)


class FailedClient(_Stored):
    """A sampled client whose round produced no upload (the round went on without it)."""

    round: int
    client: int
    kind: Literal["error", "timeout"] = "error"
    error: str = ""


class PerceptualInfo(_Stored):
    """Whether relative-perceptual-L1 could be computed in a trial: ``reason`` when
    ``unavailable``; when ``available``, the weights, layer and filter statistics used."""

    ABSENT_UNLESS_SET = frozenset(
        {"reason", "weights", "weights_sha256", "layer", "statistics", "statistics_reused",
         "statistics_dataset", "statistics_samples"}
    )  # fmt: skip

    status: str
    reason: str | None = None
    weights: str | None = None
    weights_sha256: str | None = None
    layer: str | None = None
    statistics: str | None = None
    statistics_reused: bool | None = None
    statistics_dataset: dict[str, Any] | None = None
    statistics_samples: int | None = None


class TrialResult(_Stored):
    """One sweep point's run: its ``status`` (``running``, ``complete``, ``failed``,
    ``interrupted``) and ``error``, the global model's test accuracy after each round
    (round 0: before training), the defences' measurements per round, the clients that
    failed, the names of what the clients' replies carried (``client_sent``, sorted),
    how the model started (``model_start``) and the perceptual metric's status."""

    ABSENT_UNLESS_SET = frozenset(
        {"client_sent", "started", "finished", "model_start", "rel_perceptual_l1"}
    )

    index: int
    point: dict[str, Any]
    status: str
    error: str = ""
    accuracy: dict[int, float] = Field(default_factory=dict)
    defences: dict[int, RoundDefences] = Field(default_factory=dict)
    client_failures: list[FailedClient] = Field(default_factory=list)
    client_sent: list[str] | None = None
    """``None`` in files of a fedsim that did not record it."""
    started: str | None = None
    finished: str | None = None
    model_start: dict[str, Any] | None = None
    rel_perceptual_l1: PerceptualInfo | None = None


class Plot(_Stored):
    """One PNG of the run: ``path`` relative to the run directory, what it shows."""

    path: str
    title: str


class Environment(_Stored):
    """What the run ran on (:func:`fedsim.results.environment.describe_environment`)."""

    python: str
    packages: dict[str, str | None]
    platform: str
    machine: str
    host: str
    cpus: int | None
    memory_gib: float | None
    torch_threads: int


class RunResults(_Stored):
    """A whole ``results.json``: the run's ``status`` (``running`` until it ends, then
    ``complete``, ``partial`` or ``interrupted``), ``pid`` of the process that wrote it,
    the engine, the scoring mode (``ground_truth``, explained by ``ground_truth_note``),
    where the defences drew their noise from (``client_noise``: ``seeded`` or
    ``os-entropy``), one :class:`TrialResult` per sweep point, one :class:`Record` per attack
    on one upload, and, once known, the audit, the times it was resumed, its plots and
    its wall time in seconds. Fields an older fedsim did not write are ``None``."""

    ABSENT_UNLESS_SET = frozenset(
        {"environment", "pid", "engine", "ground_truth", "ground_truth_note", "client_noise",
         "audit", "resumed", "plots", "wall_seconds"}
    )  # fmt: skip

    schema_version: int = SCHEMA_VERSION
    fedsim_version: str | None = None
    environment: Environment | None = None
    scenario: str | None = None
    started: str | None = None
    finished: str | None = None
    status: str = "running"
    pid: int | None = None
    engine: str | None = None
    ground_truth: str | None = None
    ground_truth_note: str | None = None
    client_noise: NoiseSource | None = None
    trials: list[TrialResult]
    records: list[Record]
    audit: list[ScenarioAudit] | None = None
    resumed: list[str] | None = None
    plots: list[Plot] | None = None
    wall_seconds: float | None = None

    @property
    def completed(self) -> set[int]:
        """Indices of the trials that completed."""
        return {t.index for t in self.trials if t.status == "complete"}


NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _from_json_safe(value: Any) -> Any:
    """Undo :func:`_json_safe`: the strings ``inf``, ``-inf`` and ``nan`` become floats."""
    if isinstance(value, str) and value in NON_FINITE:
        return NON_FINITE[value]
    if isinstance(value, dict):
        return {k: _from_json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json_safe(v) for v in value]
    return value


def _json_safe(value: Any) -> Any:
    """Replace non-finite floats by strings so that the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def results_json(results: RunResults) -> str:
    """``results.json``'s text.

    Dumped in python mode, then made strict JSON by :func:`_json_safe`: pydantic's JSON
    mode would turn a non-finite float inside an open-ended field (``diagnostics``) into
    ``null``.
    """
    return json.dumps(_json_safe(results.model_dump()), indent=1)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "the file"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{where}: {error['msg']}{more}"


_V1_NAME = re.compile(r"defence(\d+)\.(.+)")


def _nested(flat: Any) -> Any:
    """Version 1's ``{"defence<i>.<name>": value}`` as :data:`Measured`; a name of another
    shape is kept, for validation to refuse."""
    if not isinstance(flat, dict):
        return flat
    nested: dict[Any, Any] = {}
    for name, value in flat.items():
        match = _V1_NAME.fullmatch(str(name))
        if match is None:
            nested[name] = value
        else:
            nested.setdefault(int(match[1]), {})[match[2]] = value
    return nested


def _trial_from_version_1(trial: Any) -> Any:
    defences = trial.get("defences") if isinstance(trial, dict) else None
    if not isinstance(defences, dict):
        return trial
    return {
        **trial,
        "defences": {
            r: {k: _nested(m) for k, m in sides.items()} if isinstance(sides, dict) else sides
            for r, sides in defences.items()
        },
    }


def _record_from_version_1(record: Any) -> Any:
    if not isinstance(record, dict) or "defence_measurements" not in record:
        return record
    return {**record, "defence_measurements": _nested(record["defence_measurements"])}


def _from_version_1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 file's content in version 2's shape (measurements nested); what is
    malformed is left for validation to name."""
    upgraded = {**data, "schema_version": SCHEMA_VERSION}
    if isinstance(data.get("trials"), list):
        upgraded["trials"] = [_trial_from_version_1(t) for t in data["trials"]]
    if isinstance(data.get("records"), list):
        upgraded["records"] = [_record_from_version_1(r) for r in data["records"]]
    return upgraded


def parse_results(data: Any) -> RunResults:
    """A parsed ``results.json`` (``json.loads`` of the file) as :class:`RunResults`, in
    this version's shape; a file without ``schema_version`` is read as version 1, whose
    flat measurement names are nested (:data:`Measured`).

    Raises:
        NewerSchemaError: its ``schema_version`` is newer than :data:`SCHEMA_VERSION`.
        ResultsFileError: it does not have the shape of :class:`RunResults`.
    """
    if not isinstance(data, dict):
        raise ResultsFileError(f"not a JSON object but {type(data).__name__}")
    version = data.get("schema_version", 1)
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise NewerSchemaError(
            f"has schema_version {version}, newer than this fedsim reads ({SCHEMA_VERSION}): "
            "upgrade fedsim to read it"
        )
    if version == 1:
        data = _from_version_1(data)
    try:
        return RunResults.model_validate(_from_json_safe(data))
    except ValidationError as exc:
        raise ResultsFileError(_first_error(exc)) from None
