"""`fastv eval` end to end on a tiny LLaVA: resume after an interruption, and two processes = one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastv.core.errors import FastVError
from fastv.eval import EvalConfig, evaluate, fastv_grid, load_samples
from fastv.eval.report import without_latency
from fastv.eval.runner import Dist
from fastv.loading import load_model

SRC = Path(__file__).resolve().parents[1] / "src"
DATA = "shapes:test:2:color,count"  # 2 scenes x 2 questions = 4 samples
MAX_NEW = 3


def _tiny_folder(path: Path) -> Path:
    """A tiny random LLaVA + offline processor saved like a hub checkpoint."""
    try:
        from tiny_processor import save_tiny_llava
    except ImportError:  # pragma: no cover - the shared builder is written by another engineer
        pytest.skip("tests/tiny_processor.py is not available")
    return save_tiny_llava(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # One thread: a tiny model's matmuls only pay for thread hand-offs (5x slower on a busy 2-core box).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = _tiny_folder(tmp_path_factory.mktemp("tiny") / "model")
    model, processor = load_model(str(folder))
    yield folder, model, processor
    torch.set_num_threads(threads)


def _settings():
    return fastv_grid([1, 2], [0.5], ["last_token", "random"])


def _run(tiny, out: Path, **kw):
    folder, model, processor = tiny
    cfg = EvalConfig(str(folder), DATA, out, max_new_tokens=MAX_NEW, progress=False)
    return evaluate(cfg, _settings(), model, processor, load_samples(DATA), dist=Dist(), **kw)


def _predictions(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for r in rows:  # measured, not computed: differs run to run
        del r["seconds"], r["prefill_seconds"], r["rank"]
        r["first_token"]["logprobs"] = [round(v, 3) for v in r["first_token"]["logprobs"]]
    return rows


def _assert_same(a: list[dict], b: list[dict]) -> None:
    """Equal records or summary rows; KL, computed from float logits like the log-probs, to 1e-5 nats."""
    a, b = [dict(r) for r in a], [dict(r) for r in b]
    kl_a, kl_b = [r.pop("kl_first_token", None) for r in a], [r.pop("kl_first_token", None) for r in b]
    assert a == b
    assert kl_a == pytest.approx(kl_b, abs=1e-5)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_uninterrupted(tiny, tmp_path):
    whole = _run(tiny, tmp_path / "whole")
    n_pairs = 4 * len(_settings())
    assert whole.ran == n_pairs and len(_predictions(tmp_path / "whole")) == n_pairs
    assert {p.name for p in whole.files} >= {
        "predictions.jsonl",
        "summary.json",
        "summary.csv",
        "summary.md",
        "pareto.png",
    }

    def stop_after(limit):
        seen = []

        def hook(record):
            seen.append(record)
            if len(seen) == limit:
                raise Interrupt

        return hook

    out = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        _run(tiny, out, on_record=stop_after(7))
    shard = out / "shards" / "rank0.jsonl"
    assert len(shard.read_text().splitlines()) == 7  # every finished pair is on disk
    with shard.open("a") as f:
        f.write('{"setting": "full", "sample_id": "torn')  # killed in the middle of a write
    resumed = _run(tiny, out)
    assert resumed.ran == n_pairs - 7  # finished pairs are skipped, the torn one reruns
    assert without_latency(resumed.rows) == without_latency(whole.rows)
    assert _predictions(out) == _predictions(tmp_path / "whole")
    again = _run(tiny, out)  # nothing left to do, same answer
    assert again.ran == 0 and without_latency(again.rows) == without_latency(whole.rows)


def test_resume_refuses_another_model_or_data(tiny, tmp_path):
    folder, model, processor = tiny
    out = tmp_path / "run"
    cfg = EvalConfig(str(folder), DATA, out, limit=1, max_new_tokens=MAX_NEW, progress=False)
    samples = load_samples(DATA, limit=1)
    evaluate(cfg, fastv_grid([1], [0.5]), model, processor, samples, dist=Dist())
    cfg.max_new_tokens = MAX_NEW + 1
    with pytest.raises(FastVError, match="max_new_tokens"):
        evaluate(cfg, fastv_grid([1], [0.5]), model, processor, samples, dist=Dist())
    cfg.fresh = True  # --fresh starts over
    assert evaluate(cfg, fastv_grid([1], [0.5]), model, processor, samples, dist=Dist()).ran == 2


def test_two_processes_equal_one(tiny, tmp_path):
    pytest.importorskip("accelerate")
    folder = tiny[0]
    one = tmp_path / "one"
    _run(tiny, one)
    two = tmp_path / "two"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "fastv", "eval"]
    args = ["--model", str(folder), "--data", DATA, "--k", "1,2", "--ratio", "0.5", "--scorer", "last_token,random"]
    args += ["--out", str(two), "--max-new-tokens", str(MAX_NEW), "--cpu", "--no-progress"]
    proc = subprocess.run(launch + args, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    shards = {p.name: len(p.read_text().splitlines()) for p in (two / "shards").glob("*.jsonl")}
    assert shards == {"rank0.jsonl": 10, "rank1.jsonl": 10}  # 2 samples x 5 settings each
    _assert_same(_predictions(two), _predictions(one))  # merged once each, same order, same answers
    s1 = json.loads((one / "summary.json").read_text())
    s2 = json.loads((two / "summary.json").read_text())
    _assert_same(without_latency(s2), without_latency(s1))
    assert (two / "pareto.png").stat().st_size > 0
