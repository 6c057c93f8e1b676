"""The round attacker: what the ServerApp's strategy hands to attackers each round.

For every configured attack it builds the :class:`~fedsim.api.Observation` its
position allows (``server``: each client's upload, or under secure aggregation only
the round's aggregate, as a participant; ``participant``: the round's aggregate, or
with ``participant_client`` the others' update isolated from it),
runs the plugin, has the result scored against the ground truth (by the
:class:`~fedsim.federation.scoring.Scorer`: with the truth that travelled
separately, or on the clients), saves PNGs and appends a :class:`Record`. It
also stores the round's defence measurements (what the clients and the server's
aggregate defence reported: noise, ε) for the sweep results.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedsim.api import Attack, Observation, Reconstruction, Update
from fedsim.federation.participant import others_update
from fedsim.federation.progress import AttackScored, AttackStarted, Progress
from fedsim.federation.protocol import DefenceReport, TrainReply, Truth, by_defence
from fedsim.federation.scoring import Scorer, ScoringError
from fedsim.metrics import SUCCESS_PSNR, match_scores
from fedsim.perceptual import PerceptualMetric, build_perceptual_metric
from fedsim.registry import instantiate_attack
from fedsim.results.images import save_png
from fedsim.results.schema import ImageResult, ThreatRecord
from fedsim.results.store import Record, ResultsStore
from fedsim.scenario import AttackConfig, DataConfig, PerceptualConfig, Scenario, Trial
from fedsim.scenario.secure_aggregation import secure_sum
from fedsim.threat import threat_model_record
from fedsim.training.objective import known_regulariser
from fedsim.trial_inputs import FederatedData, ModelFactory, derive_seed


def run_attack(attack: Attack[Any], observation: Observation) -> Reconstruction:
    """Run ``attack``, turning exceptions and non-finite output into failure records."""
    if observation.batch_size == 0:
        return Reconstruction.unsupported(
            "the upload carries no samples (an empty Poisson-sampled batch): it is noise only"
        )
    try:
        reason = attack.supports(observation.model())
        if reason:
            return Reconstruction.unsupported(reason)
        result = attack.reconstruct(observation)
    except Exception as exc:  # an attack must never end the run
        return Reconstruction.failed(f"{type(exc).__name__}: {exc}")
    if result.status != "ok":
        return result
    images = result.images
    expected = (observation.batch_size, *observation.input_shape)
    if tuple(images.shape) != expected:  # type: ignore[union-attr]
        return Reconstruction.failed(
            f"attack returned images of shape {tuple(images.shape)}, expected {expected}",  # type: ignore[union-attr]
            **result.diagnostics,
        )
    if result.labels is not None and result.labels.shape != (observation.batch_size,):
        return Reconstruction.failed(
            f"attack returned {tuple(result.labels.shape)} labels for a batch of "
            f"{observation.batch_size}",
            **result.diagnostics,
        )
    if not torch.isfinite(images).all():  # type: ignore[arg-type]
        return Reconstruction.failed("attack returned non-finite pixels", **result.diagnostics)
    return result


@functools.lru_cache(maxsize=2)
def _perceptual_metric(
    config_json: str, data_json: str, channels: int, device: str
) -> PerceptualMetric:
    return build_perceptual_metric(
        PerceptualConfig.model_validate_json(config_json),
        DataConfig.model_validate_json(data_json),
        channels,
        torch.device(device),
    )


def perceptual_metric(
    scenario: Scenario, channels: int, device: torch.device
) -> PerceptualMetric | None:
    """The scenario's relative-perceptual-L1 (built once per process and settings), or
    ``None`` when ``[metrics.perceptual]`` is absent."""
    config = scenario.metrics.perceptual
    if config is None:
        return None
    return _perceptual_metric(
        config.model_dump_json(), scenario.data.model_dump_json(), channels, str(device)
    )


class RoundAttacker:
    """Runs the scenario's attacks on one trial's rounds and stores scored records."""

    def __init__(
        self,
        trial: Trial,
        data: FederatedData,
        factory: ModelFactory,
        store: ResultsStore,
        run_dir: Path,
        device: torch.device,
        scorer: Scorer,
        progress: Progress = lambda _event: None,
    ) -> None:
        self.trial, self.data, self.factory = trial, data, factory
        self.store, self.run_dir, self.device, self.progress = store, run_dir, device, progress
        self.perceptual = perceptual_metric(trial.scenario, data.input_shape[0], device)
        if self.perceptual is not None:
            store.set_trial_info(trial.index, "rel_perceptual_l1", self.perceptual.info)
        self.scorer = scorer
        self.attacks = [
            (i, config, instantiate_attack(config.name, config.params))
            for i, config in enumerate(trial.scenario.attacks)
        ]
        self.server_sees_uploads = secure_sum(trial.scenario) is None
        """Whether the server holds each upload, or (secure aggregation) only their mean."""

    def on_round(
        self,
        server_round: int,
        start: Update,
        uploads: list[TrainReply],
        aggregate: Update,
        aggregate_measurements: Sequence[DefenceReport] = (),
    ) -> None:
        """Attack this round's uploads; ``start`` are the parameters clients started from,
        ``aggregate_measurements`` what the server's aggregate defence (or secure
        aggregation) reported. Under secure aggregation the uploads' ``update`` is
        empty and no attack reads it."""
        self.store.add_round_defences(
            self.trial.index,
            server_round,
            {u.partition_id: by_defence(u.defences) for u in uploads},
            by_defence(aggregate_measurements),
        )
        for index, config, attack in self.attacks:
            if config.rounds is not None and server_round not in config.rounds:
                continue
            for observation, holders, measured in self._observations(
                index, config, server_round, start, uploads, aggregate, aggregate_measurements
            ):
                who = (
                    "aggregate"
                    if observation.client_id is None
                    else f"client {observation.client_id}"
                )
                self.progress(AttackStarted(server_round, config.name, who))
                began = time.perf_counter()
                result = run_attack(attack, observation)
                record = self._record(
                    index,
                    config,
                    attack,
                    observation,
                    result,
                    holders,
                    measured,
                    time.perf_counter() - began,
                )
                self.store.add(record)
                self.progress(
                    AttackScored(
                        server_round,
                        config.name,
                        who,
                        record.status,
                        record.metrics.get("psnr"),
                        record.metrics.get("label_accuracy"),
                        record.reason,
                    )
                )

    def _observations(
        self,
        index: int,
        config: AttackConfig,
        server_round: int,
        start: Update,
        uploads: list[TrainReply],
        aggregate: Update,
        aggregate_measurements: Sequence[DefenceReport],
    ) -> list[tuple[Observation, list[TrainReply], Sequence[DefenceReport]]]:
        """Each observation this attack makes, with the uploads behind it and their
        measurements."""
        fed = self.trial.scenario.federation
        kind = "gradient" if fed.protocol == "fedsgd" else "delta"
        knowledge = config.knowledge
        common: dict[str, Any] = dict(
            position=config.position,
            round=server_round,
            model_factory=self.factory,
            parameters=start,
            kind=kind,
            input_shape=self.data.input_shape,
            num_classes=self.data.num_classes,
            lr=fed.lr,
            device=self.device,
            knowledge=knowledge,
            local_batch_size=fed.batch_size
            if kind == "delta" and "local_hyperparameters" in knowledge
            else None,
            training_regulariser=known_regulariser(fed, self.data.input_shape)
            if "local_hyperparameters" in knowledge
            else None,
        )

        def labels(truth: Truth | None) -> torch.Tensor | None:
            return truth[1] if "labels" in knowledge and truth is not None else None

        if config.position == "server" and self.server_sees_uploads:
            targets = [
                u for u in uploads if config.clients is None or u.partition_id in config.clients
            ]
            chosen = sorted(targets, key=lambda u: u.partition_id)[: config.max_clients]
            return [
                (
                    Observation(
                        **common,
                        client_id=u.partition_id,
                        update=u.update,
                        batch_size=u.observed_batch_size,
                        local_steps=u.local_steps,
                        labels=labels(u.truth),
                        seed=derive_seed(
                            self.trial.scenario.seed, "attack", index, server_round, u.partition_id
                        ),
                    ),
                    [u],
                    u.defences,
                )
                for u in chosen
            ]
        # A participant, or the server under secure aggregation: the round's aggregate.
        observed, update = uploads, aggregate
        if config.participant_client is not None:
            own = [u for u in uploads if u.partition_id == config.participant_client]
            observed = [u for u in uploads if u.partition_id != config.participant_client]
            if not own or not observed:
                return []  # the participant did not take part, or took part alone
            update = others_update(
                aggregate,
                own[0].update,
                own[0].num_examples,
                sum(u.num_examples for u in uploads),
            )
        truths = [u.truth for u in observed]
        known = None
        if "labels" in knowledge and all(t is not None for t in truths):
            known = torch.cat([t[1] for t in truths])  # type: ignore[index]
        observation = Observation(
            **common,
            client_id=observed[0].partition_id if len(observed) == 1 else None,
            update=update,
            batch_size=sum(u.observed_batch_size for u in observed),
            local_steps=max(u.local_steps for u in observed),
            labels=known,
            seed=derive_seed(self.trial.scenario.seed, "attack", index, server_round, "aggregate"),
        )
        return [(observation, observed, aggregate_measurements)]

    def _record(
        self,
        index: int,
        config: AttackConfig,
        attack: Attack[Any],
        observation: Observation,
        result: Reconstruction,
        holders: list[TrainReply],
        measured: Sequence[DefenceReport],
        seconds: float,
    ) -> Record:
        record = Record(
            trial=self.trial.index,
            point=self.trial.point,
            round=observation.round,
            client=observation.client_id,
            position=observation.position,
            attack=config.name,
            attack_index=index,
            update_kind=observation.kind,
            status=result.status,
            reason=result.reason,
            diagnostics=result.diagnostics,
            defence_measurements=by_defence(measured),
            attack_seconds=seconds,
            threat_model=ThreatRecord.model_validate(
                threat_model_record(
                    config.position,
                    config.knowledge,
                    attack.uses | attack.knowledge_needed(observation.kind),
                )
            ),
        )
        if result.status != "ok":
            return record
        try:
            scored = self.scorer.score(
                observation.round,
                [u.partition_id for u in holders],
                [u.truth for u in holders],
                result.images,  # type: ignore[arg-type]
                result.labels,
            )
            scores, label_count = match_scores(scored.parts)
        except (ScoringError, ValueError) as exc:
            record.status, record.reason = "failed", f"cannot score: {exc}"
            return record
        stem = (
            f"t{self.trial.index}_r{observation.round}_"
            f"{'agg' if observation.client_id is None else f'c{observation.client_id}'}_"
            f"a{index}-{config.name}"
        )
        (self.run_dir / "images").mkdir(exist_ok=True)
        perceptual: list[float | None] = []
        for k, score in enumerate(scores):
            original = reconstruction = None
            if self.trial.scenario.output.save_images:
                reconstruction = f"images/{stem}_{k}_reconstruction.png"
                save_png(result.images[k], self.run_dir / reconstruction)  # type: ignore[index]
                if scored.originals is not None:
                    original = f"images/{stem}_{k}_original.png"
                    save_png(scored.originals[score.original_index], self.run_dir / original)
            record.images.append(
                ImageResult.model_validate(
                    {
                        **score.as_dict(),
                        "original_png": original,
                        "reconstruction_png": reconstruction,
                    }
                )
            )
            if self.perceptual is not None and scored.originals is not None:
                perceptual.append(
                    self.perceptual(
                        scored.originals[score.original_index].detach().cpu().numpy(),
                        result.images[k].detach().clamp(0, 1).cpu().numpy(),  # type: ignore[index]
                    )
                )
                record.images[-1].rel_perceptual_l1 = perceptual[-1]
        labelled = [s.label_correct for s in scores if s.label_correct is not None]
        record.metrics = {
            "psnr": float(np.mean([s.psnr for s in scores])),
            "ssim": float(np.mean([s.ssim for s in scores])),
            "mse": float(np.mean([s.mse for s in scores])),
            "label_accuracy": float(np.mean(labelled)) if labelled else None,
            "label_count_accuracy": label_count,
            "success": float(all(s.psnr >= SUCCESS_PSNR for s in scores)),
            "psnr_peak": scores[0].psnr_peak,
            "psnr_255": float(np.mean([s.psnr_255 for s in scores])),
        }
        if self.perceptual is not None:
            values = [v for v in perceptual if v is not None]
            record.metrics["rel_perceptual_l1"] = float(np.mean(values)) if values else None
        return record
