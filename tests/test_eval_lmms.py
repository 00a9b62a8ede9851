"""The lmms-eval plug-in, offline: entry-point registration, and a local task run through lmms-eval."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval is an optional extra")

COLOURS = {"red": (220, 40, 40), "blue": (40, 80, 220), "green": (40, 170, 60)}

TASK_YAML = """\
task: fastv_tiny_colours
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 3
  until: ["\\n"]
process_results: !function utils.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

TASK_UTILS = """\
import os
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))

def doc_to_visual(doc):
    return [Image.open(os.path.join(HERE, doc["image"])).convert("RGB")]

def doc_to_text(doc):
    return doc["question"]

def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"])}
"""


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    try:
        from tiny_processor import save_tiny_llava
    except ImportError:  # pragma: no cover
        pytest.skip("tests/tiny_processor.py is not available")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield save_tiny_llava(tmp_path_factory.mktemp("tiny") / "model")
    torch.set_num_threads(threads)


@pytest.fixture
def entry_point(tmp_path, monkeypatch):
    """What `pip install fastv-lvlm` provides once pyproject declares the entry point."""
    info = tmp_path / "site" / "fastv_lmms_demo-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fastv-lmms-demo\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[lmms_eval.models]\nfastv = fastv.eval.lmms:manifests\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return info


def test_entry_point_and_legacy_plugin_register_the_model(entry_point):
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from fastv.eval.lmms.models.fastv import FastVModel

    registry = ModelRegistryV2()
    registry.load_entrypoint_manifests()
    assert registry.get_model_class("fastv") is FastVModel
    assert registry.get_model_class("fastv_llava") is FastVModel  # the former id, kept as an alias
    # LMMS_EVAL_PLUGINS=fastv.eval.lmms (older lmms-eval): <plugin>.models.<name>.AVAILABLE_MODELS[name]
    import importlib

    from fastv.eval.lmms import models

    for name, cls in models.AVAILABLE_MODELS.items():
        assert getattr(importlib.import_module(f"fastv.eval.lmms.models.{name}"), cls) is FastVModel


@pytest.mark.parametrize(
    "args,kept",
    [
        ({"method": "pool", "keep": 4}, 4),  # pre-LM, no k: the model arg k is ignored
        ({"method": "visionzip+fastv", "keep": 4}, 4),  # a composition
        ({"method": "pdrop", "keep": "12", "k": 2}, None),  # lmms-eval may pass numbers as strings
        ({"fastv": "false"}, None),  # the full model
    ],
)
def test_method_model_arg_runs_that_method(tiny_folder, args, kept):
    """method= picks any fastv method; each request runs it and records what it kept and its FLOPs."""
    from types import SimpleNamespace

    from fastv.eval.lmms.models.fastv import FastVModel

    lm = FastVModel(pretrained=str(tiny_folder), device="cpu", **args)
    assert (lm.pruner is None) == (args.get("fastv") == "false")
    if lm.pruner is not None:
        assert lm.pruner.name == args["method"]
    image = Image.new("RGB", (28, 28), COLOURS["red"])
    lm.task_dict = {"t": {"test": [{"id": 0}]}}
    request = SimpleNamespace(args=("what colour", {"max_new_tokens": 2}, lambda doc: [image], 0, "t", "test"))
    (answer,) = lm.generate_until([request])
    assert isinstance(answer, str)
    note = lm.stats[-1]
    if kept is not None:
        assert note["visual_kept"] == kept and note["visual_total"] == 16
    if lm.pruner is None:
        assert note["visual_kept"] is None
    full = FastVModel(pretrained=str(tiny_folder), device="cpu", fastv="false")
    full.task_dict = lm.task_dict
    full.generate_until([request])
    assert (note["prefill_flops"] < full.stats[-1]["prefill_flops"]) == (lm.pruner is not None)


def test_bad_method_model_arg_is_refused(tiny_folder):
    from fastv.core.errors import FastVError
    from fastv.eval.lmms.models.fastv import FastVModel

    with pytest.raises(FastVError, match="unknown method 'fastvv'"):
        FastVModel(pretrained=str(tiny_folder), device="cpu", method="fastvv")


def _task(folder: Path) -> Path:
    folder.mkdir()
    rows = []
    for i, (name, rgb) in enumerate(COLOURS.items()):
        Image.new("RGB", (28, 28), rgb).save(folder / f"img{i}.png")
        rows.append({"id": i, "image": f"img{i}.png", "question": "what colour", "answer": name})
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "fastv_tiny_colours.yaml").write_text(TASK_YAML.format(data=folder / "data.jsonl"))
    (folder / "utils.py").write_text(TASK_UTILS)
    return folder


def test_local_task_through_lmms_eval(tiny_folder, entry_point, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lmms_eval import evaluator
    from lmms_eval.models import MODEL_REGISTRY_V2
    from lmms_eval.tasks import TaskManager

    try:
        import filelock._api  # noqa: F401
    except ImportError:
        # lmms-eval 0.7.3 patches filelock's private `_api` module, gone in filelock 4: skip the patch
        # (it only matters for concurrent dataset downloads).
        monkeypatch.setattr(evaluator._enable_reentrant_filelocks, "_patched", True, raising=False)
    MODEL_REGISTRY_V2.load_entrypoint_manifests(overwrite=True)
    tasks = TaskManager(include_path=str(_task(tmp_path / "task")), include_defaults=False)
    outputs = {}
    runs = {
        "full": "fastv=false",
        "r0": "k=2,ratio=0.0",
        "drop": "k=2,ratio=0.75",
        "mask": "k=2,ratio=0.75,mode=mask",
        "pool": "method=pool,keep=4",
    }
    for name, args in runs.items():
        out = evaluator.simple_evaluate(
            model="fastv" if name == "pool" else "fastv_llava",  # the id and its alias
            model_args=f"pretrained={tiny_folder},device=cpu,{args}",
            tasks=["fastv_tiny_colours"],
            task_manager=tasks,
            batch_size=1,
            log_samples=True,
        )
        samples = out["samples"]["fastv_tiny_colours"]
        outputs[name] = [s["resps"][0][0] if isinstance(s["resps"][0], list) else s["resps"][0] for s in samples]
        assert len(samples) == 3
        assert "exact_match,none" in out["results"]["fastv_tiny_colours"]
    assert outputs["r0"] == outputs["full"]  # FastV keeping every token changes nothing
    assert outputs["drop"] == outputs["mask"]  # dropping tokens = masking them (the engine's reference)


def test_lmms_eval_command_line_runs_the_plugin(tiny_folder, tmp_path):
    """lmms-eval's real command line, as a user runs it, finds fastv through the installed entry point."""
    import os
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    task = _task(tmp_path / "task")
    out = tmp_path / "results"
    cmd = [
        sys.executable, "-m", "lmms_eval", "--model", "fastv", "--tasks", "fastv_tiny_colours",
        "--model_args", f"pretrained={tiny_folder},device=cpu,k=2,ratio=0.5",
        "--include_path", str(task), "--batch_size", "1", "--output_path", str(out), "--log_samples",
    ]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in out.rglob("*results*.json")]
    assert results, f"no results JSON under {out}: {sorted(str(p) for p in out.rglob('*'))}"
    assert "exact_match,none" in results[0]["results"]["fastv_tiny_colours"]
