"""DART against a transcription of its official selection rule, its budget, and drop == mask."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_families import BUILDERS
from tiny_llava import GRID, IMAGE_TOKEN, batch, prompt, run_method, tiny_llava
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

import fastv
from fastv import FastVError
from fastv.methods import make
from fastv.methods.accounting import visual_tokens_per_layer

N = GRID * GRID
PROMPTS = [prompt(5, 7, images=2, seed=1), prompt(3, 4, images=1, seed=2)]


def official_dart(state: torch.Tensor, keys: torch.Tensor, start: int, length: int, p_img: int, p_txt: int, t: int):
    """ZichenWen1/DART `get_retained_image_token`, batch 1, read from the official source.

    state: (L, H) final-normed output of layer K-1; keys: (L, heads * d) its post-RoPE keys.
    One change: pivots are visited in sorted order (the official code iterates a Python set).
    """
    img_norm = torch.norm(keys[start : start + length], p=1, dim=-1)
    txt_norm = torch.norm(keys[start + length :], p=1, dim=-1)
    image_indices = (img_norm.topk(p_img).indices + start).tolist()
    query_indices = (txt_norm.topk(p_txt).indices + start + length).tolist()
    indices_set = set(image_indices + query_indices)
    valid = set(range(start, start + length)) - set(image_indices)
    valid_list = list(valid)
    for item in sorted(indices_set):
        cos = -F.cosine_similarity(state[item], state[valid_list], dim=-1)
        real = [valid_list[i] for i in cos.topk(t).indices]
        indices_set.update(real)
        valid.difference_update(real)
        valid_list = list(valid)
    indices_set.difference_update(query_indices)
    return sorted(indices_set)


def _layer_signals(model, inputs, layer: int):
    """Independently of fastv: the final-normed output of `layer` and its post-RoPE keys (sample 0)."""
    lm = model.model.language_model
    with torch.no_grad():
        hs = model(**inputs, output_hidden_states=True).hidden_states
        x = lm.layers[layer].input_layernorm(hs[layer])
        attn = lm.layers[layer].self_attn
        length = x.shape[1]
        k = attn.k_proj(x).view(1, length, -1, attn.head_dim).transpose(1, 2)
        cos, sin = lm.rotary_emb(x, torch.arange(length)[None])
        k = apply_rotary_pos_emb(k, k, cos, sin)[1]
        state = lm.norm(hs[layer + 1])
    return state[0], k[0].transpose(0, 1).reshape(length, -1)


@pytest.mark.parametrize(("p_img", "p_txt", "t"), [(4, 4, 1), (2, 2, 2), (1, 3, 3)])
def test_dart_matches_official_rule(p_img, p_txt, t):
    model = tiny_llava(layers=4)
    norm = model.model.language_model.norm  # random init leaves it all ones, which cosine would not notice
    norm.weight.data = torch.rand(norm.weight.shape, generator=torch.Generator().manual_seed(5)) * 2
    ids = prompt(6, 5, images=1, seed=4)
    inputs = batch([ids])
    state, keys = _layer_signals(model, inputs, 1)
    start = ids.index(IMAGE_TOKEN)
    expected = official_dart(state, keys, start, N, p_img, p_txt, t)
    keep = p_img + (p_img + p_txt) * t
    with make("dart", keep=keep, pivot_image=p_img, pivot_text=p_txt).apply(model) as handle:
        model(**inputs)
    assert len(expected) == keep
    assert handle.stats.kept_positions[0].tolist() == expected


def test_dart_budget_split_when_not_a_multiple():
    """keep - pivot_image not a multiple of the pivots: still exactly `keep` kept (the official code cannot)."""
    model, ids = tiny_llava(layers=4), prompt(6, 5, images=1, seed=4)
    inputs = batch([ids])
    kept = {}
    for keep in (12, 13):  # 4 + 8*1, then one pivot takes one more
        with make("dart", keep=keep).apply(model) as handle:
            model(**inputs)
        kept[keep] = set(handle.stats.kept_positions[0].tolist())
    assert len(kept[12]) == 12 and len(kept[13]) == 13


@pytest.mark.parametrize("budget", [dict(keep=6), dict(ratio=0.75)])
def test_dart_budget_and_accounting(budget):
    model, inputs = tiny_llava(layers=4), batch(PROMPTS)
    method = make("dart", **budget)
    with method.apply(model) as handle:
        model(**inputs)
    per_image = budget.get("keep", 4)
    assert handle.stats.num_kept == [2 * per_image, per_image]
    one = batch([PROMPTS[0]])
    with method.apply(model) as handle:
        model(**one)
    text = len(PROMPTS[0]) - 2 * N
    predicted = visual_tokens_per_layer(method, 4, N)
    assert predicted == [N, N, per_image, per_image]
    assert handle.stats.layer_seq_lens == [text + 2 * v for v in predicted]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("k", [1, 2])
def test_dart_drop_equals_mask(attn, k):
    model, inputs = tiny_llava(attn, layers=4), batch(PROMPTS)
    ld, sd, lens, stats = run_method(model, make("dart", keep=6, k=k), inputs)
    lm, sm, lens_m, stats_m = run_method(model, make("dart", keep=6, k=k, mode="mask"), inputs)
    assert [p.tolist() for p in stats.kept_positions] == [p.tolist() for p in stats_m.kept_positions]
    assert (ld - lm).abs().max() < 1e-4 and torch.equal(sd, sm)
    assert lens == [n + 4 for n in stats.layer_seq_lens]
    full = inputs["input_ids"].shape[1]
    assert lens[:k] == [full + 4] * k and lens_m == [full + 4] * 4


@pytest.mark.parametrize("family", ["qwen2_vl", "gemma3", "internvl"])
def test_dart_drop_equals_mask_other_families(family):
    model, inputs = BUILDERS[family]("sdpa")
    adapter = fastv.resolve(model)
    k = max(1, adapter.min_k)
    ld, sd, _, _ = run_method(model, make("dart", ratio=0.5, k=k), inputs)
    lm, sm, _, _ = run_method(model, make("dart", ratio=0.5, k=k, mode="mask"), inputs)
    assert (ld - lm).abs().max() < 1e-4 and torch.equal(sd, sm)


def test_dart_refusals():
    model = tiny_llava(layers=4)
    with pytest.raises(FastVError, match="k=0 must be >= 1"):
        make("dart", k=0)
    with pytest.raises(FastVError, match="at least one pivot"):
        make("dart", pivot_image=0, pivot_text=0)
    with pytest.raises(FastVError, match="cannot keep 17"):
        with make("dart", keep=17).apply(model):
            model(**batch([PROMPTS[1]]))
    qwen3, _ = BUILDERS["qwen3_vl"]("sdpa")
    if fastv.resolve(qwen3).min_k > 2:
        with pytest.raises(FastVError, match="deepstack"):
            make("dart", k=2).apply(qwen3)
