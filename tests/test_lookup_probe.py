"""training/lookup_probe.py: the asked cell's patches, and per-layer attention read the way fastv's analysis reads it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from fastv.zoo.datasets import shapes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))

import lookup_probe  # noqa: E402
from model_setup import build_model_v2, build_processor  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    """A 2-layer template-prompted LLaVA with random weights, eager attention (the probe reads weights)."""
    processor = build_processor("v2")
    torch.manual_seed(0)
    model = build_model_v2(processor.tokenizer, text_layers=2, text_hidden=64, text_intermediate=128)
    model.config._attn_implementation = "eager"
    return model.eval(), processor


def test_cell_patches_are_the_patches_whose_centres_lie_in_the_cell():
    side = shapes.IMAGE_SIZE // shapes.PATCH_SIZE
    cell_px = shapes.IMAGE_SIZE // 4
    for cell in ("a1", "d1", "b3", "d4"):
        col, row = "abcd".index(cell[0]), int(cell[1]) - 1
        want = [
            r * side + c
            for r in range(side)
            for c in range(side)
            if col * cell_px <= (c + 0.5) * shapes.PATCH_SIZE < (col + 1) * cell_px
            and row * cell_px <= (r + 0.5) * shapes.PATCH_SIZE < (row + 1) * cell_px
        ]
        assert lookup_probe.cell_patches(cell).tolist() == want


def test_visual_share_matches_fastv_analyze_on_a_tiny_model(tiny):
    from fastv.analysis import attention as analysis
    from fastv.core.hf.chat import chat_text

    model, processor = tiny
    samples = shapes.eval_samples("validation", 2, ("color",), style="long")
    got = lookup_probe.probe(model, processor, samples)
    assert got["questions"] == 2 and len(got["visual_share"]) == 2
    want = torch.zeros(2)
    for s in samples:
        inputs = processor(images=s.image(), text=chat_text(processor, s.question, 1, False), return_tensors="pt")
        res = analysis.analyze(model, inputs, k=1, ratio=0.5, processor=processor)
        want += torch.as_tensor(res.share[:, analysis.GROUPS.index("visual")], dtype=torch.float32)
    torch.testing.assert_close(torch.tensor(got["visual_share"]), want / 2, atol=1e-3, rtol=0)
    assert all(0 <= v <= 1 for v in got["on_asked_cell"] + got["to_cell_word"])


def test_left_questions_are_measured_on_the_neighbour_cell_that_answers(tiny):
    """`left of b3` is answered by a3's object: the focus measure reads a3's patches, not b3's."""
    from fastv.core.hf.chat import chat_text

    model, processor = tiny
    (s,) = shapes.eval_samples("validation", 1, ("left",), style="long")
    named = s.question.split("cell ")[-1][:2]  # both long templates end with "... cell b3"
    left = "abcd"["abcd".index(named[0]) - 1] + named[1]
    got = lookup_probe.probe(model, processor, [s])
    inputs = processor(images=s.image(), text=chat_text(processor, s.question, 1, False), return_tensors="pt")
    with torch.no_grad():
        att = model(**inputs, output_attentions=True).attentions
    visual = (inputs["input_ids"][0] == model.config.image_token_id).nonzero()[:, 0]
    for layer, a in enumerate(att):
        last = a[0, :, -1]
        want = (last[:, visual[lookup_probe.cell_patches(left)]].sum(-1) / last[:, visual].sum(-1)).max()
        assert abs(got["on_asked_cell"][layer] - want.item()) < 6e-5  # the probe rounds to 4 decimals


def test_kinds_that_name_no_cell_are_refused():
    with pytest.raises(SystemExit, match="name no cell"):
        lookup_probe.main(["--model", "unused", "--kinds", "count"])
