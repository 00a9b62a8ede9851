"""Each successor method against an independent transcription of its official code's selection rule.

The references below are written from the official repositories, not from fastv's code:
- PDrop: Cooperx521/PyramidDrop, llava/model/modeling_llama_pdrop.py, `pdrop_forward` + `pdrop_rank_drop`.
- VisionZip: dvlab-research/VisionZip, visionzip/clip_encoder.py (`CLIPVisionTower_VisionZip.forward`)
  and visionzip/utils.py (`CLIPAttention_forward` returns the head-mean of the raw keys as the metric).
- DivPrune: vbdi/divprune, LLaVA/llava/model/llava_arch.py, `DivPrune` + `pairwise_cosine_similarity`.
They run on a batch of one sample (as the official code does), fastv on a left-padded batch.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_llava import IMAGE_TOKEN, batch, input_embeds, prompt, tiny_llava

from fastv.methods import PDrop, make
from fastv.methods.divprune import max_min_diverse

N = 16  # visual tokens per image of the tiny LLaVA (4x4)
ONE_IMAGE = [prompt(5, 7, images=1, seed=1), prompt(3, 4, images=1, seed=2)]


@pytest.fixture(scope="module")
def model():
    return tiny_llava("sdpa", layers=4)


# ---------------------------------------------------------------------------- PDrop


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _official_pdrop(model, embeds: torch.Tensor, image_index: int, layer_list, keeps, renumber: bool) -> list[int]:
    """pdrop_forward for one sample: after decoder layer `rank_layer - 1`, pdrop_rank_drop scores with layer
    `rank_layer`'s input_layernorm, q_proj, k_proj and RoPE at the current position_ids, the last prompt
    token's row (causal mask), softmax, mean over heads, image columns, top-k, sorted; the sequence is then
    rebuilt and position_ids = arange (renumber=False: fastv's variant keeps the old position ids)."""
    lm = model.model.language_model
    h = embeds[None]
    position_ids = torch.arange(h.shape[1])[None]
    original = torch.arange(h.shape[1])  # original position of each row, to compare kept sets
    image_tokens = N
    for layer_idx, layer in enumerate(lm.layers):
        if layer_idx in layer_list:
            keep = keeps[layer_list.index(layer_idx)]
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q_len, head_dim = x.shape[1], attn.head_dim
            q = attn.q_proj(x).view(1, q_len, -1, head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(1, q_len, -1, head_dim).transpose(1, 2)
            cos, sin = lm.rotary_emb(x, position_ids)
            cos, sin = cos[:, None], sin[:, None]
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            weights = q[:, :, -1:] @ k.transpose(2, 3) / math.sqrt(head_dim)  # last row: the causal mask is 0
            weights = torch.softmax(weights.float(), dim=-1)
            avg = weights.mean(dim=1)[0, 0, image_index : image_index + image_tokens]
            top = (avg.topk(keep).indices + image_index).sort().values
            rows = torch.cat([torch.arange(image_index), top, torch.arange(image_index + image_tokens, q_len)])
            h, original = h[:, rows], original[rows]
            position_ids = torch.arange(h.shape[1])[None] if renumber else position_ids[:, rows]
            image_tokens = keep
        pe = lm.rotary_emb(h, position_ids)
        h = layer(h, attention_mask=None, position_embeddings=pe, position_ids=position_ids)
    return original[image_index : image_index + image_tokens].tolist()


@pytest.mark.parametrize("positions", ["contiguous", "original"])
def test_pdrop_official_rule(model, positions):
    """fastv's PDrop keeps what the official rank-and-drop keeps, at every cut (contiguous: the official
    positions; original: fastv's variant, transcribed with the old position ids kept)."""
    inputs = batch(ONE_IMAGE)
    method = PDrop(keep=8, positions=positions)
    assert method.position_mode == positions and PDrop(keep=8).position_mode == "contiguous"
    with method.apply(model) as handle:
        model(**inputs)
    embeds = input_embeds(model, inputs)
    cuts, keeps = method.cuts(4), method.schedule(N, 4)
    assert (cuts, keeps) == ((1, 2, 3), (9, 5, 2))
    width = inputs["input_ids"].shape[1]
    for b, p in enumerate(ONE_IMAGE):
        pad = width - len(p)
        image_index = p.index(IMAGE_TOKEN)
        expected = _official_pdrop(
            model, embeds[b, pad:], image_index, list(cuts), list(keeps), positions == "contiguous"
        )
        assert (handle.stats.kept_positions[b] - pad).tolist() == expected


def test_pdrop_official_rule_differs_from_previous_layer_scoring(model):
    """Negative control: ranking each cut by the layer before it (fastv's old PDrop) keeps other tokens."""
    inputs = batch(ONE_IMAGE)
    embeds = input_embeds(model, inputs)
    p = ONE_IMAGE[0]
    image_index = p.index(IMAGE_TOKEN)
    pad = inputs["input_ids"].shape[1] - len(p)
    own = _official_pdrop(model, embeds[0, pad:], image_index, [1, 2, 3], [9, 5, 2], True)
    shifted = _official_pdrop(model, embeds[0, pad:], image_index, [0, 1, 2], [9, 5, 2], True)
    assert own != shifted


# ---------------------------------------------------------------------------- DivPrune


def _official_divprune(x: torch.Tensor, k: int) -> list[int]:
    """DivPrune(): distance 1 - cosine similarity; pick 0 maximises each column's second-smallest distance
    (topk(2, largest=False)[1]); pick i maximises the column-wise min over the picked rows; argmax ties go to
    the first index. Plain Python over the distance matrix."""
    unit = x.float() / x.float().norm(dim=1, keepdim=True)
    dist = (1.0 - unit @ unit.T).tolist()
    n = len(dist)
    picked: list[int] = []
    for i in range(k):
        if i == 0:
            scores = [sorted(dist[r][j] for r in range(n))[1] for j in range(n)]
        else:
            scores = [min(dist[r][j] for r in picked) for j in range(n)]
        picked.append(max(range(n), key=lambda j: (scores[j], -j)))  # first index among equal maxima
    return picked


def test_divprune_official_rule_hand_made_ties():
    axes = torch.cat([torch.eye(3), -torch.eye(3)])  # distances exactly 0, 1 or 2: ties everywhere
    assert _official_divprune(axes, 4) == [0, 3, 1, 2]
    assert max_min_diverse(axes, 4).tolist() == [0, 3, 1, 2]
    dup = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # two identical tokens
    assert max_min_diverse(dup, 3).tolist() == _official_divprune(dup, 3) == [2, 0, 3]
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(20, 8, generator=g)
        assert max_min_diverse(x, 7).tolist() == _official_divprune(x, 7)


def test_divprune_official_rule_on_the_model(model):
    inputs = batch(ONE_IMAGE)
    full = input_embeds(model, inputs)
    with make("divprune", keep=5).apply(model) as handle:
        model(**inputs)
    for b in range(2):
        pos = (inputs["input_ids"][b] == IMAGE_TOKEN).nonzero().squeeze(1)
        assert handle.stats.kept_positions[b].tolist() == sorted(pos[_official_divprune(full[b, pos], 5)].tolist())


# ---------------------------------------------------------------------------- VisionZip


def _official_visionzip(attn, hidden, metric, dominant_num: int, contextual_num: int) -> torch.Tensor:
    """CLIPVisionTower_VisionZip.forward on a batch: attn (B, heads, T+1, T+1), hidden (B, T+1, H) at the
    feature layer, metric (B, T+1, d) = that layer's raw keys averaged over heads. Returns the
    [CLS + dominant (sequence order), contextual] block (B, 1 + dominant_num + contextual_num, H)."""
    b, t, h = hidden.shape
    cls_attention_sum = attn[:, :, 0, 1:].sum(dim=1)
    top = cls_attention_sum.topk(dominant_num, dim=1).indices + 1
    all_indices = torch.cat([torch.zeros(b, 1, dtype=top.dtype), top], dim=1)
    mask = torch.ones(b, t, dtype=torch.bool).scatter_(1, all_indices, False)
    dominant_tokens = hidden.masked_select(~mask[..., None]).view(b, dominant_num + 1, h)
    metric_filtered = metric[mask].view(b, t - dominant_num - 1, metric.shape[2])
    hidden_filtered = hidden.masked_select(mask[..., None]).view(b, t - dominant_num - 1, h)
    metric_normalized = metric_filtered / metric_filtered.norm(dim=-1, keepdim=True)
    m = metric_normalized.shape[1]
    step = max(1, m // contextual_num)
    target_indices = torch.arange(0, m, step)[:contextual_num]
    others = ~torch.isin(torch.arange(m), target_indices)
    similarity = torch.bmm(metric_normalized[:, others], metric_normalized[:, target_indices].transpose(1, 2))
    assign = torch.zeros(b, int(others.sum()), contextual_num).scatter_(2, similarity.argmax(dim=2)[..., None], 1)
    counts = assign.sum(dim=1).clamp(min=1)[..., None]
    aggregated = torch.bmm(assign.transpose(1, 2), hidden_filtered[:, others]) / counts
    contextual_tokens = hidden_filtered[:, target_indices] + aggregated
    return torch.cat([dominant_tokens, contextual_tokens], dim=1)


def _tower_view(model, pixels):
    eager = tiny_llava("eager", layers=4)  # same seed: same weights, attention probabilities on request
    out = eager.model.vision_tower(pixels, output_attentions=True, output_hidden_states=True)
    layer = eager.model.vision_tower.encoder.layers[-1]  # vision_feature_layer=-1
    x = layer.layer_norm1(out.hidden_states[-2])
    metric = layer.self_attn.k_proj(x).view(*x.shape[:2], 2, -1).mean(2)  # raw keys, head mean
    return out.attentions[-1], out.hidden_states[-1], metric


def _run_seeing_layer0(model, method, inputs):
    """Prefill with `method`; its handle, the (pruned) rows entering decoder layer 0, last logits."""
    seen = {}

    def hook(module, args, kwargs):
        seen.setdefault("h", (args[0] if args else kwargs["hidden_states"]).clone())

    with method.apply(model) as handle:
        pre = model.model.language_model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            logits = model(**inputs).logits[:, -1]
        finally:
            pre.remove()
    return handle, seen, logits


def test_visionzip_official_rule(model):
    """keep=6, contextual=2: [CLS] + 3 patches + 2 contextual tokens per image, as the official block, and
    the language model sees the official sequence: same logits as the plain model on that sequence."""
    inputs = batch([prompt(5, 7, images=2, seed=1), prompt(3, 4, images=1, seed=2)])
    attn, hidden, metric = _tower_view(model, inputs["pixel_values"])
    block = model.model.multi_modal_projector(_official_visionzip(attn, hidden, metric, 3, 2))  # (3 images, 6, H)
    handle, seen, logits = _run_seeing_layer0(model, make("visionzip", keep=6, contextual=2), inputs)
    ids, index, number = inputs["input_ids"], handle.stats.kept_sequence_index, 0
    embeds = input_embeds(model, inputs)
    for b in range(2):
        rows = []
        for pos in (ids[b] == IMAGE_TOKEN).nonzero().squeeze(1).split(N):
            mine = handle.stats.kept_positions[b][torch.isin(handle.stats.kept_positions[b], pos)]
            kept = torch.searchsorted(index[b], mine)  # rows of the kept tokens (the batch adds filler rows)
            assert kept.numel() == 6 and torch.allclose(seen["h"][b, kept], block[number], atol=1e-5)
            rows.append((int(pos[0]), int(pos[-1]) + 1, block[number]))
            number += 1
        # the official sequence: text, each image's block, text; contiguous positions; no padding
        valid = inputs["attention_mask"][b].bool()
        parts, at = [], int(valid.nonzero()[0])
        for start, end, feats in rows:
            parts += [embeds[b, at:start], feats]
            at = end
        parts.append(embeds[b, at:])
        sequence = torch.cat(parts)[None]
        plain = model(inputs_embeds=sequence).logits[0, -1]
        assert torch.allclose(plain, logits[b], atol=1e-4)


def test_visionzip_original_variant(model):
    """fastv's variant: no [CLS]; dominant patches at their own positions, each contextual token
    (target + mean of its group) at its target's position."""
    inputs = batch(ONE_IMAGE)
    attn, hidden, metric = _tower_view(model, inputs["pixel_values"])
    method = make("visionzip", keep=6, contextual=2, positions="original")
    assert not method.with_cls
    handle, seen, _ = _run_seeing_layer0(model, method, inputs)
    for b in range(2):
        pos = (inputs["input_ids"][b] == IMAGE_TOKEN).nonzero().squeeze(1)
        cls = attn[b, :, 0, 1:].sum(0)
        dom = cls.topk(4).indices.sort().values.tolist()
        rest = [i for i in range(N) if i not in dom]
        targets = rest[0 : len(rest) : len(rest) // 2][:2]
        keys = metric[b, 1:] / metric[b, 1:].norm(dim=-1, keepdim=True)
        groups = {t: [] for t in targets}
        for i in rest:
            if i not in targets:
                groups[targets[int(torch.stack([keys[i] @ keys[t] for t in targets]).argmax())]].append(i)
        assert handle.stats.kept_positions[b].tolist() == sorted(pos[dom + targets].tolist())
        for t in targets:
            feats = hidden[b, 1 + t] + (hidden[b, [1 + i for i in groups[t]]].mean(0) if groups[t] else 0)
            row = (handle.stats.kept_sequence_index[b] == pos[t]).nonzero().item()
            assert torch.allclose(seen["h"][b, row], model.model.multi_modal_projector(feats), atol=1e-5)
