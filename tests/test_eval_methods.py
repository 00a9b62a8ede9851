"""`fastv eval --method ... --keep ...`: every method on the same samples, the papers' table, loyalty.

Tiny random LLaVA (4x4 grid = 16 visual tokens per image, 4 layers), two shapes scenes x two kinds.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fastv.cli import _register, app
from fastv.eval import EvalConfig, evaluate, load_samples
from fastv.eval.report import summarize, table_cells, without_latency, write_summary
from fastv.eval.runner import Dist
from fastv.eval.settings import FULL, full_model, method_grid, method_setting
from fastv.loading import load_model

DATA = "shapes:test:2:color,count"  # 2 scenes x 2 questions = 4 samples
MAX_NEW = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_processor import save_tiny_llava

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model's matmuls only pay for thread hand-offs
    folder = save_tiny_llava(tmp_path_factory.mktemp("tiny") / "model")
    model, processor = load_model(str(folder))
    yield folder, model, processor
    torch.set_num_threads(threads)


def _eval_cli(*args: str):
    _register()
    return CliRunner().invoke(app, ["eval", *args])


# --------------------------------------------------------------------------- loyalty in the runner


def test_kl_and_top1_agreement(tiny, tmp_path):
    folder, model, processor = tiny
    settings = [
        full_model(),
        method_setting("fastv", ratio=0.0, k=1),  # keeps every token: the full model's distribution
        method_setting("fastv", keep=0, k=1),  # every visual token gone after layer 1
        method_setting("pool", keep=1),  # the whole image averaged into one token
    ]
    cfg = EvalConfig(str(folder), DATA, tmp_path / "run", max_new_tokens=MAX_NEW, progress=False)
    result = evaluate(cfg, settings, model, processor, load_samples(DATA), dist=Dist())
    recs = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    by = {name: [r for r in recs if r["setting"] == name] for name in (s.name for s in settings)}
    assert all(len(v) == 4 for v in by.values())
    for r in by[FULL]:
        assert r["kl_first_token"] == 0.0 and r["top1_agree"] is True
    for r in by["fastv k=1 r=0"]:
        assert r["kl_first_token"] == pytest.approx(0.0, abs=1e-6) and r["top1_agree"] is True
    for name in ("fastv k=1 keep=0", "pool keep=1"):
        assert all(r["kl_first_token"] > 0 for r in by[name]), name
    assert all(r["prefill_seconds"] > 0 and r["seconds"] > 0 for r in recs)
    rows = {r["setting"]: r for r in result.rows}
    assert rows["fastv k=1 r=0"]["agree_first_token"] == 1.0 and rows["fastv k=1 r=0"]["kl_first_token"] < 1e-6
    assert rows["pool keep=1"]["kl_first_token"] > 0


# --------------------------------------------------------------------------- report on hand-made records


def _rec(setting, sid, kind, pred, correct, kl, top1, flops, prefill, method="m", keep=4):
    params = {"method": "full"} if setting == FULL else {"method": method, "keep": keep, "mode": "drop"}
    return {
        "setting": setting,
        "params": params,
        "sample_id": sid,
        "kind": kind,
        "prediction": pred,
        "answers": ["x"],
        "scoring": "exact",
        "scores": {"exact": float(correct), "vqa": float(correct)},
        "first_token": {"ids": [7], "logprobs": [-0.1]},
        "n_visual": 16,
        "n_kept": 16 if setting == FULL else keep,
        "flops_prefill": flops,
        "flops_prefill_llm": flops,
        "flops_decode": 1,
        "seconds": 1.0,
        "prefill_seconds": prefill,
        "kl_first_token": kl,
        "top1_agree": top1,
    }


def test_report_columns_equal_hand_computation(tmp_path):
    records = [
        # full model: kind a 2/2 correct, kind b 1/2 correct
        _rec(FULL, "1", "a", "Red", 1, 0.0, True, 100, 0.2),
        _rec(FULL, "2", "a", "blue", 1, 0.0, True, 100, 0.4),
        _rec(FULL, "3", "b", "two", 1, 0.0, True, 100, 0.3),
        _rec(FULL, "4", "b", "3", 0, 0.0, True, 100, 0.1),
        # pruned: a 1/2, b 1/2; answers equal the full model's (normalised) on samples 1 and 4
        _rec("p", "1", "a", " red.", 1, 0.5, True, 40, 0.1),
        _rec("p", "2", "a", "green", 0, 1.5, False, 40, 0.3),
        _rec("p", "3", "b", "four", 0, 2.0, False, 40, 0.2),
        _rec("p", "4", "b", "3", 1, 0.0, True, 40, 0.05),
    ]
    rows = summarize(records, [FULL, "p"])
    full, p = rows
    assert full["per_kind"] == {"a": 1.0, "b": 0.5} and full["average"] == 0.75 and full["retention"] == 1.0
    assert p["per_kind"] == {"a": 0.5, "b": 0.5} and p["average"] == 0.5
    assert p["retention"] == pytest.approx((0.5 / 1.0 + 0.5 / 0.5) / 2)  # mean of per-task ratios = 75%
    assert p["agree_answer"] == 0.5  # " red." == "Red" after normalisation; "3" == "3"
    assert p["agree_first_token"] == 0.5
    assert p["kl_first_token"] == pytest.approx((0.5 + 1.5 + 2.0 + 0.0) / 4)
    assert full["kl_first_token"] == 0.0 and full["agree_answer"] == 1.0 and full["agree_first_token"] == 1.0
    assert p["prefill_s"] == pytest.approx(0.15) and full["prefill_s"] == pytest.approx(0.25)  # medians
    assert p["prefill_vs_full"] == pytest.approx(0.6) and p["flops_vs_full"] == pytest.approx(0.4)
    assert p["method"] == "m" and p["budget"] == "keep=4" and full["budget"] == "all"
    assert p["visual_kept"] == 0.25

    header, cells = table_cells(rows)
    assert header[:5] == ["setting", "n", "a", "b", "avg"]
    assert {"retention", "same answer", "top-1 agree", "KL", "prefill s", "FLOPs vs full"} <= set(header)
    line = dict(zip(header, cells[1], strict=True))
    assert line["retention"] == "75.0%" and line["same answer"] == "50.0%" and line["top-1 agree"] == "50.0%"
    assert line["KL"] == "1.0000" and line["a"] == "50.0%"
    write_summary(rows, tmp_path)
    flat = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert flat[1]["acc_a"] == "0.5" and float(flat[1]["retention"]) == pytest.approx(0.75)
    assert "| retention |" in (tmp_path / "summary.md").read_text()


def test_grid_names_and_k_only_where_a_method_has_one():
    grid = method_grid(["fastv", "pool", "random"], keeps=[4, 8], ks=[1])
    assert [s.name for s in grid] == [
        FULL,
        "fastv k=1 keep=4",
        "pool keep=4",
        "random k=1 keep=4",
        "fastv k=1 keep=8",
        "pool keep=8",
        "random k=1 keep=8",
    ]
    assert grid[2].params == {"method": "pool", "keep": 4, "mode": "drop"}
    default = method_grid(["fastv", "random"], ratios=[0.5])
    assert [s.name for s in default] == [
        FULL,
        "fastv k=1 r=0.5",
        "fastv k=2 r=0.5",
        "fastv k=3 r=0.5",
        "random k=0 r=0.5",
    ]


# --------------------------------------------------------------------------- the CLI end to end


def _summary(out: Path) -> list[dict]:
    return without_latency(json.loads((out / "summary.json").read_text()))


def test_cli_methods_keep_grid_and_resume(tiny, tmp_path):
    folder = tiny[0]
    out = tmp_path / "run"
    args = ["--model", str(folder), "--data", DATA, "--method", "pool,divprune,random", "--keep", "4,8"]
    args += ["--out", str(out), "--max-new-tokens", str(MAX_NEW), "--cpu", "--no-progress"]
    res = _eval_cli(*args)
    assert res.exit_code == 0, res.output
    names = [r["setting"] for r in json.loads((out / "summary.json").read_text())]
    assert names == [FULL, "pool keep=4", "divprune keep=4", "random k=0 keep=4"] + [
        "pool keep=8",
        "divprune keep=8",
        "random k=0 keep=8",
    ]
    for col in ("avg", "same answer", "top-1 agree", "KL", "prefill FLOPs", "prefill s", "color", "count"):
        assert col in res.output, col
    assert (out / "pareto.png").stat().st_size > 0
    rows = {r["setting"]: r for r in json.loads((out / "summary.json").read_text())}
    assert rows["pool keep=4"]["visual_kept"] == 0.25 and rows["divprune keep=8"]["visual_kept"] == 0.5
    assert rows["pool keep=4"]["flops_vs_full"] < rows["pool keep=8"]["flops_vs_full"] < 1
    whole = _summary(out)

    # Interrupted after sample 1's full model and one setting: the rest reruns, the full model's
    # first-token distribution is recomputed for sample 1, and the summary is the same.
    shard = out / "shards" / "rank0.jsonl"
    shard.write_text("".join(shard.read_text().splitlines(keepends=True)[:2]))
    (out / "summary.json").unlink()
    res = _eval_cli(*args)
    assert res.exit_code == 0, res.output
    assert "ran 26 new" in res.output  # 4 samples x 7 settings - 2 kept
    assert _summary(out) == whole


def test_unknown_method_or_impossible_budget_fails_up_front(tiny, tmp_path):
    folder = tiny[0]
    base = ["--model", str(folder), "--data", DATA, "--cpu", "--no-progress", "--max-new-tokens", "1"]
    res = _eval_cli(*base, "--method", "pool,fastest", "--keep", "4", "--out", str(tmp_path / "a"))
    assert res.exit_code == 2 and "unknown method 'fastest'" in res.output
    assert not (tmp_path / "a").exists()
    res = _eval_cli(*base, "--method", "pool", "--keep", "5", "--out", str(tmp_path / "b"))
    assert res.exit_code == 2 and "pool keep=5" in res.output and "sub-grid" in " ".join(res.output.split())
    res = _eval_cli(*base, "--method", "divprune", "--keep", "20", "--out", str(tmp_path / "c"))
    out = " ".join(res.output.split())
    assert res.exit_code == 2 and "divprune keep=20" in out and "cannot keep 20" in out, res.output
    assert not (tmp_path / "c" / "shards").exists()  # refused before any pair ran


def test_summary_covers_settings_added_by_later_runs(tiny, tmp_path):
    folder, out = tiny[0], tmp_path / "grow"
    common = ["--model", str(folder), "--data", DATA, "--keep", "4", "--out", str(out)]
    common += ["--max-new-tokens", str(MAX_NEW), "--cpu", "--no-progress"]
    assert _eval_cli(*common, "--method", "pool").exit_code == 0
    res = _eval_cli(*common, "--method", "divprune")
    assert res.exit_code == 0, res.output
    names = [r["setting"] for r in json.loads((out / "summary.json").read_text())]
    assert names == [FULL, "divprune keep=4", "pool keep=4"]
