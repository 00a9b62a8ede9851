"""The verdicts of training/measure_default.py: the paper's attention shape and the shipping bar."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))

import measure_default  # noqa: E402


def _aggregate(visual: list[float]) -> dict:
    return {
        "n_samples": 3,
        "layers": [{"layer": i, "share_mean": {"system": 1 - v, "visual": v}} for i, v in enumerate(visual)],
    }


def test_paper_shape_is_late_visual_share_at_most_a_third_of_layers_0_1():
    fades = measure_default.attention_shape(_aggregate([0.5, 0.7, 0.15, 0.1, 0.2]))
    assert abs(fades["visual_share_layers_0_1"] - 0.6) < 1e-9
    assert abs(fades["visual_share_layers_2_on_mean"] - 0.15) < 1e-9 and fades["paper_shape"]
    grows = measure_default.attention_shape(_aggregate([0.66, 0.73, 0.98, 0.96]))  # the first default model
    assert not grows["paper_shape"] and grows["late_over_early"] > 1


def _row(scorer: str | None, ratio: float | None, average: float) -> dict:
    if scorer is None:
        return {"method": "full", "average": average}
    return {"method": "fastv", "k": 2, "ratio": ratio, "scorer": scorer, "average": average}


def test_bar_needs_accuracy_fastv_close_to_full_and_above_random_everywhere():
    rows = [_row(None, None, 0.97)]
    rows += [_row("last_token", r, a) for r, a in ((0.5, 0.965), (0.75, 0.9), (0.9, 0.8))]
    rows += [_row("random", r, a) for r, a in ((0.5, 0.9), (0.75, 0.8), (0.9, 0.6))]
    assert measure_default.fastv_bar(json.loads(json.dumps(rows)))["meets_bar"]
    rows[1] = _row("last_token", 0.5, 0.95)  # 2 points below the full model
    verdict = measure_default.fastv_bar(rows)
    assert not verdict["fastv_k2_r50_within_1_point"] and not verdict["meets_bar"]
    rows[1] = _row("last_token", 0.5, 0.965)
    rows[-1] = _row("random", 0.9, 0.8)  # a tie with random is not "above"
    assert measure_default.fastv_bar(rows)["fastv_above_random"]["0.9"] is False


def test_per_kind_names_the_kinds_fastv_loses_to_random_even_when_the_average_hides_them():
    """The 1738-step candidate's figures at R=50% (runs.json): `total` alone collapses under FastV."""
    full = {"total": 1.0, "color": 1.0, "anyleft": 0.7}
    rows = [{**_row(None, None, 0.936), "per_kind": full}]
    for r in (0.5, 0.75, 0.9):
        rows.append({**_row("last_token", r, 0.9), "per_kind": {"total": 0.25, "color": 1.0, "anyleft": 0.6}})
        rows.append({**_row("random", r, 0.9), "per_kind": {"total": 0.95, "color": 0.9, "anyleft": 0.65}})
    verdict = measure_default.fastv_bar(rows)
    table = verdict["per_kind"]
    assert table["accuracy"]["full"] == full and table["accuracy"]["last_token 0.5"]["total"] == 0.25
    # total trails by 70 points; anyleft by 5 (within the 10-point margin); color is ahead.
    assert table["fastv_far_below_random"] == {"0.5": ["total"], "0.75": ["total"], "0.9": ["total"]}
