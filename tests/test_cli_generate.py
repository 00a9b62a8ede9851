"""`fastv generate` end to end on a tiny LLaVA saved with save_pretrained (loaded offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from tiny_processor import IMAGE_SIZE, save_tiny_llava
from typer.testing import CliRunner

from fastv.cli import _register, app


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "x.png"
    pixels = np.random.default_rng(0).integers(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def _invoke(*args: str):
    _register()
    return CliRunner().invoke(app, ["generate", *args])


def test_generate_prints_answer_and_kept(model_dir, image):
    res = _invoke("--model", str(model_dir), "--image", str(image), "--prompt", "what is it", "--max-new-tokens", "3")
    assert res.exit_code == 0, res.output
    assert "visual tokens kept 8/16" in res.output
    assert "sequence length per layer" in res.output


def test_generate_json_and_no_fastv(model_dir, image):
    common = ["--model", str(model_dir), "--image", str(image), "--prompt", "what is it", "--max-new-tokens", "3"]
    pruned = json.loads(_invoke(*common, "--k", "1", "--keep", "4", "--json").stdout)
    full = json.loads(_invoke(*common, "--no-fastv", "--json").stdout)
    assert pruned["visual_kept"] == 4 and pruned["visual_total"] == 16
    n = pruned["layer_seq_lens"][0]
    assert pruned["layer_seq_lens"] == [n] + [n - 12] * 3
    assert full["fastv"] is False and full["visual_kept"] is None


@pytest.mark.parametrize(
    "args,message",
    [
        (["--k", "9"], "--k 9: "),
        (["--ratio", "1.5"], "outside [0, 1)"),
        (["--image", "missing.png"], "does not exist"),
    ],
)
def test_generate_errors_are_readable(model_dir, image, args, message):
    base = ["--model", str(model_dir), "--prompt", "hi"]
    if "--image" not in args:
        base += ["--image", str(image)]
    res = _invoke(*base, *args)
    assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output


def test_generate_needs_an_image(model_dir):
    res = _invoke("--model", str(model_dir), "--prompt", "hi")
    assert res.exit_code == 2 and "--image" in res.output


def test_generate_with_a_composition(model_dir, image):
    """--method visionzip+fastv: VisionZip keeps 8 of 16 before the LM, FastV 4 of those at layer 2."""
    res = _invoke(
        "--model", str(model_dir), "--image", str(image), "--prompt", "what is it", "--max-new-tokens", "2",
        "--method", "visionzip+fastv", "--keep", "4", "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert record["visual_kept"] == 4 and record["visual_total"] == 16
    bad = _invoke("--model", str(model_dir), "--image", str(image), "--prompt", "x", "--method", "visionzip+pdrop")
    assert bad.exit_code == 2 and "pdrop cannot follow" in bad.output


def test_methods_lists_every_method_and_composition():
    _register()
    res = CliRunner().invoke(app, ["methods"], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    from fastv.methods import METHODS

    for name in [*METHODS, "A+B", "2410.17247", "2412.04467", "2503.02175"]:
        assert name in res.output
