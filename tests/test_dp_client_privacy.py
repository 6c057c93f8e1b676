"""What a client's noise is drawn from, and what its reply carries under a formal guarantee.

A client's round runs in process (no Flower): ``seeded`` noise (simulation) is a
function of the scenario's seed, which the server knows; ``os-entropy`` noise
(deployment) is not. Under ``dp_gaussian`` (client placement) and ``dp_sgd``
the reply carries no statistic of the private data or of the noise drawn.
One real simulation checks what the server received and recorded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord

from fedsim.cli import main
from fedsim.federation.client_app import local_update
from fedsim.federation.defence_stages import ServerAggregation
from fedsim.federation.protocol import TrainReply, by_defence, reply_contents
from fedsim.privacy.noise import ENGINE_NOISE
from fedsim.scenario import Scenario, expand
from fedsim.trial_inputs import federated_data, model_factory

CLIENT_NOISE_DEFENCES = {
    "gaussian_noise": {"name": "gaussian_noise", "sigma": 0.1},
    "dp_gaussian": {"name": "dp_gaussian", "clip_norm": 1.0, "noise_multiplier": 1.0},
    "dp_sgd": {"name": "dp_sgd", "noise_multiplier": 1.0},
}
ALWAYS_SENT = {"num-examples", "partition-id", "local-steps"}
PUBLIC = {
    "dp_gaussian": {"noise_std", "epsilon", "delta"},
    "dp_sgd": {"noise_std", "sample_rate", "expected_batch_size", "epsilon", "delta"},
}


def scenario(protocol: str, *defences: dict[str, Any]) -> Scenario:
    raw = {
        "data": {"dataset": "digits", "image_size": 8, "max_samples": 200},
        "model": {"name": "convnet", "layers": [[3, 4, 2]], "activation": "tanh"},
        "federation": {"num_clients": 4, "protocol": protocol, "batch_size": 4},
        "defences": list(defences),
    }
    return expand(raw, "test")[0].scenario


def sent(reply: TrainReply) -> set[str]:
    """The names of the metrics and measurements in ``reply``, as ``results.json``'s
    ``client_sent`` lists them."""
    return reply_contents(reply.to_content()) - {"update", "metrics"}


def arrays(sc: Scenario) -> ArrayRecord:
    return ArrayRecord.from_torch_state_dict(model_factory(sc, federated_data(sc))().state_dict())


def upload(sc: Scenario, noise: str) -> torch.Tensor:
    """Client 1's round-2 upload, flattened."""
    reply, _ = local_update(sc, 1, 2, arrays(sc), {}, noise)  # type: ignore[arg-type]
    return torch.cat([v.flatten() for v in reply.update.values()])


@pytest.mark.parametrize("defence", sorted(CLIENT_NOISE_DEFENCES))
def test_os_entropy_noise_differs_every_time_and_seeded_noise_never(defence: str) -> None:
    sc = scenario("fedsgd", CLIENT_NOISE_DEFENCES[defence])
    seeded = upload(sc, "seeded")
    assert torch.equal(upload(sc, "seeded"), seeded)  # the server can replay it
    first, second = upload(sc, "os-entropy"), upload(sc, "os-entropy")
    assert not torch.equal(first, second)
    assert not torch.equal(first, seeded) and not torch.equal(second, seeded)


def test_the_servers_noise_is_os_entropy_on_the_deployment_engine() -> None:
    """Clients receive the scenario, seed included: on the deployment engine the
    server's noise (central DP) must not be replayable from it either."""
    sc = scenario(
        "fedsgd",
        {"name": "dp_gaussian", "placement": "server", "clip_norm": 1.0, "noise_multiplier": 1.0},
    )
    updates = [{"w": torch.full((50,), float(i))} for i in range(3)]

    def aggregate(noise: str) -> torch.Tensor:
        mean, _ = ServerAggregation(sc, noise)(1, updates, [1.0, 1.0, 1.0])  # type: ignore[arg-type]
        return mean["w"]

    assert torch.equal(aggregate("seeded"), aggregate("seeded"))
    assert not torch.equal(aggregate("os-entropy"), aggregate("os-entropy"))
    assert ENGINE_NOISE == {"simulation": "seeded", "deployment": "os-entropy"}


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
@pytest.mark.parametrize("defence", sorted(PUBLIC))
def test_a_formally_private_reply_carries_no_statistic_of_data_or_noise(
    defence: str, protocol: str
) -> None:
    sc = scenario(protocol, CLIENT_NOISE_DEFENCES[defence])
    metrics = sent(local_update(sc, 1, 1, arrays(sc), {})[0])
    # No train-loss, no (realised Poisson) batch-size, no norm before or after clipping,
    # nothing measured of the noise drawn: only the configuration and the accountant.
    assert set(metrics) == ALWAYS_SENT | {f"defence0.{k}" for k in PUBLIC[defence]}


def test_measurements_before_the_private_release_stay_and_after_it_leave() -> None:
    sc = scenario(
        "fedsgd",
        {"name": "pruning", "p": 0.5},
        CLIENT_NOISE_DEFENCES["dp_gaussian"],
        CLIENT_NOISE_DEFENCES["gaussian_noise"],
    )
    reply, _ = local_update(sc, 1, 1, arrays(sc), {})
    # Pruning measured the raw update: nothing of it leaves. The noise added after the
    # private release only post-processes it: all of its measurements leave.
    sent = {index: set(values) for index, values in by_defence(reply.defences).items()}
    assert sent == {
        1: set(PUBLIC["dp_gaussian"]),
        2: {"noise_std", "measured_noise_std", "update_norm", "noise_to_update_norm"},
    }


def test_without_a_formal_guarantee_the_reply_keeps_its_statistics() -> None:
    sc = scenario("fedsgd", CLIENT_NOISE_DEFENCES["gaussian_noise"])
    metrics = sent(local_update(sc, 1, 1, arrays(sc), {})[0])
    assert {"train-loss", "batch-size", "defence0.measured_noise_std"} <= metrics


SIMULATED = """\
name = "dp_sent"
seed = 3
device = "cpu"
[data]
dataset = "digits"
image_size = 8
max_samples = 220  # two shards of 88: Opacus's q = 1/22, expected batch 4 on both
[model]
name = "convnet"
layers = [[3, 4, 2]]
activation = "tanh"
[federation]
num_clients = 2
clients_per_round = 2
rounds = 2
protocol = "fedsgd"
batch_size = 4
[[attacks]]
name = "dlg"
rounds = [1]
iterations = 2
[[defences]]
name = "dp_sgd"
noise_multiplier = 1.0
"""


@pytest.mark.slow
def test_the_server_records_what_dp_sgd_clients_sent(tmp_path: Path) -> None:
    (tmp_path / "dp.toml").write_text(SIMULATED, encoding="utf-8")
    assert main(["run", str(tmp_path / "dp.toml"), "--out", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text(encoding="utf-8"))

    assert results["client_noise"] == "seeded"
    (trial,) = results["trials"]
    assert trial["status"] == "complete" and trial["client_failures"] == []
    # Records, then metric keys; ``truth`` and ``client-state`` are the simulation's own.
    assert trial["client_sent"] == sorted(
        {"update", "metrics", "truth", "client-state"}
        | ALWAYS_SENT
        | {f"defence0.{k}" for k in PUBLIC["dp_sgd"]}
    )
    # Without the realised batch size the server attacks a batch of the expected size.
    (record,) = results["records"]
    assert trial["defences"]["1"]["clients"]["0"]["expected_batch_size"] == 4
    assert record["status"] == "ok" and len(record["images"]) == 4
