"""A benchmark run's results and how they are written: dataclasses, JSON, the PNG plot and the markdown table."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class SettingResult:
    """Medians for one (K, R) and how they compare with the FLOPs prediction."""

    k: int
    ratio: float
    kept: int
    prefill_s: float  # median wall-clock time to first token
    prefill_cpu_s: float  # median CPU time of the process over the same span
    decode_tok_s: float
    peak_mem_mb: float
    kv_bytes: int
    speedup_measured: float  # wall clock
    speedup_measured_cpu: float
    speedup_predicted: float
    efficiency: float  # measured / predicted speed-up (wall clock)
    efficiency_cpu: float
    kv_bytes_predicted: int
    kv_error: float  # measured / predicted - 1
    kv_saving: float  # 1 - FastV cache / full cache
    kv_saving_predicted: float
    flops: int
    layer_seq_lens: list[int]
    prefill_all_s: list[float]
    # median over runs of (pruned time) / (mean of the two unpatched runs around it)
    time_share: float = float("nan")
    time_share_cpu: float = float("nan")
    method: str = "fastv"
    keep: int | None = None  # the budget, when given in visual tokens kept
    label: str = ""  # e.g. "fastv k=2 r=0.5", "pool keep=64" (`fastv.run.describe`)


@dataclass
class BenchResult:
    config: dict[str, Any]
    model: str
    n_visual: int
    n_text: int
    machine: dict[str, Any]
    full: dict[str, Any]
    settings: list[SettingResult]
    overhead: float  # FastV at ratio 0 vs unpatched prefill: time ratio - 1 (nan without that setting)
    overhead_cpu: float
    skipped: dict[str, str] = field(default_factory=dict)  # setting label -> why its method refused it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def setting(self, k: int, ratio: float) -> SettingResult | None:
        return next((s for s in self.settings if s.k == k and abs(s.ratio - ratio) < 1e-9), None)

    def by_label(self, label: str) -> SettingResult | None:
        return next((s for s in self.settings if s.label == label), None)

    @property
    def by_method(self) -> bool:
        """Settings are methods x budgets (not FastV's K x R grid)."""
        return bool(self.config.get("methods"))


# --------------------------------------------------------------------------- outputs


def save_json(result: BenchResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2))


def load_json(path: Path) -> BenchResult:
    """Read a saved run back (to re-plot or re-tabulate without re-timing)."""
    data = json.loads(Path(path).read_text())
    data["settings"] = [SettingResult(**s) for s in data["settings"]]
    return BenchResult(**data)


def plot(result: BenchResult, path: Path) -> None:
    """Speed-up vs R for each K, measured (solid) against the FLOPs ideal (dashed): wall clock and CPU time.
    Settings by method: bars per method and budget instead."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if result.by_method:
        _plot_methods(result, path)
        return

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    ks = sorted({s.k for s in result.settings})
    for ax, attr, label in (
        (axes[0], "speedup_measured", "wall clock (time to first token)"),
        (axes[1], "speedup_measured_cpu", "CPU time of the process"),
    ):
        for i, k in enumerate(ks):
            rows = sorted((s for s in result.settings if s.k == k and s.ratio > 0), key=lambda s: s.ratio)
            rs = [0.0] + [s.ratio for s in rows]
            ax.plot(rs, [1.0] + [getattr(s, attr) for s in rows], "o-", color=f"C{i}", label=f"K={k} measured")
            ax.plot(rs, [1.0] + [s.speedup_predicted for s in rows], "--", color=f"C{i}", alpha=0.7,
                    label=f"K={k} FLOPs ideal")  # fmt: skip
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("pruning ratio R (share of visual tokens dropped)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("prefill speed-up vs unpatched")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"FastV prefill, {result.n_visual} visual + {result.n_text} text tokens", fontsize=11)
    load = result.machine.get("load_avg_start")
    caption = result.model + (f"; load average at start {load[0]:.1f}" if load else "")
    fig.text(0.01, 0.01, "\n".join(textwrap.wrap(caption, 150)), fontsize=7, alpha=0.8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_methods(result: BenchResult, path: Path) -> None:
    """Prefill time as a share of the full model's per method x budget: measured (wall, CPU) beside FLOPs."""
    import matplotlib.pyplot as plt

    rows = result.settings
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.4))
    xs = range(len(rows))
    bars = (
        ("measured, wall", [1 / r.speedup_measured for r in rows]),
        ("measured, CPU", [1 / r.speedup_measured_cpu for r in rows]),
        ("FLOPs", [1 / r.speedup_predicted for r in rows]),
    )
    for j, (name, values) in enumerate(bars):
        ax.bar([x + (j - 1) * 0.27 for x in xs], values, 0.27, label=name)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(list(xs), [r.label for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("prefill time / full model (lower is better)")
    ax.legend(fontsize=8)
    ax.set_title(f"{result.n_visual} visual + {result.n_text} text tokens; {result.model[:90]}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(result: BenchResult) -> str:
    """The README's results table for one run (peak MiB: resident memory above the start of the call)."""
    f = result.full
    by_method = result.by_method
    lines = [
        ("| method | budget | kept" if by_method else "| K | R | kept")
        + " | TTFT s | CPU s | speed-up (wall) | speed-up (CPU) | FLOPs ideal | wall / ideal "
        "| CPU / ideal | share of full (wall / CPU) | FLOPs share | decode tok/s | peak MiB | KV MiB | KV vs pred "
        "| KV saving (pred) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| full | - | {result.n_visual} | {f['prefill_s']:.2f} | {f['prefill_cpu_s']:.2f} | 1.00 | 1.00 | 1.00 | - | - "
        "| 1.00 / 1.00 | 1.00 "
        f"| {f['decode_tok_s']:.2f} | {f['peak_mem_mb']:.0f} | {f['kv_bytes'] / 2**20:.1f} | {f['kv_bytes'] / f['kv_bytes_predicted'] - 1:+.2%} | - |",
    ]
    rows = result.settings if by_method else sorted(result.settings, key=lambda r: (r.k, r.ratio))
    for r in rows:
        first = (
            f"| {r.method} | {r.label.removeprefix(r.method).strip()} |" if by_method else f"| {r.k} | {r.ratio:g} |"
        )
        lines.append(
            f"{first} {r.kept} | {r.prefill_s:.2f} | {r.prefill_cpu_s:.2f} | {r.speedup_measured:.2f} "
            f"| {r.speedup_measured_cpu:.2f} | {r.speedup_predicted:.2f} | {r.efficiency:.0%} | {r.efficiency_cpu:.0%} "
            f"| {r.time_share:.2f} / {r.time_share_cpu:.2f} | {1 / r.speedup_predicted:.2f} "
            f"| {r.decode_tok_s:.2f} | {r.peak_mem_mb:.0f} | {r.kv_bytes / 2**20:.1f} | {r.kv_error:+.2%} "
            f"| {r.kv_saving:.1%} ({r.kv_saving_predicted:.1%}) |"
        )
    lines.append(
        "\nShare of full: each pruned run's prefill time over the mean of the unpatched runs just before and "
        "after it (median over rounds); FLOPs share = 1 / FLOPs ideal speed-up."
    )
    if not math.isnan(result.overhead):
        lines.append(
            f"\nFastV at R=0 (K={result.config['overhead_k']}) vs unpatched: {result.overhead:+.1%} wall, "
            f"{result.overhead_cpu:+.1%} CPU time."
        )
    for label, why in result.skipped.items():
        lines.append(f"\n{label} skipped: {why}")
    return "\n".join(lines)
