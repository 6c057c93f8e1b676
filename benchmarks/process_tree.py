"""Peak resident memory and CPU time of this process and all its descendants (Ray's
workers included), sampled in a background thread; shared by the benchmarks."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import psutil


def _tree() -> list[psutil.Process]:
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def tree_rss() -> int:
    """Resident memory in bytes of this process and every descendant."""
    total = 0
    for proc in _tree():
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


class TreeMonitor:
    """``with TreeMonitor() as tree: ...``; ``tree.peak_mib`` is the largest
    :func:`tree_rss` seen (sampled every ``interval`` seconds) and
    :meth:`cpu_seconds` the CPU time (user + system) used so far by every process
    of the tree, ended ones included (as last sampled)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.peak = interval, 0
        self._cpu: dict[int, float] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, tree_rss())
            self.cpu_seconds()
            time.sleep(self.interval)

    def cpu_seconds(self) -> float:
        """CPU seconds used by the tree since it started (read now)."""
        with self._lock:
            for proc in _tree():
                try:
                    times = proc.cpu_times()
                except psutil.Error:
                    continue
                self._cpu[proc.pid] = times.user + times.system
            return sum(self._cpu.values())

    def __enter__(self) -> TreeMonitor:
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
        self.peak = max(self.peak, tree_rss())

    @property
    def peak_mib(self) -> float:
        return self.peak / 2**20
