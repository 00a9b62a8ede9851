"""Composition "pre+llm" (e.g. visionzip+fastv): one schedule, one budget split rule, clear refusals."""

from __future__ import annotations

import pytest
import torch
from tiny_llava import IMAGE_TOKEN, batch, prompt, tiny_llava

from fastv import FastVError
from fastv.eval.settings import method_grid
from fastv.methods import make
from fastv.methods.accounting import visual_tokens_per_layer

PROMPTS = [prompt(5, 7, images=1, seed=1), prompt(3, 4, images=1, seed=2)]


@pytest.fixture(scope="module")
def model():
    return tiny_llava("sdpa", layers=4)


def test_visionzip_then_fastv_is_one_schedule(model):
    """pre_keep defaults to 2 x keep per image; FastV keeps `keep` of those at layer k; generation runs."""
    inputs = batch(PROMPTS)
    with make("visionzip+fastv", keep=4).apply(model) as handle:
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=[IMAGE_TOKEN])
    stats = handle.stats
    assert stats.stage_kept == [[8, 8], [4, 4]]
    width = inputs["input_ids"].shape[1]
    assert stats.layer_seq_lens == [width - 8] * 2 + [width - 12] * 2  # 16 -> 8 before the LM, -> 4 at k=2
    assert out.shape == (2, width + 3)
    assert visual_tokens_per_layer(make("visionzip+fastv", keep=4), 4, 16) == [8, 8, 4, 4]
    with make("visionzip", keep=8).apply(model) as alone:
        model(**inputs)
    for b in range(2):  # FastV chose among VisionZip's tokens
        assert set(stats.kept_positions[b].tolist()) <= set(alone.stats.kept_positions[b].tolist())


def test_divprune_then_fastv_drop_equals_mask(model):
    inputs = batch(PROMPTS)
    outs = []
    for mode in ("drop", "mask"):
        with make("divprune+fastv", keep=3, pre_keep=9, k=1, mode=mode).apply(model):
            outs.append((model(**inputs).logits[:, -1], model.generate(**inputs, max_new_tokens=3, do_sample=False)))
    assert (outs[0][0] - outs[1][0]).abs().max() < 1e-4 and torch.equal(outs[0][1], outs[1][1])


def test_composition_refusals(model):
    with pytest.raises(FastVError, match="pdrop cannot follow"):
        make("visionzip+pdrop", keep=8)
    with pytest.raises(FastVError, match="give keep"):
        make("visionzip+fastv", ratio=0.5)
    with pytest.raises(FastVError, match="unknown method 'tome'"):
        make("tome+fastv", keep=4)
    with pytest.raises(FastVError, match="compose exactly two"):
        make("visionzip+divprune+fastv", keep=4)
    with pytest.raises(FastVError, match="must cut before the language model"):
        make("fastv+fastv", keep=4).apply(model)
    with pytest.raises(FastVError, match="must cut inside the language model"):
        make("visionzip+divprune", keep=4).apply(model)
    with pytest.raises(FastVError, match="pre_keep=3 is below keep=4"):
        make("divprune+fastv", keep=4, pre_keep=3)


def test_composition_in_the_eval_grid():
    names = [s.name for s in method_grid(["visionzip+fastv"], [48], [])]
    assert names == ["full", "visionzip+fastv k=2 keep=48"]
