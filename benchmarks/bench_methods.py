"""Prefill time and peak memory of every token-reduction method at 192/128/64 visual tokens kept.

    PYTHONPATH=src python benchmarks/bench_methods.py [--layers 5] [--rounds 2] [--keeps 192 128 64]

Model: a random-weight LLaVA-1.5-7B shape (Vicuna-7B width 4096, 32 heads, MLP 11008; the language
model's depth truncated to `--layers` so a 2-core CPU can run it) in bf16, with a 2-layer tiny CLIP
tower that still emits 576 visual tokens (48 px / patch 2) and keeps LLaVA's vision_feature_layer=-2
(VisionZip reads the CLS attention there). One prompt: 4 text tokens, one image, 36 text tokens.

Every round runs the full model, then each (method, keep), then the full model again, in one
process, so all settings share the machine's load; a warm-up call of each path comes first and the
medians over rounds are reported as ratios to the full model's median. Peak memory is the peak
resident memory above the level at the call's start (sampled every 2 ms, with glibc told to return
large blocks to the OS at once so that freed activations leave RSS). FLOPs ratios come from
`fastv.flops.prefill_flops` on the per-layer lengths each method actually ran.

Writes benchmarks/results/methods.json, methods.png and methods.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # freed activations must leave RSS to be measurable
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import torch  # noqa: E402

from fastv import FastVError, flops  # noqa: E402
from fastv.bench.measure import BenchConfig, PeakRSS, build_inputs, build_model  # noqa: E402
from fastv.methods import make  # noqa: E402

OUT = Path(__file__).parent / "results"
METHODS = ("fastv", "pdrop", "random", "uniform", "pool", "divprune", "visionzip")
PRE_LM = {"random", "uniform", "pool", "divprune", "visionzip"}
N_TEXT = 40


def timed(model, inputs, handle=None) -> tuple[float, int, list[int] | None]:
    with PeakRSS() as mem, torch.inference_mode():
        start = time.perf_counter()
        model(**inputs, logits_to_keep=1)
        took = time.perf_counter() - start
    lens = list(handle.stats.layer_seq_lens) if handle is not None and handle.stats else None
    return took, mem.delta, lens


def _where(name: str, method, n_layers: int) -> str:
    if name in PRE_LM:
        return "before the LM"
    if name == "pdrop":
        return "layers " + ",".join(str(c) for c in method.cuts(n_layers))
    return f"layer {method.k}"


def settings(keeps: list[int]):
    for name in METHODS:
        for keep in keeps:
            yield name, keep, (dict(k=2) if name == "fastv" else {})


def run(layers: int, rounds: int, keeps: list[int]) -> dict:
    t0 = time.time()
    cfg = BenchConfig(model="llava-1.5-7b", layers=layers, n_text=N_TEXT, vision_layers=2)
    model, _ = build_model(cfg)  # the same LLaVA-1.5-7B-shaped random model `fastv bench` times
    inputs, _ = build_inputs(model, cfg)
    config = model.config
    text_config, n_layers = config.text_config, layers
    built = time.time() - t0
    methods, skipped = {}, {}
    for name, keep, extra in settings(keeps):
        method = make(name, keep=keep, **extra)
        try:
            method.apply(model).remove()  # refuses budgets the method cannot meet on this model
        except FastVError as err:
            skipped[f"{name}@{keep}"] = str(err)
            continue
        methods[(name, keep)] = method
    times: dict = {key: [] for key in methods}
    mems: dict = {key: [] for key in methods}
    lens: dict = {}
    full_t, full_m = [], []
    timed(model, inputs)  # warm-up
    for key, method in methods.items():
        if key[1] == min(keeps):
            with method.apply(model) as handle:
                timed(model, inputs, handle)
    for r in range(rounds):
        for half, part in enumerate((list(methods.items())[::2], list(methods.items())[1::2])):
            t, m, _ = timed(model, inputs)
            full_t.append(t)
            full_m.append(m)
            for key, method in part:
                with method.apply(model) as handle:
                    t, m, lens[key] = timed(model, inputs, handle)
                times[key].append(t)
                mems[key].append(m)
            print(f"round {r + 1}/{rounds} half {half + 1}: full {full_t[-1]:.2f}s, {time.time() - t0:.0f}s so far")
    full_time, full_mem = statistics.median(full_t), statistics.median(full_m)
    full_lens = [inputs["input_ids"].shape[1]] * n_layers
    full_flops = flops.prefill_flops(text_config, full_lens)
    rows = []
    for (name, keep), ts in times.items():
        rows.append(
            dict(
                method=name,
                keep=keep,
                where=_where(name, methods[(name, keep)], n_layers),
                prefill_s=statistics.median(ts),
                prefill_all_s=ts,
                time_ratio=statistics.median(ts) / full_time,
                peak_mem_mb=statistics.median(mems[(name, keep)]) / 2**20,
                mem_ratio=statistics.median(mems[(name, keep)]) / full_mem if full_mem else float("nan"),
                layer_seq_lens=lens[(name, keep)],
                flops_ratio=flops.prefill_flops(text_config, lens[(name, keep)]) / full_flops,
            )
        )
    return dict(
        model=(
            f"random-weight LLaVA-1.5-7B shape, bf16: language model width 4096 (32 heads, MLP 11008), depth "
            f"truncated to {layers} of 32 layers; 2-layer tiny CLIP tower emitting 576 visual tokens; "
            f"prompt {N_TEXT} text + 576 visual tokens"
        ),
        machine=dict(platform=platform.platform(), cpu_threads=torch.get_num_threads(), torch=torch.__version__),
        rounds=rounds,
        build_s=built,
        total_s=time.time() - t0,
        full=dict(prefill_s=full_time, prefill_all_s=full_t, peak_mem_mb=full_mem / 2**20, layer_seq_lens=full_lens),
        methods=rows,
        skipped=skipped,
    )


def markdown(result: dict, keeps: list[int]) -> str:
    head = "| method | where | " + " | ".join(f"{k}: time / mem / FLOPs" for k in keeps) + " |"
    lines = [head, "|" + "---|" * (2 + len(keeps))]
    by = {(r["method"], r["keep"]): r for r in result["methods"]}
    for name in METHODS:
        cells = []
        where = next((r["where"] for r in result["methods"] if r["method"] == name), "")
        for k in keeps:
            r = by.get((name, k))
            cells.append(
                f"{r['time_ratio']:.2f} / {r['mem_ratio']:.2f} / {r['flops_ratio']:.2f}" if r else "n/a (budget)"
            )
        lines.append(f"| {name} | {where} | " + " | ".join(cells) + " |")
    full = result["full"]
    lines.append("")
    lines.append(
        f"Full model: prefill {full['prefill_s']:.2f} s, peak +{full['peak_mem_mb']:.0f} MB; ratios are to it."
    )
    for key, why in result["skipped"].items():
        lines.append(f"- {key} skipped: {why}")
    return "\n".join(lines)


def plot(result: dict, keeps: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(keeps)
    by = {(r["method"], r["keep"]): r for r in result["methods"]}
    for ax, field, title in ((axes[0], "time_ratio", "prefill time"), (axes[1], "mem_ratio", "peak memory")):
        for j, k in enumerate(keeps):
            xs = [i + (j - (len(keeps) - 1) / 2) * width for i in range(len(METHODS))]
            ys = [by[(m, k)][field] if (m, k) in by else 0 for m in METHODS]
            ax.bar(xs, ys, width, label=f"keep {k}")
            for x, m in zip(xs, METHODS, strict=True):
                if (m, k) not in by:
                    ax.text(x, 0.02, "n/a", rotation=90, ha="center", va="bottom", fontsize=7)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(METHODS)), METHODS, rotation=20)
        ax.set_ylabel(f"{title} / full model")
        ax.set_title(f"{title} (lower is better)")
    axes[0].legend()
    fig.suptitle(result["model"][:110], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--keeps", type=int, nargs="+", default=[192, 128, 64])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = run(args.layers, args.rounds, args.keeps)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "methods.json").write_text(json.dumps(result, indent=1))
    table = markdown(result, args.keeps)
    (OUT / "methods.md").write_text(table + "\n")
    plot(result, args.keeps, OUT / "methods.png")
    print(table)


if __name__ == "__main__":
    main()
