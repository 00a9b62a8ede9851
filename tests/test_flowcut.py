"""FlowCut against a transcription of its official CLIP encoder loop, its budget, and drop == mask."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_families import qwen2_vl
from tiny_llava import IMAGE_TOKEN, left_pad, run_method, tiny_llava
from transformers import LlavaForConditionalGeneration

from fastv import FastVError
from fastv.core.errors import UnsupportedModelError
from fastv.methods import make
from fastv.methods.accounting import visual_tokens_per_layer

SIDE = 6
N = SIDE * SIDE  # 42 px / patch 7: 36 patches per image


def flow_llava(attn: str = "sdpa", seed: int = 0) -> LlavaForConditionalGeneration:
    """A tiny LLaVA whose 6-layer tower projects layer -2 (as LLaVA-1.5) with peaked attention."""
    model = tiny_llava(attn, seed=seed, image_size=42, vision_layers=6, feature_layer=-2)
    with torch.no_grad():  # random init attends almost uniformly; sharpen it so the adaptive counts move
        for layer in getattr(model.model.vision_tower, "vision_model", model.model.vision_tower).encoder.layers:
            layer.self_attn.q_proj.weight.mul_(6.0)
            layer.self_attn.k_proj.weight.mul_(6.0)
    return model


def flow_batch(images: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    prompts = []
    for count in images:
        ids = torch.randint(1, IMAGE_TOKEN, (4,), generator=g).tolist()
        for _ in range(count):
            ids += [IMAGE_TOKEN] * N + torch.randint(1, IMAGE_TOKEN, (2,), generator=g).tolist()
        prompts.append(ids + torch.randint(1, IMAGE_TOKEN, (3,), generator=g).tolist())
    out = left_pad(prompts)
    out["pixel_values"] = torch.randn(sum(images), 3, 42, 42, generator=g)
    return out


def compute_score(cls_attn, semantic_attn, value):
    """TungChintao/FlowCut utils_flowcut.compute_score."""
    relation_score = cls_attn / cls_attn.sum(dim=-1, keepdim=True)
    semantic_score = semantic_attn / semantic_attn.sum(dim=-1, keepdim=True)
    return (relation_score + semantic_score) * torch.norm(value, p=1, dim=-1)


def adaptive_prune_ratio(attn, rpl, target_num):
    """TungChintao/FlowCut utils_flowcut.adaptive_prune_ratio."""
    n = attn.shape[-1]
    prob = attn / attn.sum(dim=-1, keepdim=True)
    entropy = -torch.sum(prob * torch.log(prob), dim=-1)
    entropy_ratio = entropy / math.log(n)
    r = (n - target_num) / rpl**0.5 * (1 - entropy_ratio**2)
    if r.shape[0] > 1:
        r = r.max(0).values
    return int(r.round())


def official_flowcut(tower, pixel_values, target_num):
    """The official CLIPEncoder/CLIPEncoderLayer loop (modeling_clip_flowcut.py), eager attention by hand.

    Returns the kept patch indices (n, target_num), the projected-layer features and the per-layer counts.
    """
    vm = getattr(tower, "vision_model", tower)
    h = vm.pre_layrnorm(vm.embeddings(pixel_values))
    layers = vm.encoder.layers
    select_layer, target = len(layers) - 2, target_num + 1
    all_keep = torch.arange(h.shape[1]).unsqueeze(0).expand(h.shape[0], -1)
    cumulative, states, counts = None, [], []
    for idx, layer in enumerate(layers):
        rpl = select_layer - idx - 1
        states.append(h)
        attn = layer.self_attn
        x = layer.layer_norm1(h)
        shape = (*x.shape[:2], attn.num_heads, attn.head_dim)
        q = (attn.q_proj(x) * attn.scale).view(shape).transpose(1, 2)
        k = attn.k_proj(x).view(shape).transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)  # (B, H, T, d)
        weights = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        semantic = torch.softmax(v[:, :, :1] @ v.transpose(-1, -2), dim=-1)[:, :, 0].mean(1)  # (B, T)
        v_metric = v.mean(1)
        h = layer(h, None)
        h = h[0] if isinstance(h, tuple) else h
        if h.shape[1] > target:
            cls_attention = weights[:, :, 0, 1:].mean(dim=1)
            scores = compute_score(cls_attention, semantic[:, 1:], v_metric[:, 1:])
            cumulative = scores.clone() if cumulative is None else 0.5 * cumulative + 0.5 * scores
            if not rpl % 2:
                prune_num = adaptive_prune_ratio(cls_attention, rpl, target - 1) if rpl else h.shape[1]
                kept_num = max(h.shape[1] - prune_num, target)
                _, keep = torch.topk(cumulative, kept_num - 1, dim=1)
                keep = keep.sort(dim=1).values
                top = torch.gather(h[:, 1:, :], 1, keep.unsqueeze(-1).expand(-1, -1, h.size(-1)))
                cumulative = torch.gather(cumulative, 1, keep)
                all_keep = torch.gather(all_keep, 1, keep)
                h = torch.cat([h[:, :1, :], top], dim=1)
        counts.append(h.shape[1] - 1)
    states.append(h)
    return all_keep, states[-2][:, 1:], counts


@pytest.mark.parametrize(("images", "keep"), [([1], 8), ([1], 20), ([2, 1], 12)])
def test_flowcut_matches_official_loop(images, keep):
    model, inputs = flow_llava(), flow_batch(images)
    with torch.no_grad():
        kept, feats, counts = official_flowcut(model.model.vision_tower, inputs["pixel_values"], keep)
    assert counts[-3] == keep and counts[0] > counts[1] > keep  # the adaptive step pruned at rpl = 2
    seen = {}

    def capture(module, args, kwargs):
        seen["h"] = (args[0] if args else kwargs["hidden_states"]).detach()

    # registered before the engine's hook: it sees the full-length input embeddings
    hook = model.model.language_model.layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    try:
        with make("flowcut", keep=keep).apply(model) as handle, torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    projected = model.model.multi_modal_projector(feats)
    number = 0
    for b, count in enumerate(images):
        pos = (inputs["input_ids"][b] == IMAGE_TOKEN).nonzero().squeeze(1).split(N)
        expected = []
        for j in range(count):
            expected += pos[j][kept[number]].tolist()
            assert torch.allclose(seen["h"][b, pos[j][kept[number]]], projected[number], atol=1e-5)
            number += 1
        assert handle.stats.kept_positions[b].tolist() == expected


@pytest.mark.parametrize("budget", [dict(keep=9), dict(ratio=0.75)])
def test_flowcut_budget_and_accounting(budget):
    model, method = flow_llava(), make("flowcut", **budget)
    with method.apply(model) as handle:
        model(**flow_batch([2, 1]))
    per_image = budget.get("keep", 9)
    assert handle.stats.num_kept == [2 * per_image, per_image]
    one = flow_batch([2])
    with method.apply(model) as handle:
        model(**one)
    text = one["input_ids"].shape[1] - 2 * N
    assert visual_tokens_per_layer(method, 4, N) == [per_image] * 4
    assert handle.stats.layer_seq_lens == [text + 2 * per_image] * 4


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_flowcut_drop_equals_mask(attn):
    model, inputs = flow_llava(attn), flow_batch([2, 1])
    ld, sd, _, stats = run_method(model, make("flowcut", keep=10), inputs)
    lm, sm, _, stats_m = run_method(model, make("flowcut", keep=10, mode="mask"), inputs)
    assert [p.tolist() for p in stats.kept_positions] == [p.tolist() for p in stats_m.kept_positions]
    assert (ld - lm).abs().max() < 1e-4 and torch.equal(sd, sm)


def test_flowcut_restores_the_model():
    model, inputs = flow_llava(), flow_batch([1])
    before = model(**inputs).logits
    make("flowcut", keep=8).apply(model).remove()
    assert torch.equal(model(**inputs).logits, before)


def test_flowcut_refusals():
    with pytest.raises(UnsupportedModelError, match="LLaVA-1.5"):
        make("flowcut", keep=4).apply(qwen2_vl()[0])
    with pytest.raises(FastVError, match="keep=37 must be in 1..36"):
        make("flowcut", keep=37).apply(flow_llava())
    with pytest.raises(FastVError, match="has no setting k"):
        make("flowcut", keep=4, k=1)
    # a tower that projects its first layer's output leaves no layer to prune in: refused, not a no-op
    with pytest.raises(FastVError, match="projects its first layer's output"):
        make("flowcut", keep=4).apply(tiny_llava("eager", vision_layers=2, feature_layer=-2))
