"""The GPU benchmark's --smoke run: the same code path as on a GPU, at tiny shapes on the CPU."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_bench"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_bench", None)


@pytest.fixture(scope="module")
def smoke(gpu_bench, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu")
    assert gpu_bench.main(["--smoke", "--out", str(out), "--repeats", "1", "--new-tokens", "3"]) == 0
    return out, json.loads((out / "gpu.json").read_text())


ROW_FIELDS = ("ttft_s", "ttft_cpu_s", "decode_tok_s", "ttft_share", "decode_share", "flops_share", "kv_bytes",
              "kv_bytes_predicted", "peak_mem_bytes", "kept", "budget", "layer_seq_lens")  # fmt: skip


def test_smoke_writes_every_row_and_field(gpu_bench, smoke):
    out, data = smoke
    env = data["meta"]["env"]
    assert {"gpu", "driver", "torch", "transformers", "cuda_runtime", "flash_attn"} <= set(env)
    assert data["meta"]["smoke"] and "total_s" in data["meta"] and not data.get("failures")
    phases = {(p["model"], p["batch"]): p for p in data["phases"]}
    assert set(phases) == {(s.key, b) for s in gpu_bench.SMOKE_MODELS for b in (1, 8)}
    for spec in gpu_bench.SMOKE_MODELS:
        for batch in (1, 8):
            ph = phases[(spec.key, batch)]
            assert ph["status"] == "done" and ph["rounds_done"] == 1 and not ph["errors"], ph["errors"]
            expected = ["full"] + [s.label for s in gpu_bench.settings_for(spec, batch)]
            got = [r["label"] for r in ph["rows"]]
            assert sorted(got + list(ph["skipped"])) == sorted(expected)
            if spec.shape == "llava-next-7b":  # no square grid, no CLS attention: refused, with the reason
                assert all(k.split()[0] in ("pool", "visionzip") for k in ph["skipped"])
                assert len(ph["skipped"]) == (6 if batch == 1 else 0)
                assert ph["n_visual"] == 8 * 8 + 16 * 17  # base crop + 2x2 tiles with a newline per row
            else:
                assert not ph["skipped"]
            rows = {r["label"]: r for r in ph["rows"]}
            full = rows["full"]
            assert full["ttft_share"] == 1.0 and full["flops_share"] == 1.0
            for r in ph["rows"]:
                assert r["n"] == 1 and all(r[f] is not None for f in ROW_FIELDS), r
                if r["method"] == "full":
                    continue
                assert r["kv_bytes"] < full["kv_bytes"], r["label"]
                assert r["flops_share"] < 1.0
                assert r["layer_seq_lens"] == r["layer_seq_lens_accounting"], r["label"]  # engine == accounting
                assert r["kv_bytes"] == r["kv_bytes_predicted"], r["label"]


def test_smoke_writes_tables_and_plot(gpu_bench, smoke, tmp_path):
    out, _ = smoke
    md = (out / "gpu.md").read_text()
    assert "SMOKE" in md and "| full | 0.203 | 1.000 |" in md and "| R=75% | 0.124 |" in md
    assert md.count("## llava-") == 6
    assert (out / "gpu.png").stat().st_size > 10_000
    assert not (out / "gpu.json.tmp").exists()
    # --render rebuilds the table and plot from a saved JSON alone (e.g. after a run was killed)
    (tmp_path / "gpu.json").write_text((out / "gpu.json").read_text())
    assert gpu_bench.main(["--render", str(tmp_path / "gpu.json")]) == 0
    assert (tmp_path / "gpu.md").read_text() == md and (tmp_path / "gpu.png").stat().st_size > 10_000


def test_spent_budget_still_writes_results(gpu_bench, tmp_path):
    assert gpu_bench.main(["--smoke", "--out", str(tmp_path), "--budget-s", "0"]) == 0
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["phases"] == [] and "time budget" in data["meta"]["stopped"]
    assert (tmp_path / "gpu.md").exists() and (tmp_path / "gpu.png").exists()


def test_second_attention_implementation_phase(gpu_bench, tmp_path):
    """The flash-attention-2 phase's path (switch the implementation, time a subset), here with eager."""
    argv = ["--smoke", "--out", str(tmp_path), "--repeats", "1", "--new-tokens", "2", "--batches", "1"]
    assert gpu_bench.main([*argv, "--models", "llava-1.5-7b", "--extra-attn", "eager"]) == 0
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert [(p["attn"], p["status"]) for p in data["phases"]] == [("sdpa", "done"), ("eager", "done")]
    eager = data["phases"][1]
    assert [r["label"] for r in eager["rows"]] == [
        "full", "fastv K=2 R=0.25", "fastv K=2 R=0.5", "fastv K=2 R=0.75", "pdrop keep=16", "random keep=16"
    ]  # fmt: skip
    assert all(r["n"] == 1 and r["ttft_s"] for r in eager["rows"]) and not eager["errors"]
