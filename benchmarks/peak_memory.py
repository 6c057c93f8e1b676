"""Peak resident memory of this process and all its descendants (Ray's workers
included), sampled in a background thread; shared by the benchmarks."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import psutil


def tree_rss() -> int:
    """Resident memory in bytes of this process and every descendant."""
    me = psutil.Process()
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


class PeakMemory:
    """``with PeakMemory() as peak: ...``; then ``peak.bytes`` is the largest
    :func:`tree_rss` seen, sampled every ``interval`` seconds."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.bytes = interval, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.bytes = max(self.bytes, tree_rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()
        self.bytes = max(self.bytes, tree_rss())

    @property
    def mib(self) -> float:
        return self.bytes / 2**20
