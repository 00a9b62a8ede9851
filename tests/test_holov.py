"""HoloV against a transcription of its official LLaVA selection, its budget, and drop == mask."""

from __future__ import annotations

import pytest
import torch
from tiny_families import qwen2_vl
from tiny_llava import GRID, IMAGE_TOKEN, batch, prompt, run_method, tiny_llava

from fastv import FastVError
from fastv.core.errors import UnsupportedModelError
from fastv.methods import make
from fastv.methods.accounting import visual_tokens_per_layer
from fastv.methods.holov import allocate, region_score

N = GRID * GRID
PROMPTS = [prompt(5, 7, images=2, seed=1), prompt(3, 4, images=1, seed=2)]


def official_holov(image_token, image_attention, num_patches, new_image_token_num, alpha=0.09, esp=1e-6):
    """obananas/HoloV `HoloV` (llava/model/utils.py) for one image, returning the kept token indices.

    Read from the official source; the one change is returning indices (patch offset + topk index)
    where the code returns the tokens, and None where the code would pad with zero vectors.
    """
    n = image_token.shape[0]
    patch_size, remainder = n // num_patches, n % num_patches
    bounds, start = [], 0
    for p in range(num_patches):
        size = patch_size + (1 if p < remainder else 0)
        if size > 0:
            bounds.append((start, start + size))
        start += size
    scores = []
    for s, e in bounds:
        tokens, attn, size = image_token[s:e], image_attention[s:e], e - s
        if size <= 1:
            scores.append(attn.mean())
            continue
        f = tokens / (tokens.norm(dim=1, keepdim=True) + esp)
        sim = torch.mm(f, f.t()) * (1 - torch.eye(size))
        mean_sim = sim.sum(dim=1) / (size - 1)
        var_sim = ((sim - mean_sim.unsqueeze(1)) ** 2).sum(dim=1) / (size - 1)
        attn_scaled = attn * 1e3
        var_scaling = torch.mean(torch.abs(attn_scaled)) / (torch.mean(torch.abs(var_sim)) + esp)
        scores.append((attn_scaled + alpha * var_sim * var_scaling).mean())
    scores = torch.stack(scores)
    weights = scores / (scores.sum() + esp)
    allocated = (weights * new_image_token_num).floor().long()
    remaining = new_image_token_num - allocated.sum()
    if remaining > 0:
        _, indices = torch.topk(weights, k=min(remaining.item(), len(weights)))
        for idx in indices[:remaining]:
            allocated[idx] += 1
    kept = []
    for (s, e), alloc in zip(bounds, allocated, strict=True):
        if alloc <= 0:
            continue
        if alloc >= e - s:
            kept += list(range(s, e))
        else:
            kept += (s + torch.topk(image_attention[s:e], k=int(alloc)).indices).tolist()
    return sorted(kept) if len(kept) == new_image_token_num else None


def _signals(pixel_values):
    """Independently of fastv: eager [CLS] attention (head mean) and projected features per image."""
    eager = tiny_llava("eager", layers=4)  # same seed as the model under test: same weights
    with torch.no_grad():
        out = eager.model.vision_tower(pixel_values, output_attentions=True, output_hidden_states=True)
        attention = out.attentions[-1][:, :, 0, 1:].mean(1)  # vision_feature_layer = -1
        features = eager.model.multi_modal_projector(out.hidden_states[-1][:, 1:])
    return attention, features


@pytest.mark.parametrize(("regions", "keep", "alpha"), [(4, 6, 0.09), (4, 9, 0.09), (3, 7, 0.09), (5, 8, 0.09)])
def test_holov_matches_official_rule(regions, keep, alpha):
    model, inputs = tiny_llava(layers=4), batch(PROMPTS)
    attention, features = _signals(inputs["pixel_values"])
    with make("holov", keep=keep, regions=regions, alpha=alpha).apply(model) as handle:
        model(**inputs)
    number, compared = 0, 0
    for b in range(2):
        pos = (inputs["input_ids"][b] == IMAGE_TOKEN).nonzero().squeeze(1).split(N)
        kept = handle.stats.kept_positions[b].tolist()
        for p in pos:
            mine = [i for i, q in enumerate(p.tolist()) if q in kept]
            expected = official_holov(features[number], attention[number], regions, keep, alpha)
            if expected is not None:  # the official code pads with zero vectors here (see test below)
                assert mine == expected
                compared += 1
            assert len(mine) == keep
            number += 1
    assert compared >= 2


def test_official_region_score_is_scaled_mean_attention():
    """A property of the official code: c is per region, so mean(alpha * c * var) = alpha * mean(a)."""
    g = torch.Generator().manual_seed(3)
    for n in (2, 5, 36):
        x, a = torch.randn(n, 8, generator=g), torch.rand(n, generator=g)
        assert region_score(x, a, 0.09).item() == pytest.approx(1.09e3 * a.mean().item(), rel=1e-5)


def test_holov_overflow_keeps_exactly_keep():
    """A region allotted more than it holds: the excess goes to the regions with room, by weight."""
    # official: floor(w * 9) = [7, 0, 0, 0], +1 to the two largest w -> [8, 1, 0, 0]; region 0 holds 4
    assert allocate(torch.tensor([10.0, 1.2, 1.0, 0.5]), [4, 4, 4, 4], 9) == [4, 4, 1, 0]
    assert allocate(torch.tensor([1.0, 1.0, 1.0, 1.0]), [4, 4, 4, 4], 8) == [2, 2, 2, 2]
    assert allocate(torch.zeros(3), [2, 2, 2], 5) == [2, 2, 1]


@pytest.mark.parametrize("budget", [dict(keep=6), dict(ratio=0.75)])
def test_holov_budget_and_accounting(budget):
    model, method = tiny_llava(layers=4), make("holov", regions=4, **budget)
    with method.apply(model) as handle:
        model(**batch(PROMPTS))
    per_image = budget.get("keep", 4)
    assert handle.stats.num_kept == [2 * per_image, per_image]
    with method.apply(model) as handle:
        model(**batch([PROMPTS[0]]))
    text = len(PROMPTS[0]) - 2 * N
    assert visual_tokens_per_layer(method, 4, N) == [per_image] * 4
    assert handle.stats.layer_seq_lens == [text + 2 * per_image] * 4


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_holov_drop_equals_mask(attn):
    model, inputs = tiny_llava(attn, layers=4), batch(PROMPTS)
    ld, sd, _, stats = run_method(model, make("holov", keep=6, regions=4), inputs)
    lm, sm, _, stats_m = run_method(model, make("holov", keep=6, regions=4, mode="mask"), inputs)
    assert [p.tolist() for p in stats.kept_positions] == [p.tolist() for p in stats_m.kept_positions]
    assert (ld - lm).abs().max() < 1e-4 and torch.equal(sd, sm)


def test_holov_refusals():
    with pytest.raises(UnsupportedModelError, match="LLaVA-1.5"):
        make("holov", keep=4).apply(qwen2_vl()[0])
    with pytest.raises(FastVError, match="regions=0"):
        make("holov", regions=0)
    model = tiny_llava(layers=4)
    with pytest.raises(FastVError, match="cannot keep 17"):
        with make("holov", keep=17).apply(model):
            model(**batch([PROMPTS[1]]))
    before = model.config.vision_config._attn_implementation
    make("holov", keep=4).apply(model).remove()
    assert model.config.vision_config._attn_implementation == before
