"""Pivot `fastv eval` summaries into the README's tables, so the published figures are the run's, verbatim.

    python benchmarks/readme_tables.py fastv-vs-random benchmarks/results/default_model/fastv/summary.json
    python benchmarks/readme_tables.py methods benchmarks/results/default_model/field/summary.json

``fastv-vs-random``: one row per (K, R): visual tokens kept, LLM prefill FLOPs vs full, FastV's and
random pruning's average accuracy and share of answers equal to the full model's.
``methods``: one row per method (and K, for FastV at several K), one column per budget; each cell is
average accuracy / same answer as the full model / prefill FLOPs (vision included) vs full.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path


def _pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _setting(row: dict) -> dict:
    """(method, k, r or keep, random?) parsed from a setting's name, e.g. 'fastv k=2 r=0.5 random'."""
    name = row["setting"]
    k = re.search(r"\bk=(\d+)", name)
    return {
        "method": row["method"],
        "k": int(k.group(1)) if k else None,
        "budget": row["budget"],
        "random": name.endswith(" random"),
        "positions": "contiguous" if "contiguous" in name else ("original" if "original" in name else None),
    }


def fastv_vs_random(rows: list[dict], visual_tokens: int) -> str:
    full = next(r for r in rows if r["method"] == "full")
    full_llm = full["flops_prefill_llm"]
    cells: dict[tuple[int, str], dict[str, dict]] = {}
    for r in rows:
        if r["method"] != "fastv":
            continue
        s = _setting(r)
        cells.setdefault((s["k"], s["budget"]), {})["random" if s["random"] else "fastv"] = r
    out = [
        "| K | R | visual kept | LLM prefill FLOPs vs full | FastV accuracy | random accuracy "
        "| FastV same answer as full | random same answer |",
        "|---|---|---|---|---|---|---|---|",
        f"| full | - | {visual_tokens} | 100% | {_pct(full['average'])} | - | - | - |",
    ]
    for (k, budget), pair in sorted(cells.items(), key=lambda kv: (float(kv[0][1].split("=")[1]), kv[0][0])):
        f, rnd = pair.get("fastv"), pair.get("random")
        ref = f or rnd
        kept = round(ref["visual_kept"] * visual_tokens)
        out.append(
            f"| {k} | {_pct(float(budget.split('=')[1]), 0)} | {kept} | {_pct(ref['flops_prefill_llm'] / full_llm, 0)} "
            f"| {_pct(f and f['average'])} | {_pct(rnd and rnd['average'])} "
            f"| {_pct(f and f['agree_answer'])} | {_pct(rnd and rnd['agree_answer'])} |"
        )
    return "\n".join(out)


def _most_tokens_first(budget: str) -> tuple[int, float]:
    """Columns from the largest budget to the smallest, whatever order the runs were appended in:
    `r=` budgets (a share pruned) before `keep=` ones (tokens kept), each from most tokens to fewest."""
    name, _, value = budget.partition("=")
    try:
        number = float(value)
    except ValueError:
        return (2, 0.0)
    return (0, number) if name == "r" else (1, -number)


def methods(rows: list[dict]) -> str:
    full = next(r for r in rows if r["method"] == "full")
    budgets: list[str] = []
    table: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["method"] == "full":
            continue
        s = _setting(r)
        label = s["method"]
        if s["method"] == "fastv" and s["k"] is not None:
            label += f" (K={s['k']}{', random scorer' if s['random'] else ''})"
        if s["positions"]:
            label += f" ({s['positions']})"
        if s["budget"] not in budgets:
            budgets.append(s["budget"])
        table.setdefault(label, {})[s["budget"]] = r
    budgets.sort(key=_most_tokens_first)
    out = ["| method | " + " | ".join(budgets) + " |", "|---" * (len(budgets) + 1) + "|"]
    out.append(f"| full model | {_pct(full['average'])} |" + " |" * (len(budgets) - 1))
    for label, by_budget in table.items():
        cells = []
        for b in budgets:
            r = by_budget.get(b)
            cells.append(
                "not run"
                if r is None
                else f"{_pct(r['average'])} / {_pct(r['agree_answer'], 0)} / {_pct(r['flops_vs_full'], 0)}"
            )
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("table", choices=("fastv-vs-random", "methods"))
    p.add_argument("summary", type=Path, help="a `fastv eval` summary.json")
    p.add_argument("--visual-tokens", type=int, default=144, help="visual tokens of the full model's prompt")
    args = p.parse_args(argv)
    rows = json.loads(args.summary.read_text())
    print(fastv_vs_random(rows, args.visual_tokens) if args.table == "fastv-vs-random" else methods(rows))


if __name__ == "__main__":
    main()
