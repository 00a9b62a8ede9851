"""`fastv demo`: the patch overlay, the compute logic (caching, readable errors) and the served app.

Runs on the tiny random LLaVA (28 px images, 4x4 = 16 visual tokens, 4 layers): answers are
gibberish, but every number and picture the page shows is checked against the library.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_processor import save_tiny_llava

from fastv.analysis import overlay
from fastv.core.errors import FastVError
from fastv.demo.logic import Demo
from fastv.demo.settings import Settings
from fastv.generate import answer
from fastv.loading import build_inputs, load_model, to_model
from fastv.methods import FastV
from fastv.zoo.default_model import EXAMPLES_DIR

EXAMPLES = EXAMPLES_DIR
SCENE = EXAMPLES / "scene_0.png"
PROMPT = "what colour is the circle ?"
PNG = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # gradio vs pandas 3, not ours


# ---- overlay: pure functions ------------------------------------------------------------------
def test_kept_grid_maps_positions_row_major():
    positions = list(range(10, 26))  # 16 visual tokens at sequence positions 10..25
    grid = overlay.kept_grid(positions, (4, 4), [10, 15, 25, 99])  # 99: another image's token
    expected = np.zeros((4, 4), dtype=bool)
    expected[0, 0] = expected[1, 1] = expected[3, 3] = True
    assert (grid == expected).all()
    with pytest.raises(ValueError):
        overlay.kept_grid(positions[:15], (4, 4), [])


def test_grey_out_greys_exactly_the_pruned_patches():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8))
    grid = np.zeros((4, 4), dtype=bool)
    grid[1, 2] = True
    out = np.asarray(overlay.grey_out(image, grid, display=112, strength=1.0, lines=False))
    assert out.shape == (112, 112, 3)  # 4x upscale, 28 px per patch
    kept = out[28:56, 56:84]
    assert (kept == np.asarray(image.resize((112, 112), Image.NEAREST))[28:56, 56:84]).all()
    pruned = np.delete(out.reshape(4, 28, 4, 28, 3).transpose(0, 2, 1, 3, 4).reshape(16, 28, 28, 3), 6, axis=0)
    assert (pruned == np.array(overlay.GREY, dtype=np.uint8)).all()


def test_unnormalize_inverts_the_processor():
    from tiny_processor import tiny_processor

    proc = tiny_processor()
    image = Image.open(SCENE).convert("RGB")
    pixels = proc.image_processor(image, return_tensors="pt")["pixel_values"][0]
    back = overlay.unnormalize(pixels, proc.image_processor.image_mean, proc.image_processor.image_std)
    again = proc.image_processor(back, return_tensors="pt")["pixel_values"][0]
    assert back.size == (28, 28)
    assert torch.allclose(pixels, again, atol=2 / 255 / 0.5)


# ---- logic: one tiny model, shared ------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("tiny") / "llava", layers=4)


@pytest.fixture(scope="module")
def demo(tiny_dir) -> Demo:
    torch.manual_seed(0)
    model, processor = load_model(str(tiny_dir))
    return Demo(model, processor, name="tiny", max_new_tokens=4, timing_repeats=1)


def test_compare_matches_the_library(demo):
    c = demo.compare(SCENE, PROMPT, Settings(k=2, ratio=0.5))
    inputs = to_model(build_inputs(demo.processor, [SCENE], PROMPT), demo.model)
    full = answer(demo.model, demo.processor, inputs, None, 4)
    fast = answer(demo.model, demo.processor, inputs, FastV(k=2, ratio=0.5), 4)
    assert (c.full_answer, c.fastv_answer) == (full.text, fast.text)
    assert (c.kept, c.total) == (8, 16)
    assert c.flops.llm_fastv < c.flops.llm_full and c.flops.theory_fastv < c.flops.theory_full
    assert c.prefill_full_s > 0 and c.prefill_fastv_s > 0
    assert c.allocation is not None and c.allocation.read_bytes().startswith(PNG)
    assert "| LLM prefill, exact |" in c.flops_markdown()
    # The greyed picture marks exactly the kept tokens' patches (28 px image, 4x4 grid, 14x upscale).
    ids = inputs["input_ids"][0]
    visual = (ids == demo.model.config.image_token_id).nonzero().squeeze(1).tolist()
    kept = set(fast.stats.kept_positions[0].tolist())
    img = np.asarray(c.masked).astype(int)
    cell = img.shape[0] // 4
    for i, pos in enumerate(visual):
        r, col = divmod(i, 4)
        patch = img[r * cell + 2 : (r + 1) * cell - 2, col * cell + 2 : (col + 1) * cell - 2]
        greyish = np.abs(patch - np.array(overlay.GREY)).max() <= 0.2 * 255 + 1
        assert greyish != (pos in kept), f"patch {r},{col}"


def test_sliders_rerun_only_fastv(demo):
    before = dict(demo.calls)
    a = demo.compare(SCENE, "shape", Settings(k=2, ratio=0.5))
    b = demo.compare(SCENE, "shape", Settings(k=1, ratio=0.75))
    c = demo.compare(SCENE, "shape", Settings(k=1, ratio=0.75, scorer="random"))
    d = demo.compare(SCENE, "shape", Settings(k=1, ratio=0.75))  # seen before: nothing runs
    assert demo.calls["full"] - before["full"] == 1
    assert demo.calls["fastv"] - before["fastv"] == 3
    assert not a.full_cached and b.full_cached and c.full_cached and d.full_cached
    assert (b.kept, d.kept) == (4, 4) and b.fastv_answer == d.fastv_answer
    assert a.full_answer == b.full_answer == c.full_answer


@pytest.mark.parametrize(
    ("image", "prompt", "settings", "words"),
    [
        (None, PROMPT, Settings(), "upload an image"),
        (Path(__file__), PROMPT, Settings(), "could not read"),
        (SCENE, PROMPT, Settings(k=9), "k=9 is out of range"),  # the method's own check against the model
        (SCENE, PROMPT, Settings(k=0), "k=0 leaves no layer"),
        (SCENE, PROMPT, Settings(method="nope"), "unknown method 'nope'"),
        (SCENE, PROMPT, Settings(method="pool", keep=5), "pool"),  # 5 is no sub-grid of 4x4
        (SCENE, "  ", Settings(), "type a prompt"),
        (SCENE, PROMPT, Settings(ratio=1.5), "ratio"),
    ],
)
def test_bad_input_gives_a_message(demo, image, prompt, settings, words):
    result, message = demo.safe_compare(image, prompt, settings)
    assert result is None and words in message and "Traceback" not in message
    assert demo.safe_compare(SCENE, PROMPT, Settings())[0] is not None  # still serving


@pytest.mark.parametrize(("method", "keep"), [("pool", 4), ("pdrop", 8), ("visionzip+fastv", 4), ("divprune", None)])
def test_any_method_against_the_cached_full_model(demo, method, keep):
    """The method choice: its answer and kept tokens are the library's; the full model's answer stays cached."""
    from fastv import make

    demo.compare(SCENE, "count red", Settings())  # the full model runs once for this prompt
    before = dict(demo.calls)
    settings = Settings(method=method, keep=keep, ratio=0.5)
    c = demo.compare(SCENE, "count red", settings)
    assert c.full_cached and demo.calls["full"] == before["full"] and demo.calls["fastv"] == before["fastv"] + 1
    inputs = to_model(build_inputs(demo.processor, [SCENE], "count red"), demo.model)
    budget = {"keep": keep} if keep is not None else {"ratio": 0.5}
    expected = answer(demo.model, demo.processor, inputs, make(method, **budget), 4)
    assert c.fastv_answer == expected.text and c.kept == sum(expected.stats.num_kept)
    assert c.method.startswith(method) and f"| {c.method} |" in c.flops_markdown()
    assert c.flops.llm_fastv == expected.stats.flops["pruned"] < c.flops.llm_full


def test_settings_parse_method_and_keep():
    assert Settings.parse(2, 0.5, "last_token", "pool", 64.0) == Settings(2, 0.5, "last_token", "pool", 64)
    assert Settings.parse(2, 0.5, "last_token", "fastv", "").keep is None
    with pytest.raises(FastVError, match="keep=2.5"):
        Settings.parse(2, 0.5, "last_token", "pool", 2.5)


def test_video_is_read_as_frames_and_refused_by_an_image_model(demo, tmp_path):
    from fastv.demo.uploads import read_video

    frames = [Image.new("RGB", (28, 28), (40 * i, 0, 0)) for i in range(5)]
    gif = tmp_path / "clip.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=40)
    got = read_video(gif, frames=3)
    assert len(got) == 3 and got[0].getpixel((0, 0))[0] < got[-1].getpixel((0, 0))[0]
    result, message = demo.safe_compare(None, PROMPT, Settings(), video=gif)
    assert result is None and "not videos" in message


def test_cli_registers_demo():
    from fastv.cli import _register, app

    _register()
    assert "demo" in {c.name or c.callback.__name__ for c in app.registered_commands}


# ---- the served app, driven through gradio_client ---------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(demo):
    """The app on a free localhost port, in this process; yields (url, demo)."""
    from fastv.demo.app import serve

    port = free_port()
    page = serve(demo, host="127.0.0.1", port=port, block=False)
    yield f"http://127.0.0.1:{port}/", demo
    page.close()


def _submit(client, image, prompt=PROMPT, k=2, ratio=0.5, scorer="last_token", method="fastv", keep=None):
    from gradio_client import handle_file

    image = handle_file(str(image)) if image is not None else None
    return client.predict(image, None, prompt, k, ratio, scorer, method, keep, api_name="/compare")


def test_client_submit_returns_answers_kept_and_png(server):
    from gradio_client import Client

    url, demo = server
    message, full, fast, kept, flops, masked, chart = _submit(Client(url, verbose=False), SCENE)
    expected = demo.compare(SCENE, PROMPT, Settings(k=2, ratio=0.5))
    assert "error" not in message
    assert (full, fast) == (expected.full_answer or "(empty answer)", expected.fastv_answer or "(empty answer)")
    assert kept.startswith("8 / 16")
    assert "LLM prefill" in flops
    assert Path(masked).read_bytes().startswith(PNG) and Path(chart).read_bytes().startswith(PNG)
    assert Image.open(masked).size == expected.masked.size


def test_client_bad_input_shows_a_message_and_keeps_serving(server, tmp_path):
    from gradio_client import Client

    url, _ = server
    client = Client(url, verbose=False)
    junk = tmp_path / "not_an_image.png"
    junk.write_bytes(b"this is text, not a PNG")
    assert "could not read" in _submit(client, junk)[0]
    assert "upload an image" in _submit(client, None)[0]
    assert "k=99 is out of range" in _submit(client, SCENE, k=99)[0]
    assert _submit(client, SCENE)[3].startswith("8 / 16")
    assert _submit(client, SCENE, method="pool", keep=4)[3].startswith("4 / 16")  # the method dropdown + budget


def test_two_tabs_at_once_both_get_answers(server):
    from gradio_client import Client

    url, _ = server
    results: dict[int, tuple] = {}

    def tab(i: int) -> None:
        results[i] = _submit(Client(url, verbose=False), EXAMPLES / f"scene_{i + 1}.png", ratio=0.25 * (i + 1))

    threads = [threading.Thread(target=tab, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == [0, 1]
    assert results[0][3].startswith("12 / 16") and results[1][3].startswith("8 / 16")


def test_default_model_answers_an_example():
    """The shipped model, as `fastv demo` serves it: the full answer is the example's answer."""
    import json

    from fastv.zoo.default_model import has_default_weights

    if not has_default_weights():
        pytest.skip("default model weights not shipped yet")
    example = json.loads((EXAMPLES / "examples.json").read_text())["examples"][0]
    model, processor = load_model("default")
    c = Demo(model, processor, "default", max_new_tokens=4, timing_repeats=1).compare(
        EXAMPLES / example["image"], example["prompt"], Settings(k=2, ratio=0.5)
    )
    assert c.full_answer == example["answer"]
    assert (c.kept, c.total) == (72, 144)
    assert c.masked.size == (384, 384)  # 96 px at 4x: 12x12 patches of 32 px
