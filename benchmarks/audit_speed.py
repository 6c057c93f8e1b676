"""How fast is the c(M) audit? Time and peak memory of the structured rank path.

Runs the audit (one forward/backward pass on a photo, then every conv layer's
rank(U)) on COPA's four CNN3 variants and on a 3-conv-layer net with 32
channels per layer (3×3 kernels, stride 1) on 3×32×32 input, each model in a
fresh process so its peak resident memory is its own, and prints the memory
the dense reference path would have needed for U alone (its SVD needs more).

    python benchmarks/audit_speed.py            # all five models
    python benchmarks/audit_speed.py --only 32x3
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time

MODELS = {
    "cnn3-1": {"preset": "cnn3-1"},
    "cnn3-2": {"preset": "cnn3-2"},
    "cnn3-3": {"preset": "cnn3-3"},
    "cnn3-4": {"preset": "cnn3-4"},
    "32x3": {"layers": [(3, 32, 1), (3, 32, 1), (3, 32, 1)]},
}


def audit_one(name: str, queue: mp.Queue) -> None:
    from fedsim.audit.cm import audit_model
    from fedsim.data.datasets import load_photos
    from fedsim.models.zoo import build_model

    photos = load_photos(32, 1, 0)
    sample = (photos.images[:1].float() / 255.0, photos.labels[:1])
    model = build_model(
        "convnet", input_shape=(3, 32, 32), num_classes=10, activation="tanh", **MODELS[name]
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    began = time.perf_counter()
    report = audit_model(model, (3, 32, 32), sample, "chelsea")
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put(
        {
            "name": name,
            "c_m": report.c_m,
            "seconds": seconds,
            "peak_mib": peak / 1024,
            "base_mib": before / 1024,
            "dense_gib": sum(a.dense_bytes for a in report.layers) / 2**30,
            "layers": [
                (a.index, a.n, a.z, a.w, a.rank, a.seconds, a.kept, a.dropped)
                for a in report.layers
            ],
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(MODELS), action="append")
    args = parser.parse_args()
    context = mp.get_context("spawn")
    print(f"{'model':8} {'c(M)':>9} {'time s':>8} {'peak MiB':>9} {'dense U GiB':>12}")
    for name in args.only or list(MODELS):
        queue = context.Queue()
        process = context.Process(target=audit_one, args=(name, queue))
        process.start()
        result = queue.get()
        process.join()
        print(
            f"{name:8} {result['c_m']:9.1f} {result['seconds']:8.1f} {result['peak_mib']:9.0f} "
            f"{result['dense_gib']:12.2f}"
        )
        for index, n, z, w, rank, seconds, kept, dropped in result["layers"]:
            gap = "-" if dropped is None else f"{dropped:.1e}"
            print(
                f"    layer {index}: n={n} |Z|={z} |W|={w} rank={rank} {seconds:.1f} s "
                f"(smallest kept {kept:.1e}, largest dropped {gap})"
            )


if __name__ == "__main__":
    main()
