"""The server's update rule against PyTorch's SGD (an independent implementation)."""

from __future__ import annotations

import pytest
import torch

from fedsim.federation.server_step import ServerStep


@pytest.mark.parametrize("protocol", ["fedsgd", "fedavg"])
@pytest.mark.parametrize("momentum", [0.0, 0.7])
def test_server_step_is_sgd_with_momentum_on_the_aggregate(protocol: str, momentum: float) -> None:
    """Over four rounds, FedSGD's step is SGD(lr) on the mean gradient and FedAvg's is
    SGD(1) on the negated mean delta, both with PyTorch's momentum; buffers stay put."""
    lr = 0.3
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 4, generator=gen)
    reference = torch.nn.Parameter(weight.clone())
    optimiser = torch.optim.SGD(
        [reference], lr=lr if protocol == "fedsgd" else 1.0, momentum=momentum
    )
    step = ServerStep(protocol, lr, momentum)  # type: ignore[arg-type]
    state = {"w": weight, "running_mean": torch.ones(2)}
    for _ in range(4):
        aggregate = torch.randn(3, 4, generator=gen)
        state = step(state, {"w": aggregate})
        reference.grad = aggregate if protocol == "fedsgd" else -aggregate
        optimiser.step()
        torch.testing.assert_close(state["w"], reference.detach(), rtol=0, atol=1e-6)
        assert torch.equal(state["running_mean"], torch.ones(2))
