"""Prefill benchmark of FastV vs the unpatched model; the same as `fastv bench --out benchmarks/results --force`.

    python benchmarks/bench_prefill.py --suite all     # image (LLaVA-1.5-7B width) then video (8 frames)

Writes JSON, a PNG plot and a markdown table per suite under benchmarks/results/ (the README's tables),
replacing the previous ones; `fastv bench` alone writes a new runs/bench-<time>/ folder instead.
"""

from __future__ import annotations

import sys

from fastv.cli import app, bench, flops  # noqa: F401  (importing a verb module registers its command)

if __name__ == "__main__":
    app(["bench", "--out", "benchmarks/results", "--force", *sys.argv[1:]], prog_name="bench_prefill.py")
