"""The token-reduction methods on one engine: each against a plain reference, budgets, drop == mask,
cached generation, padded batches, FLOPs, and clear refusals."""

from __future__ import annotations

import pytest
import torch
from tiny_families import gemma3, qwen2_vl
from tiny_llava import GRID, IMAGE_TOKEN, batch, input_embeds, prompt, run_method, tiny_llava

from fastv import FastVError, flops
from fastv.core.errors import UnsupportedModelError
from fastv.methods import PDrop, make
from fastv.methods.accounting import visual_tokens_per_layer
from fastv.methods.pdrop import pyramid

N = GRID * GRID  # 16 visual tokens per image, 4x4
PROMPTS = [prompt(5, 7, images=2, seed=1), prompt(3, 4, images=1, seed=2)]
SETTINGS = {
    "random": dict(keep=5, seed=3),
    "uniform": dict(keep=8),
    "pool": dict(keep=4),
    "pdrop": dict(keep=8),
    "visionzip": dict(keep=6),
    "divprune": dict(keep=5),
}
PRE_LM = ["random", "uniform", "pool", "visionzip", "divprune"]


@pytest.fixture(scope="module")
def model():
    return tiny_llava(layers=4)


@pytest.fixture(scope="module")
def inputs():
    return batch(PROMPTS)


def _images(ids: torch.Tensor) -> list[torch.Tensor]:
    """Positions of each image's 16 tokens in one row of input ids."""
    pos = (ids == IMAGE_TOKEN).nonzero().squeeze(1)
    return list(pos.split(N))


def _capture_layer0(model, seen: dict):
    def hook(module, args, kwargs):
        seen.setdefault("h", (args[0] if args else kwargs["hidden_states"]).clone())

    return model.model.language_model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)


def _layer0_input(model, method, inputs):
    """Run a prefill with `method`; return its stats and the hidden rows entering decoder layer 0."""
    seen: dict = {}
    with method.apply(model) as handle:
        hook = _capture_layer0(model, seen)  # registered after the engine's: sees the pruned rows
        try:
            model(**inputs)
        finally:
            hook.remove()
    return handle.stats, seen["h"]


# ---------------------------------------------------------------------------- references


def test_random_matches_reference(model, inputs):
    stats, _ = _layer0_input(model, make("random", keep=5, seed=3), inputs)
    for b in range(2):
        expected = []
        for j, pos in enumerate(_images(inputs["input_ids"][b])):
            u = torch.rand(N, generator=torch.Generator().manual_seed(3 * 65537 + j))
            expected += pos[u.topk(5).indices].tolist()
        assert stats.kept_positions[b].tolist() == sorted(expected)


@pytest.mark.parametrize(
    ("keep", "cells"), [(4, [5, 7, 13, 15]), (8, [1, 3, 5, 7, 9, 11, 13, 15]), (16, list(range(16)))]
)
def test_uniform_matches_reference(model, inputs, keep, cells):
    stats, _ = _layer0_input(model, make("uniform", keep=keep), inputs)
    for b in range(2):
        expected = [int(pos[c]) for pos in _images(inputs["input_ids"][b]) for c in cells]
        assert stats.kept_positions[b].tolist() == expected


def test_pool_matches_reference(model, inputs):
    full = input_embeds(model, inputs)
    stats, h = _layer0_input(model, make("pool", keep=4), inputs)
    index = stats.kept_sequence_index
    for b in range(2):
        expected_pos = []
        for pos in _images(inputs["input_ids"][b]):
            grid = full[b, pos].view(GRID, GRID, -1)
            for r in (0, 2):
                for c in (0, 2):
                    row = (index[b] == pos[r * GRID + c]).nonzero().item()
                    want = grid[r : r + 2, c : c + 2].reshape(4, -1).mean(0)
                    assert torch.allclose(h[b, row], want, atol=1e-6)
                    expected_pos.append(int(pos[r * GRID + c]))
        assert stats.kept_positions[b].tolist() == expected_pos


# The selection rules of pdrop, visionzip and divprune: tests/test_official_rules.py (official code).


# ---------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("budget", ["keep", "ratio"])
def test_exact_budget_per_image(model, inputs, name, budget):
    settings = dict(SETTINGS[name])
    if budget == "ratio":
        settings.pop("keep")
        settings["ratio"] = 0.75  # 16 -> 4 per image (pdrop: 4 per layer on average)
    stats, _ = _layer0_input(model, make(name, **settings), inputs)
    per_image = settings.get("keep", 4)
    if name == "pdrop":
        per_image = PDrop(**settings).schedule(N, 4)[-1]
    assert stats.num_kept == [2 * per_image, per_image]
    assert [len(p) for p in stats.kept_positions] == [2 * per_image, per_image]


@pytest.mark.parametrize(("keep", "layers"), [(8, None), (5, (1, 2, 3)), (4, (1, 3)), (16, None), (11, (1, 2))])
def test_pdrop_layer_average_is_the_budget(model, keep, layers):
    """Visual tokens summed over the layers == keep x layers x images, from the measured lengths."""
    one = batch([PROMPTS[0]])
    text = len(PROMPTS[0]) - 2 * N
    with PDrop(keep=keep, layers=layers).apply(model) as handle:
        model(**one)
    lens = handle.stats.layer_seq_lens
    assert sum(n - text for n in lens) == keep * 4 * 2


def test_pyramid_schedules():
    assert pyramid(576, 270, (8, 16, 24), 32) == (288, 144, 72)  # the paper's lambda = 0.5
    for keep in (192, 128, 64):
        s = pyramid(576, keep, (2, 6, 12), 32)
        assert 2 * 576 + 4 * s[0] + 6 * s[1] + 20 * s[2] == keep * 32 and 576 >= s[0] >= s[1] >= s[2]
    with pytest.raises(FastVError, match=r"feasible: 144\.\.576"):
        pyramid(576, 128, (8, 16, 24), 32)


# ---------------------------------------------------------------------------- drop == mask, generation


@pytest.mark.parametrize(
    ("name", "settings"),
    [("random", dict(keep=5)), ("random", dict(keep=5, k=2)), ("uniform", dict(keep=4, k=1)),
     ("divprune", dict(keep=5)), ("pdrop", dict(keep=8))],
)  # fmt: skip
def test_drop_equals_mask(model, inputs, name, settings):
    ld, sd, lens, stats = run_method(model, make(name, **settings), inputs)
    lm, sm, lens_m, _ = run_method(model, make(name, mode="mask", **settings), inputs)
    assert (ld - lm).abs().max() < 1e-4 and torch.equal(sd, sm)
    assert lens == [n + 4 for n in stats.layer_seq_lens] and lens_m == [inputs["input_ids"].shape[1] + 4] * 4


@pytest.mark.parametrize("name", PRE_LM)
def test_cached_generation_equals_uncached(model, inputs, name):
    """Pre-LM selections ignore the text, so re-pruning the whole sequence each step must agree."""
    _, cached, lens, stats = run_method(model, make(name, **SETTINGS[name]), inputs, new=3)
    _, uncached, _, _ = run_method(model, make(name, **SETTINGS[name]), inputs, new=3, use_cache=False)
    assert torch.equal(cached, uncached)
    assert lens == [stats.layer_seq_lens[0] + 2] * 4  # layer 0 already holds only the kept tokens


@pytest.mark.parametrize("name", list(SETTINGS))
def test_padded_batch_equals_batch_of_one(model, inputs, name):
    with make(name, **SETTINGS[name]).apply(model) as handle:
        logits = model(**inputs).logits[:, -1]
        both = handle.stats.kept_positions
        width = inputs["input_ids"].shape[1]
        for b, p in enumerate(PROMPTS):
            single = batch([p], seed=0)
            first = sum(len(_images(torch.tensor(q))) for q in PROMPTS[:b])
            single["pixel_values"] = inputs["pixel_values"][first : first + len(_images(torch.tensor(p)))]
            one = model(**single).logits[:, -1]
            assert torch.allclose(one[0], logits[b], atol=1e-4)
            assert (handle.stats.kept_positions[0] + width - len(p)).tolist() == both[b].tolist()


# ---------------------------------------------------------------------------- FLOPs


@pytest.mark.parametrize("name", list(SETTINGS))
def test_flops_cover_every_method(model, name):
    """Per-layer lengths are exact and the prefill count matches torch's FlopCounterMode."""
    one = batch([PROMPTS[0]])
    text = len(PROMPTS[0]) - 2 * N
    method = make(name, **SETTINGS[name])
    with method.apply(model) as handle, flops.flop_counter() as counter:
        model(**one, logits_to_keep=1)
    lens = handle.stats.layer_seq_lens
    if name == "pdrop":
        s = method.schedule(N, 4)
        assert lens == [text + 2 * N, text + 2 * s[0], text + 2 * s[1], text + 2 * s[2]]
    else:
        assert lens == [text + 2 * SETTINGS[name]["keep"]] * 4
    assert lens == [text + 2 * v for v in visual_tokens_per_layer(method, 4, N)]  # predicted without running
    vision = flops.vision_flops(model.config, n_visual=2 * N)
    predicted = vision.tower + vision.projector + flops.prefill_flops(model.config.text_config, lens)
    if name == "pdrop":  # each cut first runs its layer's attention block on the pre-cut rows (own-layer scores)
        d, q, kv = 64, 64, 32  # tiny LLaVA: hidden 64, 4 query heads and 2 kv heads of 16
        predicted += sum(2 * n * d * (2 * q + 2 * kv) + 4 * n * n * q for n in lens[:3])
    assert counter.get_total_flops() == pytest.approx(predicted, rel=0.01)  # rest: the methods' own scoring


# ---------------------------------------------------------------------------- refusals


def test_refusals(model):
    with pytest.raises(FastVError, match="unknown method 'tome'.*divprune"):
        make("tome")
    with pytest.raises(FastVError, match="has no setting k"):
        make("pool", keep=4, k=2)
    assert make("pool", keep=4, k=None).keep == 4  # None means "not given"
    with pytest.raises(FastVError, match="rows x cols"):
        make("pool", keep=7).apply(model)  # 7 = 7x1: no sub-grid of 4x4
    with pytest.raises(FastVError, match="merges tokens"):
        make("pool", keep=4, mode="mask").apply(model)
    with pytest.raises(FastVError, match="feasible: 4..16"):
        make("pdrop", keep=3).apply(model)  # layer 0 alone already averages 16/4 = 4
    with pytest.raises(FastVError, match="cannot keep 17"):
        with make("divprune", keep=17).apply(model):
            model(**batch([PROMPTS[1]]))
    qwen, _ = qwen2_vl()
    for name in ("pool", "uniform", "visionzip"):
        with pytest.raises(UnsupportedModelError, match="LLaVA-1.5"):
            make(name, keep=4).apply(qwen)
    make("pdrop", ratio=0.5, layers=(1, 2)).apply(gemma3()[0]).remove()  # several cuts work on Gemma3 too
