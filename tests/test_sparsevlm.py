"""SparseVLM against transcriptions of its official v1.0 code: raters, rater attention, recycling."""

from __future__ import annotations

import pytest
import torch
from tiny_families import BUILDERS
from tiny_llava import IMAGE_TOKEN, left_pad, run_method, tiny_llava
from transformers import LlavaForConditionalGeneration

from fastv import FastVError
from fastv.methods import make
from fastv.methods.accounting import visual_tokens_per_layer
from fastv.methods.sparsevlm import SparseVLM, cluster_and_merge

N = 36  # 42 px / patch 7: 6 x 6 tokens per image


def llava36(attn: str = "sdpa", seed: int = 0) -> LlavaForConditionalGeneration:
    return tiny_llava(attn, seed=seed, image_size=42, vision_layers=2, feature_layer=-1)


def batch36(images: list[int], seed: int = 0, post: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    prompts = []
    for count in images:
        ids = torch.randint(1, IMAGE_TOKEN, (4,), generator=g).tolist()
        for j in range(count):
            ids += ([] if j == 0 else torch.randint(1, IMAGE_TOKEN, (2,), generator=g).tolist()) + [IMAGE_TOKEN] * N
        prompts.append(ids + torch.randint(1, IMAGE_TOKEN, (post,), generator=g).tolist())
    out = left_pad(prompts)
    out["pixel_values"] = torch.randn(sum(images), 3, 42, 42, generator=g)
    return out


def official_cluster_and_merge(x, cluster_num, noise):
    """Gumpest/SparseVLMs utils.cluster_and_merge (B = 1), its torch.rand noise passed in."""
    b, n, c = x.shape
    dist_matrix = (x[:, :, None, :] - x[:, None, :, :]).norm(dim=-1, p=2) / (c**0.5)
    dist_nearest, _ = torch.topk(dist_matrix, k=cluster_num, dim=-1, largest=False)
    density = (-(dist_nearest**2).mean(dim=-1)).exp() + noise
    mask = (density[:, None, :] > density[:, :, None]).type(x.dtype)
    dist_max = dist_matrix.flatten(1).max(dim=-1)[0][:, None, None]
    dist, _ = (dist_matrix * mask + dist_max * (1 - mask)).min(dim=-1)
    score = dist * density
    _, index_down = torch.topk(score, k=cluster_num, dim=-1)
    idx_cluster = dist_matrix[0][index_down[0]][None].argmin(dim=1)
    idx_cluster[0, index_down[0]] = torch.arange(cluster_num)
    all_weight = torch.zeros(cluster_num, 1).index_add_(0, idx_cluster[0], torch.ones(n, 1)) + 1e-6
    norm_weight = torch.ones(n, 1) / all_weight[idx_cluster[0]]
    merged = torch.zeros(cluster_num, c).index_add_(0, idx_cluster[0], x[0] * norm_weight)
    return index_down[0], merged


def test_cluster_and_merge_matches_official():
    g = torch.Generator().manual_seed(0)
    for m, k in [(10, 2), (14, 2), (25, 3), (7, 1)]:
        x = torch.randn(1, m, 16, generator=g) + torch.randn(1, 1, 16, generator=g) * torch.randint(0, 3, (1, m, 1))
        noise = torch.rand(m, generator=g) * 1e-6
        centres, merged = cluster_and_merge(x[0], k, noise)
        want_centres, want = official_cluster_and_merge(x, k, noise)
        assert centres.tolist() == want_centres.tolist()
        assert torch.allclose(merged, want, atol=1e-5)


@pytest.mark.parametrize(("schedule", "images"), [((64,), [1]), ((128,), [1]), ((64,), [2])])
def test_sparsevlm_matches_official_stage(schedule, images):
    """One cut after layer 1 with recycling, against the official step on eager signals of the full model."""
    model, inputs = llava36("eager"), batch36(images)
    with torch.no_grad():
        out = model(**inputs, output_attentions=True, output_hidden_states=True)
    seen = {}
    method = SparseVLM(layers=(2,), schedule=schedule)
    with method.apply(model) as handle:

        def capture(module, args, kwargs):
            seen["h"] = (args[0] if args else kwargs["hidden_states"]).detach()

        hook = model.model.language_model.layers[2].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            with torch.no_grad():
                model(**inputs)
        finally:
            hook.remove()
    ids = inputs["input_ids"][0]
    vis_all = (ids == IMAGE_TOKEN).nonzero().squeeze(1)
    text = torch.arange(vis_all.max() + 1, ids.numel())
    c = round(schedule[0] * N / 576)
    expected, index = [], handle.stats.kept_sequence_index[0]
    for j, vis in enumerate(vis_all.split(N)):
        # the official code takes one image span; fastv's raters come from all visual tokens of the sample
        embeds = out.hidden_states[0][0]
        m_v_t = (embeds[vis_all] @ embeds[text].T).softmax(1).mean(0)
        kept, centres, merged = _official_stage_with_raters(
            out.attentions[1][0], out.hidden_states[2][0], vis, text[m_v_t > m_v_t.mean()], c, j
        )
        expected += kept.tolist() + centres.tolist()
        rows = torch.searchsorted(index, centres)
        assert torch.allclose(seen["h"][0, rows], merged, atol=1e-5)
    assert handle.stats.kept_positions[0].tolist() == sorted(expected)


def _official_stage_with_raters(attention, hidden, vis, raters, c, image):
    relation = attention.mean(0)[raters][:, vis].mean(0)
    keep = relation.topk(min(c, vis.numel() - 1)).indices
    mask = torch.zeros(vis.numel(), dtype=torch.bool)
    mask[keep] = True
    pruned, stage1 = vis[~mask], relation[~mask]
    num = int(pruned.numel() * 0.3) + 1
    order = stage1.topk(num).indices
    noise = torch.rand(num, generator=torch.Generator().manual_seed(image)) * 1e-6  # seed 0, cut 0, image j
    centres, merged = official_cluster_and_merge(hidden[pruned[order]][None], int(num / 10) + 1, noise)
    return vis[mask], pruned[order][centres], merged


def test_sparsevlm_two_cuts_without_recycling_match_eager_reference():
    """recycle=False: each cut keeps the top rater-attention tokens (eager attention, masked reference)."""
    inputs = batch36([1, 1])
    eager = llava36("eager")
    method = SparseVLM(layers=(1, 3), schedule=(288, 96), recycle=False)
    with SparseVLM(layers=(1, 3), schedule=(288, 96), recycle=False, mode="mask").apply(eager):
        out = eager(**inputs, output_attentions=True, output_hidden_states=True)
    with method.apply(llava36()) as handle:
        handle.model(**inputs)
    for b in range(2):
        ids = inputs["input_ids"][b]
        vis = (ids == IMAGE_TOKEN).nonzero().squeeze(1)
        text = torch.arange(vis.max() + 1, ids.numel())
        embeds = out.hidden_states[0][b]
        m_v_t = (embeds[vis] @ embeds[text].T).softmax(1).mean(0)
        raters = text[m_v_t > m_v_t.mean()]
        alive = vis
        for cut, c in zip((1, 3), (18, 6), strict=True):
            relation = out.attentions[cut - 1][b].mean(0)[raters][:, alive].mean(0)
            alive = alive[relation.topk(c).indices].sort().values
        assert handle.stats.kept_positions[b].tolist() == alive.tolist()


def test_sparsevlm_budgets_and_accounting():
    method = make("sparsevlm", keep=12, layers=(1, 2, 3))  # 12 of 36 = 192 of 576
    assert method.counts(36) == (19, 12, 7)
    assert make("sparsevlm", keep=192).counts(576) == (300, 200, 110)
    assert make("sparsevlm", ratio=8 / 9).counts(576) == (66, 30, 17)  # 64 of 576
    model, one = llava36(), batch36([2])
    with method.apply(model) as handle:
        model(**one)
    text = one["input_ids"].shape[1] - 2 * N
    predicted = visual_tokens_per_layer(method, 4, N)
    # 36 -> 19 kept + (17 cut: 6 recycled, 1 cluster) -> 12 + (8 cut: 3, 1) -> 7 + (6 cut: 2, 1)
    assert predicted == [36, 20, 13, 8]
    assert handle.stats.layer_seq_lens == [text + 2 * v for v in predicted]
    assert handle.stats.num_kept == [16]


def test_sparsevlm_drop_equals_mask_without_recycling():
    model, inputs = llava36(), batch36([2, 1])
    settings = dict(layers=(1, 3), schedule=(288, 96), recycle=False)
    ld, sd, lens, stats = run_method(model, SparseVLM(**settings), inputs)
    lm, sm, _, _ = run_method(model, SparseVLM(mode="mask", **settings), inputs)
    assert (ld - lm).abs().max() < 1e-4 and torch.equal(sd, sm)
    assert lens == [n + 4 for n in stats.layer_seq_lens]


def test_sparsevlm_generates_with_recycling():
    """Merged tokens change the cache lengths by the predicted counts and generation runs on them."""
    model, inputs = llava36(), batch36([1])
    method = make("sparsevlm", keep=12, layers=(1, 2, 3))
    _, seq, lens, stats = run_method(model, method, inputs)
    text = inputs["input_ids"].shape[1] - N
    assert lens == [text + v + 4 for v in visual_tokens_per_layer(method, 4, N)]
    assert seq.shape[1] == inputs["input_ids"].shape[1] + 5


def test_sparsevlm_refusals():
    with pytest.raises(FastVError, match="official budgets"):
        make("sparsevlm", keep=10, layers=(1, 2, 3)).apply(llava36())
    with pytest.raises(FastVError, match="merges tokens"):
        make("sparsevlm", keep=12, layers=(1, 2, 3), mode="mask").apply(llava36())
    with pytest.raises(FastVError, match="one count per cut"):
        make("sparsevlm", schedule=(100,), layers=(1, 2)).apply(llava36())
    with pytest.raises(FastVError, match="increasing layers"):
        make("sparsevlm", layers=(2, 1))


@pytest.mark.parametrize("family", ["qwen2_vl", "gemma3", "llava_onevision"])
def test_sparsevlm_other_families(family):
    model, inputs = BUILDERS[family]("sdpa")
    settings = dict(layers=(1, 3), schedule=(288, 144))
    ld, sd, _, _ = run_method(model, SparseVLM(recycle=False, **settings), inputs)
    lm, sm, _, _ = run_method(model, SparseVLM(recycle=False, mode="mask", **settings), inputs)
    assert (ld - lm).abs().max() < 1e-4 and torch.equal(sd, sm)
    _, seq, lens, stats = run_method(model, SparseVLM(**settings), inputs)  # with recycling
    assert lens[0] > lens[1] > lens[3] and seq.shape[1] == inputs["input_ids"].shape[1] + 5
