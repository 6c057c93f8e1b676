"""Shared test configuration."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    """Every test process computes with one torch intra-op thread: the same floating-point
    reduction order on every machine, whatever its core count (attack thresholds hold
    bit for bit), and the suite's workers (pytest-xdist, one per core) do not compete
    for cores. For the suite's small models one thread is also the faster: the
    optimisation attacks took 97 s with one thread against 135 s with two, on 2 cores."""
    torch.set_num_threads(1)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: Ray's socket paths under it must stay short."""
    with tempfile.TemporaryDirectory(prefix="fs") as folder:
        yield Path(folder)
