"""Issue 13: every bad input a new user tried ends in one clear line on stderr (exit code 2), or in a
correct result with a warning; never a traceback, never a silent wrong answer.

One test (or a few) per defect of the issue, numbered like it. The CLI runs in-process (typer's
CliRunner); where a model must load it is the shipped default model (its layer count and context
window read from its config, 144 visual tokens) or the tiny random LLaVA of `tiny_processor`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from tiny_processor import IMAGE_SIZE, save_tiny_llava
from typer.testing import CliRunner

from fastv.cli import _register, app
from fastv.core.errors import FastVError
from fastv.zoo.default_model import DEFAULT_MODEL_DIR, EXAMPLES_DIR

EXAMPLES = EXAMPLES_DIR
SCENE = EXAMPLES / "scene_0.png"
_TEXT = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())["text_config"]
LAYERS, WINDOW = _TEXT["num_hidden_layers"], _TEXT["max_position_embeddings"]  # the shipped model's shape


def cli(*args: str):
    _register()
    return CliRunner().invoke(app, [str(a) for a in args])


def refused(res, *words: str) -> str:
    """Exit 2, exactly one 'error:' line on stderr naming `words`, no traceback, nothing on stdout."""
    err = res.stderr
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert len(lines) == 1, err
    assert err.strip().splitlines()[-1] == lines[0], err  # the error is the last thing said
    assert "Traceback" not in res.output and res.stdout.strip() == "", res.output
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ---- files ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "text.png").write_text("this is not a picture\n")
    (d / "empty.png").write_bytes(b"")
    (d / "truncated.png").write_bytes(SCENE.read_bytes()[:300])
    Image.new("1", (14000, 14000)).save(d / "bomb.png")  # 196 megapixels in a few kB
    frames = d / "frames"
    frames.mkdir()
    for i in range(2):
        Image.open(SCENE).save(frames / f"{i}.png")
    (d / "empty_model").mkdir()
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = save_tiny_llava(tmp_path_factory.mktemp("tiny") / "model")
    from fastv.loading import load_model

    model, processor = load_model(str(folder))
    return folder, model, processor


def tiny_image(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# ---- 1. video on an image-only model ------------------------------------------------------------
def test_1_video_on_an_image_only_model_is_refused_by_generate_and_analyze(files, tmp_path):
    res = cli("generate", "--prompt", "color a3", "--video", files / "frames")
    refused(res, "image-only", "--video")
    res = cli("analyze", "--video", files / "frames", "--out", tmp_path / "a")
    refused(res, "image-only")


def test_1_video_rows_on_an_image_only_model_are_refused_by_eval(files, tmp_path, tiny):
    data = tmp_path / "video.jsonl"
    data.write_text(json.dumps({"video": str(files / "frames"), "question": "color a3", "answer": "red"}) + "\n")
    res = cli("eval", "--data", data, "--k", "2", "--ratio", "0.5", "--out", tmp_path / "o")
    refused(res, "row '0' has a video", "image-only")
    assert not (tmp_path / "o").exists()
    # the library refuses too (hub ids are known only once loaded)
    from fastv.eval import EvalConfig, evaluate, fastv_grid, load_samples
    from fastv.eval.runner import Dist

    folder, model, processor = tiny
    cfg = EvalConfig(str(folder), str(data), tmp_path / "api", max_new_tokens=2, progress=False)
    with pytest.raises(FastVError, match="take images only"):
        evaluate(cfg, fastv_grid([1], [0.5]), model, processor, load_samples(str(data)), dist=Dist())
    assert not (tmp_path / "api" / "run.json").exists()


# ---- 2. resume after the data changed -------------------------------------------------------------
def _rows(tmp_path: Path, n: int, ids: bool) -> list[dict]:
    rows = []
    for i in range(n):
        row = {"image": tiny_image(tmp_path / f"img{i}.png", i).name, "question": f"question {i}", "answer": f"a{i}"}
        if ids:
            row["id"] = f"q{i}"
        rows.append(row)
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _eval(tiny, data: Path, out: Path):
    from fastv.eval import EvalConfig, evaluate, fastv_grid
    from fastv.eval.runner import Dist

    folder, model, processor = tiny
    cfg = EvalConfig(str(folder), str(data), out, max_new_tokens=2, progress=False)
    return evaluate(cfg, fastv_grid([1], [0.5]), model, processor, dist=Dist())


def test_2_a_row_inserted_above_rows_keyed_by_number_is_refused_on_resume(tiny, tmp_path):
    rows = _rows(tmp_path, 3, ids=False)
    data = _write(tmp_path / "data.jsonl", rows[1:])
    out = tmp_path / "out"
    assert _eval(tiny, data, out).ran == 4  # 2 samples x (full, fastv)
    _write(data, rows)  # one row inserted at the top: every row number now names another question
    with pytest.raises(FastVError, match="content has changed"):
        _eval(tiny, data, out)
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert {r["question"] for r in records} == {"question 1", "question 2"}  # nothing mixed in


def test_2_an_edited_image_is_a_changed_sample(tiny, tmp_path):
    rows = _rows(tmp_path, 2, ids=True)
    data = _write(tmp_path / "data.jsonl", rows)
    out = tmp_path / "out"
    _eval(tiny, data, out)
    tiny_image(tmp_path / "img1.png", 99)  # same path, same question, other pixels
    with pytest.raises(FastVError, match="id 'q1'"):
        _eval(tiny, data, out)


def test_2_with_ids_an_inserted_row_resumes_correctly(tiny, tmp_path):
    rows = _rows(tmp_path, 3, ids=True)
    data = _write(tmp_path / "data.jsonl", rows[1:])
    out = tmp_path / "out"
    _eval(tiny, data, out)
    _write(data, rows)
    assert _eval(tiny, data, out).ran == 2  # only the new row, under both settings
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 6
    assert all(r["question"] == f"question {r['sample_id'][1:]}" for r in records)


# ---- 4. unreadable images --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,words",
    [
        ("text.png", "not an image"),
        ("empty.png", "empty (0 bytes)"),
        ("truncated.png", "damaged or truncated"),
        ("bomb.png", "megapixels"),
        ("frames", "is a folder"),  # 12: a folder as --image is not "does not exist"
        ("missing.png", "does not exist"),
    ],
)
def test_4_unreadable_images_are_named_by_generate_and_analyze(files, tmp_path, name, words):
    res = cli("generate", "--prompt", "color a3", "--image", files / name)
    refused(res, name, words)
    if name != "frames":  # for analyze one folder of images is a valid input: it aggregates over them
        res = cli("analyze", "--image", files / name, "--out", tmp_path / "a")
        refused(res, name, words)


def test_4_eval_verifies_every_image_up_front_and_names_the_row(files, tmp_path):
    good = {"image": str(SCENE), "question": "color a3", "answer": "red"}
    bad = {"image": str(files / "truncated.png"), "question": "color a3", "answer": "red"}
    data = _write(tmp_path / "d.jsonl", [good, good | {"question": "shape a3"}, bad])
    res = cli("eval", "--data", data, "--k", "2", "--ratio", "0.5", "--out", tmp_path / "o")
    refused(res, "d.jsonl:3", "truncated.png", "damaged or truncated")
    assert not (tmp_path / "o").exists()


def test_4_parquet_embedded_bytes_are_verified(files, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    from fastv.eval.data import load_samples

    table = pa.table(
        {
            "image": [{"bytes": b"not a png", "path": "x.png"}],
            "question": ["q"],
            "answer": ["a"],
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    with pytest.raises(FastVError, match="row 0: image 'x.png' is not an image"):
        load_samples(str(tmp_path / "d.parquet"))


# ---- 5, 6. fastv bench: output folder and options ---------------------------------------------------
@pytest.fixture
def no_benchmark(monkeypatch):
    """Record what `fastv bench` would run instead of running it (the measurement is not under test)."""
    from fastv.bench import measure as B
    from fastv.bench import report

    calls = []

    def fake(cfg, out_dir, name, **kw):
        calls.append((cfg, Path(out_dir), name))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for ext in (".json", ".png", ".md"):
            (Path(out_dir) / f"{name}{ext}").write_text("x")
        return SimpleNamespace(model="fake")

    monkeypatch.setattr(B, "run_and_save", fake)
    monkeypatch.setattr(B, "build_model", lambda cfg: pytest.fail("built a model for refused options"))
    monkeypatch.setattr(report, "markdown_table", lambda result: "")
    return calls


def test_5_bench_writes_a_new_run_folder_and_never_overwrites_without_force(no_benchmark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    committed = tmp_path / "benchmarks" / "results"
    committed.mkdir(parents=True)
    (committed / "image.json").write_text("committed")
    res = cli("bench", "--repeats", "1")
    assert res.exit_code == 0, res.output
    ((_, first, _),) = no_benchmark
    assert first.parent == Path("runs") and first.name.startswith("bench-")
    assert (committed / "image.json").read_text() == "committed"
    res = cli("bench", "--repeats", "1")  # a second run in the same second gets its own folder
    assert res.exit_code == 0 and no_benchmark[1][1] != first
    refused(cli("bench", "--out", committed), "image.json", "--force")
    assert (committed / "image.json").read_text() == "committed"
    assert cli("bench", "--out", committed, "--force").exit_code == 0


@pytest.mark.parametrize(
    "args,words",
    [
        (["--repeats", "0"], "--repeats 0"),
        (["--repeats", "-1"], "--repeats -1"),
        (["--ratios", "1.0"], "0 <= R < 1"),
        (["--ks", "99"], "--ks 99"),
        (["--ks", "two"], "--ks 'two'"),
        (["--ks", "0"], "K >= 1"),
        (["--model", "nosuch"], "not a known shape"),
        (["--layers", "2", "--ks", "1"], "overhead"),
        (["--dtype", "int8"], "--dtype"),
        (["--suite", "audio"], "--suite"),
        (["--name", "../x"], "--name"),
    ],
)
def test_6_bench_refuses_bad_options_before_building_a_model(no_benchmark, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    refused(cli("bench", *args), words)
    assert time.perf_counter() - start < 5 and not no_benchmark and not (tmp_path / "runs").exists()


# ---- 7. an empty model folder -------------------------------------------------------------------------
def test_7_an_empty_model_folder_is_named(files):
    refused(cli("generate", "--model", files / "empty_model", "--prompt", "x", "--image", SCENE), "config.json")
    refused(cli("demo", "--model", files / "empty_model"), "config.json")
    refused(cli("eval", "--model", files / "empty_model", "--out", files / "o"), "config.json")


# ---- 8. eval limits -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args,words",
    [
        (["--limit", "0"], "--limit 0"),
        (["--limit", "-1"], "--limit -1"),
        (["--data", "shapes:test:0"], ">= 1"),
        (["--data", "shapes:test:-5"], ">= 1"),
    ],
)
def test_8_eval_limits(tmp_path, args, words):
    refused(cli("eval", *args, "--out", tmp_path / "o"), words)
    assert not (tmp_path / "o").exists()


def test_8_load_samples_refuses_a_limit_below_one():
    from fastv.eval.data import load_samples

    assert len(load_samples("shapes:test:2:color", limit=1)) == 1
    for bad in (0, -1):
        with pytest.raises(FastVError, match="--limit"):
            load_samples("shapes:test:2:color", limit=bad)


def test_8_limit_reads_only_the_rows_it_keeps_and_bad_text_is_named(files, tmp_path):
    from fastv.eval.data import load_samples

    good = {"image": str(SCENE), "question": "color a3", "answer": "red"}
    data = _write(tmp_path / "d.jsonl", [good, good | {"image": str(files / "text.png")}])
    assert len(load_samples(str(data), limit=1)) == 1  # a smoke run does not open row 2's image
    with pytest.raises(FastVError, match="d.jsonl:2"):
        load_samples(str(data))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(good).encode() + b"\n" + '{"question": "caf\u00e9"}'.encode("latin-1") + b"\n")
    with pytest.raises(FastVError, match="latin.jsonl:2: not UTF-8"):
        load_samples(str(latin))


# ---- 9. analyze --prompts ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content,words",
    [
        (json.dumps({"image": str(SCENE)}) + "\n", ":1: missing or empty 'prompt'"),
        (json.dumps({"image": str(SCENE), "prompt": "x"}) + "\n{not json\n", ":2: not valid JSON"),
        ('{"image": "text.png", "prompt": "x"}\n', ":1: image"),
        (None, "no such file"),
    ],
)
def test_9_analyze_prompts_file_rows_are_named(files, tmp_path, content, words):
    path = files / f"prompts-{abs(hash(content))}.jsonl"
    if content is not None:
        path.write_text(content)
    else:
        path = files / "missing.jsonl"
    refused(cli("analyze", "--prompts", path, "--out", tmp_path / "a"), words)


# ---- 10. warnings at the edges -----------------------------------------------------------------------
def test_10_prompt_past_the_context_window_warns(tmp_path):
    long = " ".join(["circle"] * (WINDOW + 50))  # one token per word: past the window with any template
    res = cli("generate", "--prompt", long, "--image", SCENE, "--max-new-tokens", "1")
    assert res.exit_code == 0, res.output
    assert "warning: the prompt has" in res.stderr and f"context window is {WINDOW}" in res.stderr
    short = cli("generate", "--prompt", "color a3", "--image", SCENE, "--max-new-tokens", "1")
    assert short.exit_code == 0 and "warning" not in short.stderr


def test_10_a_ratio_that_keeps_no_visual_token_warns():
    res = cli("generate", "--prompt", "color a3", "--image", SCENE, "--ratio", "0.999", "--max-new-tokens", "1")
    assert res.exit_code == 0, res.output
    assert "warning: the pruning kept 0 of 144 visual tokens" in res.stderr


def test_10_eval_notes_a_setting_that_kept_no_visual_token(tiny, tmp_path):
    from fastv.eval import EvalConfig, evaluate, fastv_grid
    from fastv.eval.pipeline import edge_notes
    from fastv.eval.runner import Dist

    folder, model, processor = tiny
    cfg = EvalConfig(str(folder), "shapes:test:1:color", tmp_path / "o", max_new_tokens=1, progress=False)
    result = evaluate(cfg, fastv_grid([1], [0.5, 0.99]), model, processor, dist=Dist())  # 16 tokens: 0.99 keeps 0
    assert result.notes == [
        "'fastv k=1 r=0.99' kept 0 visual tokens on 1 of 1 samples: those answers never saw the image; "
        "use a smaller --ratio or a larger --keep"
    ]
    long = {"setting": "full", "sample_id": "a", "n_visual": 1, "n_kept": 1, "prompt_len": 510, "new_tokens": 3}
    assert edge_notes([long], 512) == [
        "1 sample(s) run past the model's context window of 512 tokens (first: 'a'): their answers are "
        "meaningless; shorten those prompts or use fewer images"
    ]
    assert edge_notes([long], 513) == []


def test_10_max_new_tokens_0_is_refused_up_front():
    refused(cli("generate", "--prompt", "x", "--image", SCENE, "--max-new-tokens", "0"), "--max-new-tokens 0")
    refused(cli("eval", "--max-new-tokens", "0"), "--max-new-tokens 0")
    refused(cli("demo", "--max-new-tokens", "0"), "--max-new-tokens 0")


@pytest.mark.parametrize("k,ratio,words", [(2.5, 0.5, "whole number"), ("x", 0.5, "numbers"), (2, "nan", "R=")])
def test_10_demo_refuses_a_fractional_k(k, ratio, words):
    from fastv.demo.settings import Settings

    with pytest.raises(FastVError, match=words):
        Settings.parse(k, ratio, "last_token")
    assert Settings.parse(2.0, 0.5, "random") == Settings(2, 0.5, "random")


# ---- 11. demo on a busy port ---------------------------------------------------------------------------
def test_11_demo_on_a_busy_port_suggests_port_before_loading(monkeypatch):
    pytest.importorskip("gradio")
    import fastv.loading

    monkeypatch.setattr(fastv.loading, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        refused(cli("demo", "--port", port), f"port {port}", f"--port {port + 1}")
    refused(cli("demo", "--port", "70000"), "1..65535")


# ---- 12. housekeeping ----------------------------------------------------------------------------------
def test_12_errors_go_to_stderr_even_with_json():
    res = cli("generate", "--prompt", "x", "--image", "missing.png", "--json")
    refused(res, "does not exist")


def test_12_debug_shows_the_traceback():
    res = cli("--debug", "generate", "--prompt", "x", "--image", "missing.png")
    assert res.exit_code == 2 and "Traceback" in res.stderr and "error: image" in res.stderr


def test_12_option_type_errors_are_one_line():
    refused(cli("generate", "--prompt", "x", "--k", "two"), "--k", "fastv generate --help")


def test_12_inputs_are_checked_before_the_model_loads(monkeypatch, files):
    import fastv.loading

    monkeypatch.setattr(fastv.loading, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    refused(cli("generate", "--prompt", "x", "--image", files / "text.png"), "text.png")
    refused(cli("generate", "--prompt", "x", "--image", SCENE, "--k", LAYERS), f"--k {LAYERS}", f"0..{LAYERS - 1}")
    refused(cli("analyze", "--image", SCENE, "--k", LAYERS, "--out", files / "a"), f"--k {LAYERS}")
    refused(cli("eval", "--k", f"1,{LAYERS + 3}", "--ratio", "0.5", "--out", files / "o"), f"--k {LAYERS + 3}")


def test_12_a_refused_eval_leaves_no_run_json(tiny, tmp_path):
    folder = tiny[0]
    out = tmp_path / "o"
    common = ["eval", "--model", folder, "--data", "shapes:test:1:color", "--k", "1", "--max-new-tokens", "2"]
    refused(cli(*common, "--keep", "100", "--out", out, "--no-progress"), "keep")  # 16 visual tokens only
    assert not (out / "run.json").exists()
    res = cli(*common, "--keep", "4", "--out", out, "--no-progress")  # the folder is not blocked
    assert res.exit_code == 0, res.output
    assert json.loads((out / "run.json").read_text())["data_fingerprint"]


def test_12_two_evals_into_one_folder_are_refused(tiny, tmp_path):
    from fastv.eval import EvalConfig, evaluate, fastv_grid
    from fastv.eval.runner import Dist
    from fastv.eval.store import ResultStore

    folder, model, processor = tiny
    out = tmp_path / "o"
    cfg = EvalConfig(str(folder), "shapes:test:1:color", out, max_new_tokens=2, progress=False)
    with ResultStore(out).lock():  # another run holds the folder
        with pytest.raises(FastVError, match=f"in use by another fastv eval \\(pid {os.getpid()}\\)"):
            evaluate(cfg, fastv_grid([1], [0.5]), model, processor, dist=Dist())
    assert evaluate(cfg, fastv_grid([1], [0.5]), model, processor, dist=Dist()).ran == 2  # released


def test_12_fresh_keeps_the_lock_and_clears_the_rest(tmp_path):
    from fastv.eval.store import LOCK, ResultStore

    store = ResultStore(tmp_path / "o")
    with store.lock():
        (tmp_path / "o" / "shards").mkdir()
        (tmp_path / "o" / "run.json").write_text("{}")
        store.clear()
        assert [p.name for p in (tmp_path / "o").iterdir()] == [LOCK]


def test_image_check_is_what_load_image_uses(files):
    from fastv.loading import load_image

    with pytest.raises(FastVError, match="damaged or truncated"):
        load_image(files / "truncated.png")
    assert load_image(SCENE).mode == "RGB"
