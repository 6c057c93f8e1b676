"""Wall time and peak memory of the quickstart scenario, end to end.

Usage: ``python benchmarks/quickstart.py [SCENARIO]`` (default: scenarios/quickstart.toml).
Peak memory is sampled every 0.2 s over fedsim's process and all its
descendants (Ray's workers included), and reported with the main process's own peak.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

from process_tree import TreeMonitor
from rich.console import Console

from fedsim.run import run_scenario

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    scenario = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "scenarios" / "quickstart.toml"
    with tempfile.TemporaryDirectory() as tmp, TreeMonitor() as tree:
        start = time.perf_counter()
        _, status = run_scenario(scenario, [], Path(tmp) / "run", Console(stderr=True))
        wall = time.perf_counter() - start
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"scenario            {scenario.name} ({status})")
    print(f"wall time           {wall:.1f} s")
    print(f"peak memory (tree)  {tree.peak_mib:.0f} MiB  (fedsim + Ray workers)")
    print(f"peak memory (main)  {own:.0f} MiB")


if __name__ == "__main__":
    main()
