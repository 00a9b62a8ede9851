"""Prefill time and memory of every token-reduction method at 192/128/64 visual tokens kept.

    PYTHONPATH=src python benchmarks/bench_methods.py [any further `fastv bench` options]

A thin call of the library: the same as

    fastv bench --method fastv,pdrop,sparsevlm,dart,random,uniform,pool,divprune,cdpruner,visionzip,\\
                         holov,vscan,flowcut,visionzip+fastv --keep 192,128,64 \\
        --layers 5 --repeats 2 --threads 2 --out benchmarks/results --name methods --force

(a random-weight LLaVA-1.5-7B shape, depth truncated to 5 of 32 layers, a 3-layer tiny CLIP tower
emitting 576 visual tokens; every method timed between two runs of the full model, medians).
The only thing added here: glibc is told to return large freed blocks to the OS at once, so that
freed activations leave resident memory and the peak-memory column measures them.
Writes benchmarks/results/methods.json, methods.png and methods.md.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # freed activations must leave RSS to be measurable
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    os.execv(sys.executable, [sys.executable, *sys.argv])

from fastv.cli import main  # noqa: E402

# Every image method of the registry (holitom is video-only) and one composition, in-LLM ones first.
METHODS = "fastv,pdrop,sparsevlm,dart,random,uniform,pool,divprune,cdpruner,visionzip,holov,vscan,flowcut"
ARGS = [
    "bench", "--method", f"{METHODS},visionzip+fastv", "--keep", "192,128,64",
    "--layers", "5", "--repeats", "2", "--threads", "2", "--out", "benchmarks/results", "--name", "methods", "--force",
]  # fmt: skip

if __name__ == "__main__":
    sys.argv = [sys.argv[0], *ARGS, *sys.argv[1:]]
    main()
