"""benchmarks/readme_tables.py pivots `fastv eval` summaries into the README's tables without changing a figure."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import readme_tables  # noqa: E402


def _row(setting: str, method: str, budget: str, average: float, agree: float, kept: float, flops: float) -> dict:
    return {
        "setting": setting, "method": method, "budget": budget, "average": average, "agree_answer": agree,
        "visual_kept": kept, "flops_vs_full": flops, "flops_prefill_llm": 1000.0 * flops,
    }  # fmt: skip


ROWS = [
    _row("full", "full", "all", 0.99, 1.0, 1.0, 1.0),
    _row("fastv k=2 r=0.5", "fastv", "r=0.5", 0.98, 0.97, 0.5, 0.66),
    _row("fastv k=2 r=0.5 random", "fastv", "r=0.5", 0.9, 0.91, 0.5, 0.66),
    _row("fastv k=1 r=0.25", "fastv", "r=0.25", 0.8, 0.81, 0.75, 0.78),
    _row("divprune keep=16 contiguous", "divprune", "keep=16", 0.3, 0.31, 0.11, 0.23),
    _row("random k=0 keep=48", "random", "keep=48", 0.7, 0.69, 0.33, 0.41),
]


def test_fastv_vs_random_pairs_each_setting_with_its_random_twin():
    lines = readme_tables.fastv_vs_random(ROWS, visual_tokens=144).splitlines()
    assert lines[2] == "| full | - | 144 | 100% | 99.0% | - | - | - |"
    # sorted by R, then K; the random twin's figures sit in the same row
    assert lines[3] == "| 1 | 25% | 108 | 78% | 80.0% | - | 81.0% | - |"
    assert lines[4] == "| 2 | 50% | 72 | 66% | 98.0% | 90.0% | 97.0% | 91.0% |"
    assert len(lines) == 5


def test_methods_grid_has_a_column_per_budget_and_marks_holes():
    lines = readme_tables.methods(ROWS).splitlines()
    # columns from most tokens to fewest, not in the order the runs were appended
    assert lines[0] == "| method | r=0.25 | r=0.5 | keep=48 | keep=16 |"
    assert "| fastv (K=2) | not run | 98.0% / 97% / 66% | not run | not run |" in lines
    assert "| fastv (K=2, random scorer) | not run | 90.0% / 91% / 66% | not run | not run |" in lines
    assert "| divprune (contiguous) | not run | not run | not run | 30.0% / 31% / 23% |" in lines
    assert "| random | not run | not run | 70.0% / 69% / 41% | not run |" in lines
