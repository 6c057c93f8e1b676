"""One torch thread count for every process that computes.

The thread count of torch's intra-op pool changes the order of floating-point
reductions (convolutions, matrix products), so the same upload computed with 1
and with 2 threads differs in its last bits — and an optimisation attack of
hundreds of L-BFGS steps amplifies that into a different reconstruction. The
ServerApp and every ClientApp therefore run with the scenario's ``threads``,
whichever engine (Ray workers, ``flwr-clientapp`` processes, the ServerApp in
``fedsim run``'s process or in ``flwr-serverapp``) hosts them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` (≥ 1) torch intra-op threads, then restore the
    process's previous count (torch's thread pool is process-wide)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
