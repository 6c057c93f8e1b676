"""DP-SGD with Opacus on the client (dp_sgd): ε, clipping, noise, unsupported models.

Runs a client's local round in process (no Flower); the accountant's state
travels between rounds exactly as the ClientApp keeps it in ``Context.state``.
The noise measurements, which stay on the client, are read off the plugin's
own result (:func:`trained`).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, RecordDict
from opacus.accountants import RDPAccountant
from torch import nn

from fedsim.api import LocalTraining, TrainingResult
from fedsim.cli import main
from fedsim.federation.client_app import (
    load_defence_state,
    local_update,
    round_generator,
    save_defence_state,
)
from fedsim.federation.protocol import by_defence
from fedsim.registry import instantiate_defence
from fedsim.scenario import Scenario, expand
from fedsim.trial_inputs import federated_data, model_factory

DELTA = 1e-5
# digits at 16×16, 400 samples: 320 train, 80 for clients 1-3; batch 4 → Opacus's q = 1/20.
SHARD, BATCH = 80, 4
SAMPLE_RATE = 1 / math.ceil(SHARD / BATCH)


class BatchNormNet(nn.Module):
    """A model Opacus cannot train as is (BatchNorm mixes the samples of a batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, stride=2)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.norm(self.conv(x))).flatten(1))


def scenario(protocol: str = "fedavg", model: dict | None = None, **dp_sgd: object) -> Scenario:
    raw = {
        "data": {"dataset": "digits", "image_size": 16, "max_samples": 400},
        "model": model or {"name": "convnet", "layers": [[3, 4, 2]], "activation": "tanh"},
        "federation": {"num_clients": 4, "protocol": protocol, "batch_size": BATCH, "lr": 0.1},
        "defences": [{"name": "dp_sgd", "delta": DELTA, **dp_sgd}],
    }
    return expand(raw, "test")[0].scenario


def start(sc: Scenario) -> tuple[nn.Module, ArrayRecord]:
    model = model_factory(sc, federated_data(sc))()
    return model, ArrayRecord.from_torch_state_dict(model.state_dict())


def trained(sc: Scenario, partition: int, server_round: int, arrays: ArrayRecord) -> TrainingResult:
    """The dp_sgd plugin's own result for a client's round, trained as the simulated
    ClientApp trains it (same seeded generator), with every measurement it made."""
    data = federated_data(sc)
    model = model_factory(sc, data)()
    model.load_state_dict(arrays.to_torch_state_dict())
    shard, fed = data.shards[partition], sc.federation
    images, labels = shard.batch(torch.arange(len(shard.labels)))
    task = LocalTraining(
        model.train(), images, labels, fed.protocol, fed.batch_size, fed.lr, fed.local_epochs,
        round_generator(sc, partition, server_round),
    )  # fmt: skip
    return instantiate_defence("dp_sgd", sc.defences[0].params).train(task)


def opacus_epsilon(noise_multiplier: float, sample_rate: float, steps: int) -> float:
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, steps)]
    return accountant.get_epsilon(DELTA)


@pytest.mark.parametrize("protocol", ["fedavg", "fedsgd"])
def test_epsilon_equals_opacus_accountant_over_rounds(protocol: str) -> None:
    sc = scenario(protocol, noise_multiplier=1.1, max_grad_norm=1.0)
    _, arrays = start(sc)
    kept: dict = {}  # what the ClientApp keeps in Context.state between rounds
    steps, epsilons = 0, []
    for server_round in (1, 2, 3):
        reply, _ = local_update(sc, 1, server_round, arrays, kept)
        steps += reply.local_steps
        metrics = by_defence(reply.defences)[0]
        assert metrics["sample_rate"] == pytest.approx(SAMPLE_RATE)
        assert metrics["delta"] == DELTA
        epsilons.append(metrics["epsilon"])
        assert metrics["epsilon"] == pytest.approx(
            opacus_epsilon(1.1, SAMPLE_RATE, steps), rel=1e-9
        )
    assert steps == (3 * SHARD // BATCH if protocol == "fedavg" else 3)
    assert epsilons[0] < epsilons[1] < epsilons[2]
    # Without the kept state every round would report the first round's ε (Flower's example).
    fresh = by_defence(local_update(sc, 1, 3, arrays, {})[0].defences)[0]
    assert fresh["epsilon"] == pytest.approx(epsilons[0], rel=0.05)


def test_defence_state_round_trips_through_flower_context_state() -> None:
    context = Context(run_id=1, node_id=2, node_config={}, state=RecordDict(), run_config={})
    assert load_defence_state(context) == {}
    state = {"0": {"history": [[1.1, 0.05, 60]]}}
    save_defence_state(context, state)
    assert load_defence_state(context) == state


def per_sample_clipped_mean(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float, expected_batch: float
) -> dict[str, torch.Tensor]:
    """``Σ_i clip(∇ loss(x_i)) / E[B]``, computed one sample at a time."""
    names, params = zip(*model.named_parameters(), strict=True)
    total = {n: torch.zeros_like(p) for n, p in zip(names, params, strict=True)}
    for i in range(len(y)):
        grads = torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]), params)
        norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        for name, g in zip(names, grads, strict=True):
            total[name] += g * min(1.0, clip / norm)
    return {n: t / expected_batch for n, t in total.items()}


def test_fedsgd_upload_is_the_per_sample_clipped_mean_plus_noise_of_the_stated_std() -> None:
    clip = 0.05  # far below the per-sample gradient norms: every sample is clipped
    clean_sc = scenario("fedsgd", noise_multiplier=0.0, max_grad_norm=clip)
    model, arrays = start(clean_sc)
    result = trained(clean_sc, 1, 4, arrays)
    clean, metrics, (x, y) = result.update, result.measurements, result.batch
    expected_batch = metrics["expected_batch_size"]

    assert len(y) > 0
    assert result.num_examples == expected_batch == SHARD * SAMPLE_RATE
    expected = per_sample_clipped_mean(model, x, y, clip, expected_batch)
    for name in expected:
        torch.testing.assert_close(clean[name], expected[name], rtol=1e-4, atol=1e-7)
    norm = math.sqrt(sum(float(v.pow(2).sum()) for v in clean.values()))
    assert norm <= clip * len(y) / expected_batch * (1 + 1e-5)
    assert math.isinf(metrics["epsilon"])  # clipping without noise: no guarantee

    # Same seed, same Poisson batch; now with noise std z·C on the sum, i.e. z·C/E[B] here.
    noisy_result = trained(
        scenario("fedsgd", noise_multiplier=3.0, max_grad_norm=clip), 1, 4, arrays
    )
    noisy, noisy_metrics = noisy_result.update, noisy_result.measurements
    assert torch.equal(noisy_result.batch[0], x)
    noise = torch.cat([(noisy[n] - clean[n]).flatten() for n in clean]).double()
    configured = 3.0 * clip / expected_batch
    assert noisy_metrics["noise_std"] == pytest.approx(configured)
    assert noisy_metrics["measured_noise_std"] == pytest.approx(
        noise.std(correction=0).item(), rel=1e-3
    )
    # ~2,000 parameters: relative standard error of the std ≈ 1.6 %; 8 % is 5 SE.
    assert noise.std().item() == pytest.approx(configured, rel=0.08)


def test_fedavg_noise_measured_over_all_steps_matches_the_configured_std() -> None:
    sc = scenario("fedavg", noise_multiplier=0.7, max_grad_norm=0.5)
    _, arrays = start(sc)
    metrics = trained(sc, 2, 1, arrays).measurements
    configured = 0.7 * 0.5 / metrics["expected_batch_size"]
    assert metrics["noise_std"] == pytest.approx(configured)
    # 20 steps × ~2,000 parameters ≈ 40,000 draws: standard error 0.35 %; 2 % is ~6 SE.
    assert metrics["measured_noise_std"] == pytest.approx(configured, rel=0.02)
    assert metrics["noise_to_update_norm"] > 1


BN_MODEL = {"name": "test_dp_sgd:BatchNormNet"}


def test_a_model_opacus_cannot_train_is_refused_with_opacus_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bn.toml"
    source.write_text(
        '[data]\ndataset = "digits"\nimage_size = 16\nmax_samples = 200\n'
        '[model]\nname = "test_dp_sgd:BatchNormNet"\n'
        '[federation]\nnum_clients = 2\n[[defences]]\nname = "dp_sgd"\n',
        encoding="utf-8",
    )
    assert main(["run", str(source), "--out", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"fedsim: {source}: defences[0]: Opacus cannot train this model:")
    assert "BatchNorm cannot support training with differential privacy" in error
    assert error.endswith(
        "set fix_model = true to let Opacus's ModuleValidator.fix replace those layers"
    )
    assert "\n" not in error
    assert not (tmp_path / "run").exists()


def test_fix_model_replaces_batchnorm_everywhere_and_trains() -> None:
    sc = scenario("fedsgd", model=BN_MODEL, fix_model=True, noise_multiplier=0.5)
    model, arrays = start(sc)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "GroupNorm" in kinds and "BatchNorm2d" not in kinds
    reply, _ = local_update(sc, 0, 1, arrays, {})
    update, metrics = reply.update, by_defence(reply.defences)[0]
    assert set(update) == {n for n, _ in model.named_parameters()}
    assert math.isfinite(metrics["epsilon"])
