"""From merged predictions to the numbers a user reads: a per-setting summary, tables, a Pareto plot.

Pure functions of the records on disk, so a resumed run and an uninterrupted one summarise alike
(latency aside, which is measured, not computed).
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastv.eval.metrics import cider
from fastv.eval.settings import FULL

LATENCY_FIELDS = ("latency_s", "latency_vs_full")


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(records: Sequence[dict[str, Any]], settings: Sequence[str]) -> list[dict[str, Any]]:
    """One row per setting: accuracy (each sample's own metric), exact/VQA/choice/CIDEr, FLOPs, latency,
    tokens kept, and agreement with the full model (same answer; same first token)."""
    by_setting: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_setting[r["setting"]].append(r)
    full = {r["sample_id"]: r for r in by_setting.get(FULL, [])}
    full_flops = _mean([r["flops_prefill"] for r in full.values()])
    full_latency = _mean([r["seconds"] for r in full.values()])
    rows = []
    for name in settings:
        rs = by_setting.get(name, [])
        if not rs:
            continue
        scored = [r for r in rs if r["scoring"] != "cider"]
        captions = [r for r in rs if r["scoring"] == "cider"]
        row: dict[str, Any] = {"setting": name, **rs[0]["params"], "n": len(rs)}
        row["accuracy"] = _mean([r["scores"][r["scoring"]] for r in scored])
        row["exact"] = _mean([r["scores"]["exact"] for r in rs])
        row["vqa"] = _mean([r["scores"]["vqa"] for r in rs])
        choice = [r["scores"]["choice"] for r in rs if "choice" in r["scores"]]
        row["choice"] = _mean(choice)
        row["cider"] = (
            cider(
                {r["sample_id"]: r["prediction"] for r in captions}, {r["sample_id"]: r["answers"] for r in captions}
            )[0]
            if captions
            else None
        )
        kinds: dict[str, list[float]] = defaultdict(list)
        for r in scored:
            kinds[r["kind"] or "all"].append(r["scores"][r["scoring"]])
        row["per_kind"] = {k: _mean(v) for k, v in sorted(kinds.items())}
        row["visual_kept"] = sum(r["n_kept"] for r in rs) / max(sum(r["n_visual"] for r in rs), 1)
        row["flops_prefill"] = _mean([r["flops_prefill"] for r in rs])
        row["flops_prefill_llm"] = _mean([r["flops_prefill_llm"] for r in rs])
        row["flops_decode"] = _mean([r["flops_decode"] for r in rs])
        row["flops_vs_full"] = row["flops_prefill"] / full_flops if full_flops else None
        row["latency_s"] = _mean([r["seconds"] for r in rs])
        row["latency_vs_full"] = row["latency_s"] / full_latency if full_latency else None
        paired = [(r, full[r["sample_id"]]) for r in rs if r["sample_id"] in full]
        row["agree_answer"] = _mean([float(r["prediction"] == f["prediction"]) for r, f in paired])
        row["agree_first_token"] = _mean(
            [float(r["first_token"]["ids"][0] == f["first_token"]["ids"][0]) for r, f in paired]
        )
        rows.append(row)
    return rows


def without_latency(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summary minus wall-clock fields: what must be identical across resumed/sharded runs."""
    return [{k: v for k, v in row.items() if k not in LATENCY_FIELDS} for row in rows]


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1%}" if pct else f"{value:.4g}"
    return str(value)


def flops_text(value: float | None) -> str:
    from fastv.flops import format_flops

    return "-" if value is None else format_flops(value)


TABLE_COLUMNS = (
    ("setting", "setting"),
    ("n", "n"),
    ("accuracy", "accuracy"),
    ("exact", "exact"),
    ("vqa", "VQA"),
    ("choice", "choice"),
    ("cider", "CIDEr"),
    ("visual_kept", "visual kept"),
    ("flops_prefill", "prefill FLOPs"),
    ("flops_vs_full", "FLOPs vs full"),
    ("latency_s", "latency s"),
    ("agree_answer", "same answer as full"),
)
_PCT = {"accuracy", "exact", "vqa", "choice", "visual_kept", "flops_vs_full", "agree_answer"}


def table_cells(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells, dropping metric columns no sample used (e.g. choice on open questions)."""
    cols = [(k, h) for k, h in TABLE_COLUMNS if any(r.get(k) is not None for r in rows)]
    cells = []
    for r in rows:
        line = []
        for k, _ in cols:
            v = r.get(k)
            line.append(flops_text(v) if k == "flops_prefill" else _fmt(v, k in _PCT))
        cells.append(line)
    return [h for _, h in cols], cells


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    header, cells = table_cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join(lines) + "\n"


def write_summary(rows: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """summary.json (everything), summary.csv (flat columns) and summary.md (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "summary.json", out / "summary.csv", out / "summary.md"]
    paths[0].write_text(json.dumps(list(rows), indent=2) + "\n")
    flat = [{k: v for k, v in r.items() if not isinstance(v, dict)} for r in rows]
    fields = list(dict.fromkeys(k for r in flat for k in r))
    with paths[1].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(flat)
    paths[2].write_text(markdown_table(rows))
    return paths


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both axes (fewer FLOPs and higher accuracy)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_plot(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Accuracy (or CIDEr) against prefill FLOPs: the full model, each (K, R) point, the frontier."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "accuracy" if any(r.get("accuracy") is not None for r in rows) else "cider"
    rows = [r for r in rows if r.get(metric) is not None and r.get("flops_prefill")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ks = sorted({r["k"] for r in rows if "k" in r})
    cmap = plt.get_cmap("viridis", max(len(ks), 1))
    markers = {"last_token": "o", "random": "x"}
    top = max(r["flops_prefill"] for r in rows)
    scale, unit = 1.0, ""
    for s, u in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if top >= s:
            scale, unit = s, u
            break
    for r in rows:
        x, y = r["flops_prefill"] / scale, r[metric]
        if r["setting"] == FULL:
            ax.scatter([x], [y], marker="*", s=220, color="crimson", zorder=4, label="full model")
            continue
        color = cmap(ks.index(r["k"])) if "k" in r else "gray"
        ax.scatter([x], [y], marker=markers.get(r.get("scorer", ""), "s"), color=color, zorder=3)
        if "ratio" in r:
            ax.annotate(f"R={r['ratio']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    pts = [(r["flops_prefill"] / scale, r[metric]) for r in rows]
    front = [pts[i] for i in pareto_front(pts)]
    ax.step(
        [p[0] for p in front], [p[1] for p in front], where="post", color="black", lw=1, alpha=0.6, label="Pareto front"
    )
    for i, k in enumerate(ks):
        ax.scatter([], [], color=cmap(i), label=f"K={k}")
    for scorer, m in markers.items():
        if any(r.get("scorer") == scorer for r in rows):
            ax.scatter([], [], color="gray", marker=m, label=scorer)
    ax.set_xlabel(f"prefill {unit}FLOPs per sample (vision + LLM)")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs FLOPs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
