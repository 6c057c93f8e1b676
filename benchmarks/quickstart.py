"""Wall time and peak memory of the quickstart scenario, end to end.

Usage: ``python benchmarks/quickstart.py [SCENARIO]`` (default: scenarios/quickstart.toml).
Peak memory is sampled every 0.2 s over fedsim's process and all its
descendants (Ray's workers included), and reported with the main process's own peak.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from rich.console import Console

from fedsim.run import run_scenario

ROOT = Path(__file__).resolve().parents[1]


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


def main() -> None:
    scenario = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "scenarios" / "quickstart.toml"
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss())
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        _, status = run_scenario(scenario, [], Path(tmp) / "run", Console(stderr=True))
        wall = time.perf_counter() - start
    done.set()
    sampler.join()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"scenario            {scenario.name} ({status})")
    print(f"wall time           {wall:.1f} s")
    print(f"peak memory (tree)  {peak / 2**20:.0f} MiB  (fedsim + Ray workers)")
    print(f"peak memory (main)  {own:.0f} MiB")


if __name__ == "__main__":
    main()
