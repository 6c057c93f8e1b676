"""A client's local round (fedsim.federation.client_app.local_update), without Flower."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord

from fedsim.federation.client_app import local_update
from fedsim.federation.protocol import by_defence
from fedsim.scenario import expand
from fedsim.trial_inputs import federated_data, model_factory


def _scenario(**federation: object) -> object:
    raw = {
        "data": {"dataset": "digits", "image_size": 16, "max_samples": 200},
        "model": {"name": "convnet", "layers": [[3, 4, 2]], "activation": "tanh"},
        "federation": {"num_clients": 4, **federation},
        "defences": [{"name": "gaussian_noise", "sigma": 0.0}],
    }
    return expand(raw, "test")[0].scenario


def _start(scenario: object) -> tuple[torch.nn.Module, ArrayRecord]:
    model = model_factory(scenario, federated_data(scenario))()
    return model, ArrayRecord.from_torch_state_dict(model.state_dict())


def test_fedsgd_upload_is_the_gradient_of_the_reported_batch() -> None:
    scenario = _scenario(protocol="fedsgd", batch_size=3)
    model, state = _start(scenario)
    reply, (x, y) = local_update(scenario, 1, 1, state)
    loss = F.cross_entropy(model(x), y)
    expected = torch.autograd.grad(loss, list(model.parameters()))
    for (name, _), grad in zip(model.named_parameters(), expected, strict=True):
        torch.testing.assert_close(reply.update[name], grad)
    assert reply.num_examples == 3 and reply.local_steps == 1
    assert reply.partition_id == 1
    assert reply.train_loss is not None
    assert math.isclose(reply.train_loss, loss.item(), rel_tol=1e-5)


def test_fedsgd_batch_is_seeded_by_round_and_client() -> None:
    scenario = _scenario(protocol="fedsgd", batch_size=2)
    _, state = _start(scenario)
    first = local_update(scenario, 0, 1, state)[1][0]
    again = local_update(scenario, 0, 1, state)[1][0]
    other_round = local_update(scenario, 0, 2, state)[1][0]
    assert torch.equal(first, again)
    assert not torch.equal(first, other_round)


def test_fedavg_upload_is_the_weight_delta_of_local_sgd() -> None:
    scenario = _scenario(protocol="fedavg", batch_size=8, local_epochs=2, lr=0.05)
    model, state = _start(scenario)
    reply, (x, y) = local_update(scenario, 2, 1, state)
    update = reply.update
    n = len(y)
    assert reply.num_examples == n == reply.batch_size
    assert reply.local_steps == 2 * math.ceil(n / 8)
    norms = [float(v.norm()) for v in update.values()]
    assert all(math.isfinite(v) for v in norms) and sum(norms) > 0
    # Applying the delta and recomputing the loss on the shard: training lowered it.
    after = {k: v + update[k] for k, v in model.state_dict().items()}
    trained = model_factory(scenario, federated_data(scenario))()
    trained.load_state_dict(after)
    with torch.no_grad():
        assert F.cross_entropy(trained(x), y) < F.cross_entropy(model(x), y)


def test_defence_measurements_are_reported_per_defence() -> None:
    scenario = _scenario(protocol="fedsgd", batch_size=1)
    _, state = _start(scenario)
    reply, _ = local_update(scenario, 0, 1, state)
    (report,) = reply.defences
    assert report.index == 0
    assert report.values["noise_std"] == 0.0
    assert report.values["update_norm"] > 0
    # as results.json records them
    assert by_defence(reply.defences) == {0: report.values}
