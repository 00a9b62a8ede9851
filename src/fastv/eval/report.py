"""From merged predictions to the numbers a user reads: a per-setting summary, tables, a Pareto plot.

Pure functions of the records on disk, so a resumed run and an uninterrupted one summarise alike
(latency aside, which is measured, not computed). The table is the one the token-reduction papers
print: accuracy per task (sample kind), their average, retention (% of the full model's score),
then cost (prefill FLOPs, time to first token) and loyalty (same answer as the full model, same
first token, KL of the first token's distribution).
"""

from __future__ import annotations

import csv
import json
import statistics
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastv.eval.caption_tokens import TOKENIZER_NOTES
from fastv.eval.metrics import cider, normalize_text, sample_scores
from fastv.eval.settings import FULL, budget_text

LATENCY_FIELDS = ("latency_s", "latency_vs_full", "prefill_s", "prefill_vs_full")


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def retention(per_kind: dict[str, float | None], full_per_kind: dict[str, float | None]) -> float | None:
    """Mean over tasks of score / full model's score (the papers' "relative" average), tasks where
    the full model scored 0 left out (no share of nothing); None when no task is left."""
    ratios = [v / full_per_kind[k] for k, v in per_kind.items() if v is not None and full_per_kind.get(k)]
    return _mean(ratios)


def same_answer(prediction: str, reference: str) -> bool:
    """Answer agreement, normalised like exact match (case, spaces, surrounding punctuation)."""
    return normalize_text(prediction) == normalize_text(reference)


def _top1(record: dict[str, Any], full: dict[str, Any]) -> bool:
    if "top1_agree" in record:
        return bool(record["top1_agree"])
    return record["first_token"]["ids"][0] == full["first_token"]["ids"][0]  # records from older runs


def rescore(records: Sequence[dict[str, Any]], vqa_compat: str = "default") -> list[dict[str, Any]]:
    """Records with their per-sample scores recomputed from prediction and answers: the VQA compat is a
    reporting choice (no rerun needed), and folders from older fastv versions get today's metrics."""
    return [
        {**r, "scores": sample_scores(r["prediction"], r["answers"], r.get("choices"), vqa_compat)} for r in records
    ]


def summarize(records: Sequence[dict[str, Any]], settings: Sequence[str]) -> list[dict[str, Any]]:
    """One row per setting: accuracy per task and on average, retention, exact/VQA/choice/CIDEr, FLOPs,
    prefill time and latency, tokens kept, and loyalty to the full model (same answer, same first
    token, mean KL of the first token's distribution)."""
    by_setting: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_setting[r["setting"]].append(r)
    full = {r["sample_id"]: r for r in by_setting.get(FULL, [])}
    rows = []
    for name in settings:
        rs = by_setting.get(name, [])
        if not rs:
            continue
        scored = [r for r in rs if r["scoring"] != "cider"]
        captions = [r for r in rs if r["scoring"] == "cider"]
        params = rs[0]["params"]
        row: dict[str, Any] = {"setting": name, **params, "budget": budget_text(params) or "all", "n": len(rs)}
        row["accuracy"] = _mean([r["scores"][r["scoring"]] for r in scored])
        row["exact"] = _mean([r["scores"]["exact"] for r in rs])
        row["vqa"] = _mean([r["scores"]["vqa"] for r in rs])
        choice = [r["scores"]["choice"] for r in rs if "choice" in r["scores"]]
        row["choice"] = _mean(choice)
        row["cider"] = row["cider_tokenizer"] = None
        if captions:
            result = cider(
                {r["sample_id"]: r["prediction"] for r in captions}, {r["sample_id"]: r["answers"] for r in captions}
            )
            row["cider"], row["cider_tokenizer"] = result.score, result.tokenizer
        kinds: dict[str, list[float]] = defaultdict(list)
        for r in scored:
            kinds[r["kind"] or "all"].append(r["scores"][r["scoring"]])
        row["per_kind"] = {k: _mean(v) for k, v in sorted(kinds.items())}
        row["average"] = _mean(list(row["per_kind"].values()))  # macro: each task counts once
        row["visual_kept"] = sum(r["n_kept"] for r in rs) / max(sum(r["n_visual"] for r in rs), 1)
        row["flops_prefill"] = _mean([r["flops_prefill"] for r in rs])
        row["flops_prefill_llm"] = _mean([r["flops_prefill_llm"] for r in rs])
        row["flops_decode"] = _mean([r["flops_decode"] for r in rs])
        row["latency_s"] = _mean([r["seconds"] for r in rs])
        row["prefill_s"] = _median([r["prefill_seconds"] for r in rs if "prefill_seconds" in r])
        paired = [(r, full[r["sample_id"]]) for r in rs if r["sample_id"] in full]
        row["agree_answer"] = _mean([float(same_answer(r["prediction"], f["prediction"])) for r, f in paired])
        row["agree_first_token"] = _mean([float(_top1(r, f)) for r, f in paired])
        row["kl_first_token"] = _mean([r["kl_first_token"] for r in rs if "kl_first_token" in r])
        rows.append(row)
    ref = next((r for r in rows if r["setting"] == FULL), None)
    for row in rows:  # ratios to the full model, once its row exists
        row["retention"] = None
        row["flops_vs_full"] = row["latency_vs_full"] = row["prefill_vs_full"] = None
        if ref is None:
            continue
        if row["per_kind"]:
            row["retention"] = retention(row["per_kind"], ref["per_kind"])
        elif row["cider"] is not None and ref["cider"]:
            row["retention"] = row["cider"] / ref["cider"]
        for key, base in (
            ("flops_vs_full", "flops_prefill"),
            ("latency_vs_full", "latency_s"),
            ("prefill_vs_full", "prefill_s"),
        ):
            if row[base] is not None and ref[base]:
                row[key] = row[base] / ref[base]
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
    from fastv.core.cost import format_flops

    return "-" if value is None else format_flops(value)


TABLE_COLUMNS = (
    ("setting", "setting"),
    ("n", "n"),
    ("average", "avg"),
    ("retention", "retention"),
    ("cider", "CIDEr"),
    ("visual_kept", "visual kept"),
    ("flops_prefill", "prefill FLOPs"),
    ("flops_vs_full", "FLOPs vs full"),
    ("prefill_s", "prefill s"),
    ("agree_answer", "same answer"),
    ("agree_first_token", "top-1 agree"),
    ("kl_first_token", "KL"),
)
_PCT = {"average", "retention", "visual_kept", "flops_vs_full", "agree_answer", "agree_first_token", "per_kind"}


def kinds_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Task columns: the sample kinds, unless the data has none (then `avg` says it all)."""
    kinds = list(dict.fromkeys(k for r in rows for k in r.get("per_kind", {})))
    return [] if kinds == ["all"] else kinds


def table_cells(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and cells: setting, n, one column per task, then the TABLE_COLUMNS that any row has."""
    kinds = kinds_of(rows)
    cols = [(k, h) for k, h in TABLE_COLUMNS if any(r.get(k) is not None for r in rows)]
    cols[2:2] = [(("per_kind", kind), kind) for kind in kinds]  # after setting, n
    cells = []
    for r in rows:
        line = []
        for k, _ in cols:
            if isinstance(k, tuple):
                line.append(_fmt(r.get("per_kind", {}).get(k[1]), True))
            elif k == "flops_prefill":
                line.append(flops_text(r.get(k)))
            elif k == "kl_first_token" and r.get(k) is not None:
                line.append(f"{r[k]:.4f}")
            else:
                line.append(_fmt(r.get(k), k in _PCT))
        cells.append(line)
    return [h for _, h in cols], cells


def cider_note(rows: Sequence[dict[str, Any]]) -> str | None:
    """Which tokenizer produced the CIDEr column: PTB scores match pycocoevalcap, fallback ones do not."""
    names = sorted({r["cider_tokenizer"] for r in rows if r.get("cider_tokenizer")})
    return "CIDEr: " + "; ".join(TOKENIZER_NOTES[n] for n in names) if names else None


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    header, cells = table_cells(rows)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c) + " |" for c in cells]
    note = cider_note(rows)
    return "\n".join(lines) + "\n" + (f"\n{note}\n" if note else "")


def write_summary(rows: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """summary.json (everything), summary.csv (flat columns) and summary.md (the table)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "summary.json", out / "summary.csv", out / "summary.md"]
    paths[0].write_text(json.dumps(list(rows), indent=2) + "\n")
    flat = [
        {
            **{k: v for k, v in r.items() if not isinstance(v, dict)},
            **{f"acc_{kind}": v for kind, v in r.get("per_kind", {}).items()},
        }
        for r in rows
    ]
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


def curve_of(row: dict[str, Any]) -> str:
    """The curve a row belongs to: its method, with K, scorer and mode when the method has them."""
    label = row.get("method", row["setting"])
    if "k" in row:
        label += f" K={row['k']}"
    if row.get("scorer", "last_token") != "last_token":
        label += f" {row['scorer']}"
    if row.get("mode", "drop") != "drop":
        label += f" {row['mode']}"
    return label


def pareto_plot(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Average accuracy (or CIDEr) against prefill FLOPs: one curve per method (per K for FastV-like
    methods) through its budgets, the full model as a star, and the frontier of all points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "average" if any(r.get("average") is not None for r in rows) else "cider"
    rows = [r for r in rows if r.get(metric) is not None and r.get("flops_prefill")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    top = max(r["flops_prefill"] for r in rows)
    scale, unit = 1.0, ""
    for s, u in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if top >= s:
            scale, unit = s, u
            break
    curves: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["setting"] == FULL:
            x, y = r["flops_prefill"] / scale, r[metric]
            ax.scatter([x], [y], marker="*", s=260, color="crimson", zorder=5, label="full model")
            continue
        curves[curve_of(r)].append(r)
    cmap = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    markers = "osD^vP<>Xh"
    labelled: set[tuple[float, float, str]] = set()
    for i, (label, members) in enumerate(curves.items()):
        members = sorted(members, key=lambda r: r["flops_prefill"])
        xs = [r["flops_prefill"] / scale for r in members]
        ys = [r[metric] for r in members]
        ax.plot(xs, ys, marker=markers[i % len(markers)], color=cmap(i % cmap.N), lw=1.4, ms=5, zorder=3, label=label)
        for r, x, y in zip(members, xs, ys, strict=True):
            if (x, y, r["budget"]) not in labelled:  # one label where curves share a point
                labelled.add((x, y, r["budget"]))
                ax.annotate(r["budget"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6, alpha=0.8)
    pts = [(r["flops_prefill"] / scale, r[metric]) for r in rows]
    front = [pts[i] for i in pareto_front(pts)]
    ax.step(
        [p[0] for p in front],
        [p[1] for p in front],
        where="post",
        color="black",
        lw=0.8,
        alpha=0.35,
        ls="--",
        label="Pareto front",
    )
    ax.set_xlabel(f"prefill {unit}FLOPs per sample (vision + LLM)")
    if metric == "average":
        from matplotlib.ticker import PercentFormatter

        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("average accuracy over tasks" if metric == "average" else "CIDEr")
    ax.set_title(title or f"{metric} vs FLOPs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
