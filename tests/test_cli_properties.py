"""Property (issue 13): whatever bad value a user gives any option of any verb, fastv answers with
exactly one line on stderr and exit code 2. No traceback escapes, and no model is loaded or built
for a value the validation layer (`fastv.cli.validate`) can judge up front.

Each strategy below yields only values that must be refused, so every example is a refusal; the
valid rest of the command line is fixed per verb.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from fastv.cli import _register, app
from fastv.cli.validate import ATTN, DTYPES
from fastv.zoo.default_model import EXAMPLES_DIR

SCENE = EXAMPLES_DIR / "scene_0.png"
DEFAULT_LAYERS = 6  # the default model's language-model depth
PROPERTY = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], derandomize=True
)


# ---- bad values ------------------------------------------------------------------------------------
WORDS = st.from_regex(r"[A-Za-z_][A-Za-z_.]{0,10}", fullmatch=True)  # never parses as a number we accept


def ints(*, below: int | None = None, above: int | None = None) -> st.SearchStrategy[str]:
    """Integers < below or > above, or something that is not an integer at all."""
    parts = [WORDS, st.sampled_from(["2.5", "1e3", "", " ", "0x10"])]
    if below is not None:
        parts.append(st.integers(max_value=below - 1).map(str))
    if above is not None:
        parts.append(st.integers(min_value=above + 1).map(str))
    return st.one_of(*parts)


BAD_RATIO = st.one_of(
    st.floats(max_value=-1e-9, allow_nan=False).map(repr),
    st.floats(min_value=1.0, allow_nan=False).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1", "x", "0.5.5", ""]),
    WORDS,
)


def not_in(choices) -> st.SearchStrategy[str]:
    return WORDS.filter(lambda w: w not in choices)


def int_list(bad: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A comma-separated list with at least one bad element."""
    good = st.sampled_from(["1", "2"])
    return st.tuples(st.lists(good, max_size=2), bad, st.lists(good, max_size=2)).map(
        lambda t: ",".join([*t[0], t[1], *t[2]])
    )


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Files and folders a user might wrongly pass."""
    d = tmp_path_factory.mktemp("props")
    (d / "text.png").write_text("not a picture")
    (d / "empty.png").write_bytes(b"")
    (d / "truncated.png").write_bytes(SCENE.read_bytes()[:200])
    (d / "folder").mkdir()
    frames = d / "frames"
    frames.mkdir()
    Image.open(SCENE).save(frames / "0.png")
    (d / "no_json.jsonl").write_text("{nope\n")
    (d / "no_prompt.jsonl").write_text(json.dumps({"image": str(SCENE)}) + "\n")
    (d / "bad_row.jsonl").write_text('{"image": "text.png", "question": "q", "answer": "a"}\n')
    (d / "a_file").write_text("x")
    return d


def bad_paths(d: Path) -> st.SearchStrategy[str]:
    names = ["text.png", "empty.png", "truncated.png", "folder", "a_file", "missing.png"]
    return st.one_of(st.sampled_from([str(d / n) for n in names]), WORDS.map(lambda w: str(d / "nope" / w)))


def bad_models(d: Path) -> st.SearchStrategy[str]:
    """Path-like names that are not a model folder (hub ids would try the network)."""
    fixed = [str(d / "folder"), str(d / "a_file"), str(d / "missing"), "./nosuch", "a/b/c", "a b", ""]
    return st.one_of(st.sampled_from(fixed), WORDS.map(lambda w: f"/nonexistent/{w}"))


# ---- the property ------------------------------------------------------------------------------------
def assert_refused(args: list[str]) -> None:
    _register()
    res = CliRunner().invoke(app, args)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    detail = f"{args!r} -> exit {res.exit_code}, exception {res.exception!r}\n{res.output}"
    assert res.exception is None or isinstance(res.exception, SystemExit), detail
    assert res.exit_code == 2, detail
    assert len(errors) == 1 and "Traceback" not in res.output, detail
    assert res.stderr.strip().splitlines()[-1] == errors[0], detail


@pytest.fixture
def no_models(monkeypatch, tmp_path):
    """Fail loudly if a refusal would have loaded or built a model first; run in an empty folder."""
    import fastv.bench.measure
    import fastv.loading

    def loaded(*a, **k):
        raise AssertionError("a model was loaded for a value the validation layer should refuse")

    monkeypatch.setattr(fastv.loading, "load_model", loaded)
    monkeypatch.setattr(fastv.bench.measure, "build_model", loaded)
    monkeypatch.setattr(fastv.bench.measure, "run_and_save", loaded)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def option_and_value(options: dict[str, st.SearchStrategy[str]]):
    return st.sampled_from(sorted(options)).flatmap(lambda o: st.tuples(st.just(o), options[o]))


def generate_options(d: Path) -> dict:
    return {
        "--k": ints(below=1, above=DEFAULT_LAYERS - 1),
        "--ratio": BAD_RATIO,
        "--keep": ints(below=0),
        "--scorer": not_in(("last_token", "random")),
        "--max-new-tokens": ints(below=1),
        "--dtype": not_in(DTYPES),
        "--attn": not_in(ATTN),
        "--image": bad_paths(d),
        "--video": st.one_of(bad_paths(d), st.just(str(d / "frames"))),  # frames: an image-only model
        "--model": bad_models(d),
    }


@PROPERTY
@given(data=st.data())
def test_generate_refuses_every_bad_value(bad, no_models, data):
    option, value = data.draw(option_and_value(generate_options(bad)))
    assert_refused(["generate", "--prompt", "color a3", "--image", str(SCENE), option, value])


@PROPERTY
@given(data=st.data())
def test_analyze_refuses_every_bad_value(bad, no_models, data):
    options = {
        **{o: s for o, s in generate_options(bad).items() if o not in ("--keep", "--scorer", "--max-new-tokens")},
        "--max-new-tokens": ints(below=0),
        "--matrix-layer": ints(below=0, above=DEFAULT_LAYERS - 1),
        "--query": not_in(("last", "instruction", "output")),
        "--layers": int_list(WORDS),
        "--prompts": st.sampled_from(
            [str(bad / n) for n in ("no_json.jsonl", "no_prompt.jsonl", "bad_row.jsonl", "missing.jsonl", "folder")]
        ),
        "--out": st.just(str(bad / "a_file")),
    }
    option, value = data.draw(option_and_value(options))
    assert_refused(["analyze", "--image", str(SCENE), "--out", str(no_models / "a"), option, value])


@PROPERTY
@given(data=st.data())
def test_eval_refuses_every_bad_value(bad, no_models, data):
    options = {
        "--limit": ints(below=1),
        "--k": int_list(ints(below=1, above=DEFAULT_LAYERS - 1)),
        "--ratio": int_list(BAD_RATIO),
        "--keep": int_list(ints(below=0)),
        "--method": not_in(("fastv", "fastv_mean", "pdrop", "visionzip", "pool", "random", "uniform", "divprune")),
        "--scorer": not_in(("last_token", "random")),
        "--mode": not_in(("drop", "mask")),
        "--data": st.one_of(
            ints(below=1).map(lambda n: f"shapes:test:{n}"),
            st.sampled_from([str(bad / n) for n in ("no_json.jsonl", "bad_row.jsonl", "missing.jsonl", "folder")]),
        ),
        "--max-new-tokens": ints(below=1),
        "--dtype": not_in(DTYPES),
        "--attn": not_in(ATTN),
        "--model": bad_models(bad),
        "--out": st.just(str(bad / "a_file")),
    }
    option, value = data.draw(option_and_value(options))
    assert_refused(["eval", "--out", str(no_models / "o"), option, value])
    assert not (no_models / "o").exists()


@PROPERTY
@given(data=st.data())
def test_bench_refuses_every_bad_value(bad, no_models, data):
    options = {
        "--repeats": ints(below=1),
        "--warmup": ints(below=0),
        "--ratios": int_list(BAD_RATIO),
        "--ks": int_list(ints(below=1, above=3)),  # the image suite truncates to 4 layers
        "--model": st.one_of(bad_models(bad), not_in(("llava-1.5-7b", "video-llava-7b"))),
        "--frames": ints(below=1),
        "--new-tokens": ints(below=1),
        "--dtype": not_in(("bfloat16", "float32", "float16")),
        "--threads": ints(below=1),
        "--layers": st.one_of(ints(below=0), st.sampled_from(["1", "2"])),  # K=2 measures the overhead
        "--suite": not_in(("image", "video", "all")),
        "--name": st.sampled_from(["a/b", "../x", "", ".hidden"]),
    }
    option, value = data.draw(option_and_value(options))
    assert_refused(["bench", "--out", str(no_models / "b"), option, value])


@PROPERTY
@given(data=st.data())
def test_demo_refuses_every_bad_value(bad, no_models, data):
    pytest.importorskip("gradio")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        options = {
            "--port": st.one_of(ints(below=1, above=65535), st.just(str(busy.getsockname()[1]))),
            "--dtype": not_in(DTYPES),
            "--model": bad_models(bad),
            "--max-new-tokens": ints(below=1),
        }
        option, value = data.draw(option_and_value(options))
        assert_refused(["demo", option, value])


@PROPERTY
@given(data=st.data())
def test_flops_refuses_every_bad_value(bad, no_models, data):
    options = {
        "--k": ints(below=0, above=32),  # llava-1.5-7b has 32 layers
        "--ratio": BAD_RATIO,
        "--keep": ints(below=0),
        "--visual-tokens": ints(below=1),
        "--text-tokens": ints(below=0),
        "--frames": ints(below=1),
        "--batch": ints(below=1),
        "--budget": st.one_of(st.floats(max_value=0.0).map(repr), st.sampled_from(["nan", "x"])),
        "--scope": not_in(("total", "llm")),
        "--model": st.one_of(bad_models(bad), WORDS.filter(lambda w: "llava" not in w and "qwen" not in w)),
    }
    option, value = data.draw(option_and_value(options))
    extra = ["--budget", "0.5"] if option in ("--scope",) else []
    assert_refused(["flops", *extra, option, value])
