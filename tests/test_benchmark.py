"""The benchmark machinery on tiny models: structure and bookkeeping, never timings."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForImageTextToText
from typer.testing import CliRunner

from fastv import flops as F
from fastv.bench import measure as B
from fastv.bench import models as M
from fastv.bench import report as R
from fastv.bench import schedule as S
from fastv.flops.shapes import build_config

TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=1200,
)  # fmt: skip


def _tiny(kind: str = "llava") -> torch.nn.Module:
    torch.manual_seed(0)
    text, extra = dict(TEXT), {"image_token_id": 1100, "video_token_id": 1101}
    if kind.startswith("qwen"):
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": M._mrope(16)}
        extra["vision_start_token_id"] = 1102
    out = {"qwen2_vl": {"hidden_size": 64}, "qwen2_5_vl": {"out_hidden_size": 64}}.get(kind, {})
    vision = {**M._tiny_vision(kind, None), **out}
    return AutoModelForImageTextToText.from_config(build_config(kind, text, vision, extra)).eval()


def test_benchmark_structure_and_kv_bookkeeping(tmp_path):
    cfg = M.BenchConfig(model="tiny", ks=(1, 2), ratios=(0.5,), repeats=1, warmup=0, new_tokens=2, dtype="float32")
    result = B.run_and_save(cfg, tmp_path, "tiny", show_progress=False, model=_tiny())
    assert result.n_visual == 576 and result.n_text == 40
    assert [(s.k, s.ratio) for s in result.settings] == [(2, 0.0), (1, 0.5), (2, 0.5)]
    for s in result.settings:
        assert s.prefill_s > 0 and s.speedup_predicted >= 1.0 and len(s.prefill_all_s) == 1
        assert s.kv_bytes == s.kv_bytes_predicted  # the cache holds exactly what FastV predicts
        assert s.layer_seq_lens[: s.k] == [616] * s.k
    half = result.setting(2, 0.5)
    assert half.kept == 288 and half.layer_seq_lens == [616, 616, 328]
    assert half.kv_saving == pytest.approx(half.kv_saving_predicted) and half.kv_saving > 0
    assert result.setting(2, 0.0).speedup_predicted == pytest.approx(1.0)
    data = json.loads((tmp_path / "tiny.json").read_text())
    assert {"config", "machine", "full", "settings", "overhead"} <= set(data)
    assert R.load_json(tmp_path / "tiny.json").setting(2, 0.5) == half
    assert (tmp_path / "tiny.png").stat().st_size > 1000
    assert "| 2 | 0.5 | 288 |" in (tmp_path / "tiny.md").read_text()


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen2_5_vl", "video_llava"])
def test_inputs_match_the_model(kind):
    """Built inputs run through each family and carry the visual-token count the FLOPs assume."""
    model = _tiny(kind)
    frames = 8 if kind == "video_llava" else None
    inputs, n_visual = M.build_inputs(model, M.BenchConfig(frames=frames, n_text=8))
    assert n_visual == {"qwen2_vl": 576, "qwen2_5_vl": 576, "video_llava": 8 * 257}[kind]
    with torch.inference_mode():
        out = model(**inputs, logits_to_keep=1)
    assert out.logits.shape[1] == 1
    vis = F.vision_flops(model.config, n_visual=n_visual, frames=frames)
    assert vis.visual_tokens == n_visual


def test_mrope_sections_sum_to_half_head_dim():
    assert sum(M._mrope(128)) == 64 and M._mrope(128) == [16, 24, 24]


def test_cli_flops_table_json_and_budget():
    from fastv.cli import _register, app

    _register()
    runner = CliRunner()
    res = runner.invoke(app, ["flops", "--model", "llava-1.5-13b", "--k", "2", "--ratio", "0.5", "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.output)[0]
    assert row["llm_reduction"] == pytest.approx(0.45, abs=0.01)
    res = runner.invoke(app, ["flops", "-m", "llava-1.5-13b", "--budget", "1", "--budget-model", "llava-1.5-7b"])
    assert res.exit_code == 0 and "Settings within" in res.output
    assert runner.invoke(app, ["flops", "--list"]).exit_code == 0
    assert runner.invoke(app, ["flops", "--model", "no-such-model"]).exit_code != 0
    assert runner.invoke(app, ["bench", "--suite", "nope"]).exit_code != 0


def test_local_checkpoint(tmp_path):
    """A saved checkpoint folder is loaded as-is (no truncation) and benchmarked the same way."""
    _tiny().save_pretrained(tmp_path / "ckpt")
    cfg = M.BenchConfig(model=str(tmp_path / "ckpt"), ks=(2,), ratios=(0.5,), repeats=1, warmup=0, new_tokens=2)
    result = B.run_benchmark(cfg, show_progress=False)
    assert result.model.startswith("checkpoint") and result.setting(2, 0.5).kept == 288
    assert result.setting(2, 0.5).kv_bytes == result.setting(2, 0.5).kv_bytes_predicted


def test_interleaved_plan_puts_every_pruned_run_between_two_unpatched_runs():
    settings = [(2, 0.0), (1, 0.5), (2, 0.5)]
    plan = S.interleaved_plan(settings, rounds=2)
    full = ("full",)
    assert plan == [
        full, (2, 0.0), full, (1, 0.5), full, (2, 0.5), full,
        full, (1, 0.5), full, (2, 0.5), full, (2, 0.0), full,
    ]  # fmt: skip
    shares = S.neighbour_shares([(full, 1.0), ((1, 0.5), 1.5), (full, 2.0), ((2, 0.5), 1.0), (full, 3.0)])
    assert shares == {(1, 0.5): [1.0], (2, 0.5): [0.4]}


def test_benchmark_calls_follow_the_interleaved_plan(monkeypatch):
    """run_benchmark measures in the plan's order: recorded calls, not timings, are checked."""
    calls: list[tuple] = []
    real = B.run_once

    def recording(model, inputs, new_tokens, handle=None):
        calls.append(("full",) if handle is None else (handle.method.k, handle.method.ratio))
        return real(model, inputs, new_tokens, handle)

    monkeypatch.setattr(B, "run_once", recording)
    cfg = M.BenchConfig(model="tiny", ks=(2,), ratios=(0.5,), repeats=2, warmup=1, new_tokens=1, dtype="float32")
    result = B.run_benchmark(cfg, model=_tiny(), show_progress=False)
    settings = [(2, 0.0), (2, 0.5)]
    assert calls[:2] == [("full",), (2, 0.5)]  # warm-up: full and the last setting
    assert calls[2:] == S.interleaved_plan(settings, 2)
    assert len(result.full["prefill_all_s"]) == 6 and len(result.setting(2, 0.5).prefill_all_s) == 2
    for s in result.settings:
        assert s.time_share > 0 and s.time_share_cpu > 0


def test_any_methods_at_any_budgets(tmp_path):
    """methods x keeps: the same measurement for every method; a budget the model cannot hold is skipped."""
    cfg = M.BenchConfig(
        model="tiny", methods=("fastv", "pool", "divprune+fastv", "pdrop"), keeps=(144, 64),
        repeats=1, warmup=0, new_tokens=2, dtype="float32",
    )  # fmt: skip
    result = B.run_and_save(cfg, tmp_path, "methods", show_progress=False, model=_tiny())
    labels = [s.label for s in result.settings]
    assert labels == ["fastv k=2 keep=144", "fastv k=2 keep=64", "pool keep=144", "pool keep=64",
                      "divprune+fastv k=2 keep=144", "divprune+fastv k=2 keep=64"]  # fmt: skip
    assert set(result.skipped) == {"pdrop keep=144", "pdrop keep=64"}  # 3 layers: no default pyramid
    assert "4 layers" in result.skipped["pdrop keep=64"]
    for s in result.settings:
        assert s.kept == s.keep and s.kv_bytes == s.kv_bytes_predicted and s.speedup_predicted > 1
    pool = result.by_label("pool keep=64")
    assert pool.layer_seq_lens == [40 + 64] * 3  # cut before the language model
    assert result.by_label("fastv k=2 keep=64").layer_seq_lens == [616, 616, 104]
    assert result.by_label("pool keep=64").kv_saving > result.by_label("fastv k=2 keep=64").kv_saving
    table = (tmp_path / "methods.md").read_text()
    assert "| pool | keep=64 | 64 |" in table and "pdrop keep=64 skipped" in table
    assert (tmp_path / "methods.png").stat().st_size > 1000
    assert R.load_json(tmp_path / "methods.json").by_label("pool keep=64") == pool


def test_cli_bench_methods_are_checked_before_building(monkeypatch, tmp_path):
    from fastv.cli import _register, app

    _register()
    ran = []
    monkeypatch.setattr(B, "run_and_save", lambda cfg, out, stem, **kw: ran.append((cfg, stem)))
    res = CliRunner().invoke(app, ["bench", "--method", "fastv,nope", "--keep", "64", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "unknown method 'nope'" in res.output and not ran
    res = CliRunner().invoke(app, ["bench", "--keep", "64", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "--keep is a budget for --method" in res.output
    res = CliRunner().invoke(app, ["bench", "--method", "fastv,pdrop", "--keep", "192,64", "--out", str(tmp_path)])
    ((cfg, stem),) = ran
    assert cfg.settings() == [("fastv", "keep", 192), ("fastv", "keep", 64), ("pdrop", "keep", 192),
                              ("pdrop", "keep", 64)]  # fmt: skip
    assert stem == "image-methods" and cfg.vision_layers == 3
