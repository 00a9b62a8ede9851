"""positions="original" | "contiguous": drop mode against references built without fastv's engine.

- A cut at layer 0 with contiguous positions is the plain model run on the shortened sequence (the
  official PDrop/VisionZip/DivPrune rebuild their input that way), generation included.
- A cut at layer k > 0: a teacher-forced reference runs the decoder layers by hand on the prompt plus
  the generated tokens, removes the dropped prompt tokens before layer k, and gives the rest either
  their original positions or 0, 1, 2, ...; every generation step's logits must match.
"""

from __future__ import annotations

import pytest
import torch
from tiny_families import qwen2_vl
from tiny_llava import IMAGE_TOKEN, batch, input_embeds, prompt, tiny_llava

from fastv import FastVError
from fastv.methods import make

PROMPTS = [prompt(5, 7, images=2, seed=1), prompt(3, 4, images=1, seed=2)]
NEW = 4


@pytest.fixture(scope="module")
def model():
    return tiny_llava("sdpa", layers=4)


def _generate(model, method, inputs):
    with method.apply(model) as handle:
        out = model.generate(
            **inputs, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True, output_logits=True,
            suppress_tokens=[IMAGE_TOKEN],
        )  # fmt: skip
    return out, handle.stats


@pytest.mark.parametrize("p", PROMPTS)
def test_layer0_contiguous_is_the_shortened_prompt(model, p):
    """DivPrune (official: contiguous) == the plain model generating from the kept rows' embeddings."""
    inputs = batch([p])
    out, stats = _generate(model, make("divprune", keep=5), inputs)
    kept = stats.kept_sequence_index[0]
    short = input_embeds(model, inputs)[:, kept]
    ref = model.generate(
        inputs_embeds=short, attention_mask=torch.ones(1, kept.numel(), dtype=torch.long), max_new_tokens=NEW,
        do_sample=False, return_dict_in_generate=True, output_logits=True, suppress_tokens=[IMAGE_TOKEN],
    )  # fmt: skip
    assert torch.equal(out.sequences[0, len(p) :], ref.sequences[0])
    for a, b in zip(out.logits, ref.logits, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def _teacher_forced(model, embeds, kept_prompt, prompt_len, k, contiguous):
    """Logits of every row after layer-k removal, by hand: layers < k on everything at original positions;
    from layer k on, only the kept prompt rows and all new rows, at contiguous or original positions."""
    lm = model.model.language_model
    h = embeds
    pos = torch.arange(h.shape[1])
    for i, layer in enumerate(lm.layers):
        if i == k:
            rows = torch.cat([kept_prompt, torch.arange(prompt_len, h.shape[1])])
            h = h[:, rows]
            pos = torch.arange(rows.numel()) if contiguous else pos[rows]
        h = layer(h, attention_mask=None, position_embeddings=lm.rotary_emb(h, pos[None]), position_ids=pos[None])
    return model.lm_head(lm.norm(h))[0]


@pytest.mark.parametrize("positions", ["original", "contiguous"])
@pytest.mark.parametrize(("name", "settings"), [("fastv", dict(k=2, keep=6)), ("random", dict(k=1, keep=5))])
def test_cut_after_layer0_matches_teacher_forced_reference(model, positions, name, settings):
    p = PROMPTS[0]
    inputs = batch([p])
    out, stats = _generate(model, make(name, positions=positions, **settings), inputs)
    kept = stats.kept_sequence_index[0]
    new = out.sequences[0, len(p) :]
    embeds = torch.cat([input_embeds(model, inputs), model.get_input_embeddings()(new[None])], dim=1)
    ref = _teacher_forced(model, embeds, kept, len(p), settings["k"], positions == "contiguous")
    for t, step in enumerate(out.logits):  # step t's logits come from row (kept - 1 + t)
        assert torch.allclose(step[0], ref[kept.numel() - 1 + t], atol=1e-4), t
    other = _teacher_forced(model, embeds, kept, len(p), settings["k"], positions != "contiguous")
    assert not torch.allclose(other[kept.numel() - 1 :], ref[kept.numel() - 1 :], atol=1e-3)  # it matters


@pytest.mark.parametrize("name", ["pdrop", "divprune", "fastv"])
def test_contiguous_drop_equals_mask_with_padding(model, name):
    """The masked reference renumbers the same way; left-padded batches of different kept counts agree."""
    inputs = batch(PROMPTS)
    settings = dict(keep=8) if name == "pdrop" else dict(keep=5)
    results = []
    for mode in ("drop", "mask"):
        out, _ = _generate(model, make(name, mode=mode, positions="contiguous", **settings), inputs)
        results.append(out)
    assert torch.equal(results[0].sequences, results[1].sequences)
    for a, b in zip(results[0].logits, results[1].logits, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_defaults_and_refusals(model):
    assert make("fastv").position_mode == "original"
    for name in ("pdrop", "visionzip", "divprune"):
        assert make(name, keep=4).position_mode == "contiguous"
    with pytest.raises(FastVError, match="positions='sideways'"):
        make("fastv", positions="sideways")
    qwen, _ = qwen2_vl()
    with pytest.raises(FastVError, match="multimodal RoPE"):
        make("divprune", keep=4).apply(qwen)
    make("divprune", keep=4, positions="original").apply(qwen).remove()


@pytest.mark.parametrize("family", ["gemma3", "internvl"])
def test_contiguous_two_cuts_other_families(family):
    """Per-layer-type rotary tables (Gemma3's sliding/full layers) and other text models renumber too."""
    from tiny_families import BUILDERS

    model, inputs = BUILDERS[family]("sdpa")
    results = []
    for mode in ("drop", "mask"):
        with make("pdrop", ratio=0.5, layers=(1, 2), mode=mode).apply(model):
            logits = model(**inputs).logits[:, -1]
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        results.append((logits, out))
    assert (results[0][0] - results[1][0]).abs().max() < 1e-4 and torch.equal(results[0][1], results[1][1])
