"""HoliTom: the official outer-LLM rule (segmentation, temporal + DPC-kNN merging) and inner-LLM merge,
transcribed here from cokeshao/HoliTom (`holitom/llava_arch.py`, `holitom/modeling_qwen2.py`) loop for
loop, against fastv's implementation; budgets, accounting, an end-to-end run on a tiny LLaVA-OneVision
video through the engine (and generate), and refusals."""

from __future__ import annotations

import math

import pytest
import torch
import transformers as tf
from tiny_families import IMAGE, VIDEO, _finish, _llama, _prompts, _randn, _siglip, llava_onevision
from tiny_llava import tiny_llava

from fastv import FastVError
from fastv.core.errors import UnsupportedModelError
from fastv.methods import HoliTom, make
from fastv.methods.accounting import visual_tokens_per_layer
from fastv.methods.holitom_merging import compress_video, merge_halving

# ---------------------------------------------------------------------------- the official rule, transcribed


def official_windows(feature_sim: torch.Tensor, frames: int, tau: float, max_window: int):
    """`select_static_windows`: pruned_static_count[s, e], then the DP over window ends (strict >)."""
    sim_matrix = torch.ones(frames, frames, feature_sim.shape[1])
    for start in range(frames - 1):
        cum = torch.cumprod((feature_sim[start:] > tau).float(), dim=0)
        sim_matrix[start, start + 1 : start + 1 + len(cum)] = cum
    lengths = (torch.arange(frames)[None] - torch.arange(frames)[:, None]).clamp(min=0)
    count = sim_matrix.sum(-1) * lengths
    dp = [0.0] * frames
    prev = [0] * frames
    for i in range(frames):
        max_val = dp[i - 1] if i > 0 else 0
        best_j = i
        for window in range(2, min(i + 1, max_window) + 1):
            j = i - window
            val = (dp[j] if j >= 0 else 0) + float(count[j + 1, i])
            if val > max_val:
                max_val, best_j = val, j + 1
        dp[i], prev[i] = max_val, best_j
    out, i = [], frames - 1
    while i >= 0:
        out.append((prev[i], i))
        i = prev[i] - 1
    return out[::-1], dp[-1]


def official_dpc(x: torch.Tensor, cluster_num: int, k: int, generator: torch.Generator):
    """`cluster_dpc_knn` for one sequence; its 1e-6 tie-breaking noise drawn from `generator` (mutual
    nearest neighbours tie exactly at small k, so the noise decides, as in the official code)."""
    n, dim = x.shape
    dist = torch.zeros(n, n)
    for i in range(n):
        for j in range(n):
            dist[i, j] = (x[i] - x[j]).norm() / dim**0.5
    density = torch.tensor([math.exp(-sum(v * v for v in sorted(dist[i].tolist())[:k]) / k) for i in range(n)])
    density = density + torch.rand(density.shape, generator=generator) * 1e-6
    score = []
    for i in range(n):
        denser = [dist[i, j].item() for j in range(n) if density[j] > density[i]]
        score.append((min(denser) if denser else dist.max().item()) * density[i].item())
    centres = sorted(sorted(range(n), key=lambda i: -score[i])[:cluster_num])
    return centres, dist


def official_cluster_merge(x, centres, dist, beta):
    """`merge_tokens_by_clustering` (the default NO_BETA=0 path)."""
    members: dict[int, list[int]] = {c: [] for c in range(len(centres))}
    for i in range(x.shape[0]):
        if i in centres:
            continue
        d = [dist[i, c].item() for c in centres]
        members[d.index(min(d))].append(i)
    out = []
    for c, centre in enumerate(centres):
        if members[c]:
            out.append(beta * x[centre] + (1 - beta) * x[members[c]].mean(0))
        else:
            out.append(x[centre])
    return torch.stack(out) if out else x[:0]


def official_fit(counts, caps, target):
    """fastv's documented correction of the per-part rounding (module doc of fastv.methods.holitom)."""
    counts = list(counts)
    while sum(counts) > target:
        for i in sorted(range(len(counts)), key=lambda i: -counts[i]):
            if sum(counts) == target or counts[i] == 0:
                break
            counts[i] -= 1
    while sum(counts) < target:
        room = sorted([i for i in range(len(counts)) if counts[i] < caps[i]], key=lambda i: counts[i] - caps[i])
        if not room:
            break
        for i in room:
            if sum(counts) == target:
                break
            counts[i] += 1
    return counts


def official_video(feat, attn, retain_ratio, tau, beta=0.6, K=7, max_window=1024, fit_to=None, seed=0):
    """The outer-LLM path of `prepare_inputs_labels_for_multimodal` + `holitom` for one video.

    Returns (tokens in the official order, their (frame, cell) anchors, the per-part counts).
    """
    frames, cells, _ = feat.shape
    normed = torch.nn.functional.normalize(feat, p=2, dim=-1)
    feature_sim = torch.nn.functional.cosine_similarity(normed[:-1], normed[1:], dim=-1)
    windows, reduced = official_windows(feature_sim, frames, tau, max_window)
    total = frames * cells
    ratio = min(retain_ratio / ((total - reduced) / total), 1)
    parts = []  # (kind, frame, cell indices, count)
    for start, end in windows:
        if start == end:
            static = torch.zeros(cells, dtype=torch.bool)
        else:
            static = torch.all(feature_sim[start:end] > tau, dim=0)
            idx = torch.arange(cells)[static]
            parts.append(["static", start, end, idx, round(len(idx) * ratio)])
        idx = torch.arange(cells)[~static]
        for t in range(start, end + 1):
            parts.append(["dynamic", t, t, idx, round(math.ceil(len(idx) * ratio) * (1 - 0))])
    if fit_to is not None:
        counts = official_fit([p[4] for p in parts], [len(p[3]) for p in parts], fit_to)
        for p, c in zip(parts, counts, strict=True):
            p[4] = c
    tokens, anchors = [], []
    generator = torch.Generator().manual_seed(seed)
    for kind, start, end, idx, n in parts:
        if n == 0:
            continue
        if kind == "static":
            static_feat = feat[start : end + 1, idx].mean(0)
            centres, dist = official_dpc(static_feat, n, min(K, n), generator)
            tokens.append(official_cluster_merge(static_feat, centres, dist, beta))
            anchors += [(start, int(idx[c])) for c in centres]
        else:
            top = attn[start, idx].topk(n).indices
            keep = torch.zeros(len(idx), dtype=torch.bool)
            keep[top] = True
            tokens.append(feat[start, idx[keep]])  # masked_select: raster order
            anchors += [(start, int(c)) for c in idx[keep]]
    return torch.cat(tokens), anchors, [p[4] for p in parts]


def official_inner(hidden: torch.Tensor, attention: torch.Tensor, r: float):
    """The inner merge of `Qwen2Model_holitom.forward` on one video's rows (hidden (n, H), attention (n,))."""
    n = hidden.shape[0]
    top = attention.topk(round(n * (1 - r))).indices
    states = hidden.clone()
    rest = [i for i in range(n) if i not in top.tolist()]
    sim = torch.zeros(len(rest), len(top))
    for a, i in enumerate(rest):
        for b, j in enumerate(top.tolist()):
            sim[a, b] = states[i] @ states[j] / (states[i].norm() * states[j].norm())
    best = sim.max(-1).indices
    for a, i in enumerate(rest):
        j = top[best[a]]
        states[j] = (states[j] + states[i]) / 2
    keep = top.sort().values
    return states[keep], keep


# ---------------------------------------------------------------------------- hand-made input


def _hand_made_video(seed: int = 0):
    """6 frames of 16 cells: cells 0-7 static over frames 0-2, cells 0-3 over frames 3-4, the rest moving."""
    g = torch.Generator().manual_seed(seed)
    feat = torch.randn(6, 16, 8, generator=g)
    feat[1, :8] = feat[0, :8] + 0.01 * torch.randn(8, 8, generator=g)
    feat[2, :8] = feat[0, :8] + 0.01 * torch.randn(8, 8, generator=g)
    feat[4, :4] = feat[3, :4] + 0.01 * torch.randn(4, 8, generator=g)
    attn = torch.rand(6, 16, generator=g)
    return feat, attn


def test_outer_merge_matches_the_official_rule():
    feat, attn = _hand_made_video()
    want, anchors, counts = official_video(feat, attn, retain_ratio=38 / 96, tau=0.8)
    # The input was built so that the official counts hit the budget exactly (no rounding to correct):
    assert counts == [4, 4, 4, 4, 2, 6, 6, 8] and len(anchors) == 38
    got = compress_video(feat, attn, 38, 0.8, 0.6, 7, 1024, torch.Generator().manual_seed(0))
    assert list(zip(got.frame.tolist(), got.cell.tolist(), strict=True)) == anchors
    assert torch.allclose(got.features, want, atol=1e-5)
    assert got.frame[:4].tolist() == [0] * 4  # the first segment's static clusters sit in its first frame


@pytest.mark.parametrize(("keep", "tau", "max_window"), [(20, 0.8, 1024), (61, 0.8, 2), (9, 0.5, 1024), (96, 0.8, 3)])
def test_outer_merge_with_the_budget_correction(keep, tau, max_window):
    """Any budget: the official counts, corrected one token at a time to exactly `keep` (or all that is left)."""
    feat, attn = _hand_made_video(seed=1)
    frames, cells = attn.shape
    want, anchors, counts = official_video(feat, attn, keep / 96, tau, max_window=max_window, fit_to=keep)
    got = compress_video(feat, attn, keep, tau, 0.6, 7, max_window, torch.Generator().manual_seed(0))
    assert list(zip(got.frame.tolist(), got.cell.tolist(), strict=True)) == anchors
    assert torch.allclose(got.features, want, atol=1e-5)
    windows, reduced = official_windows(
        torch.nn.functional.cosine_similarity(feat[:-1], feat[1:], dim=-1), frames, tau, max_window
    )
    assert len(anchors) == min(keep, frames * cells - int(reduced))


@pytest.mark.parametrize(("n", "r", "seed"), [(11, 0.5, 3), (30, 0.8, 4), (7, 0.0, 5)])
def test_inner_merge_matches_the_official_loop(n, r, seed):
    g = torch.Generator().manual_seed(seed)
    hidden, attention = torch.randn(n, 6, generator=g), torch.rand(n, generator=g)
    want, keep = official_inner(hidden, attention, r)
    ranked = attention.topk(round(n * (1 - r))).indices
    got = merge_halving(hidden, ranked)
    order = ranked.sort()
    assert torch.equal(order.values, keep)
    assert torch.allclose(got[order.indices], want, atol=1e-6)


# ---------------------------------------------------------------------------- through the engine


def tiny_onevision_video(frames: int = 6, seed: int = 0, eager: bool = False):
    """A 56x56 SigLIP tower (8x8 patches, pooled to 4x4 = 16 per frame) and one video prompt; frames 1-2
    repeat frame 0 so that the clip has temporal redundancy."""
    torch.manual_seed(seed)
    config = tf.LlavaOnevisionConfig(
        vision_config=_siglip(image_size=56), text_config=_llama(), image_token_id=IMAGE, video_token_id=VIDEO,
        vision_feature_layer=-1, vision_feature_select_strategy="full",
        image_grid_pinpoints=[[56, 56]],
    )  # fmt: skip
    model = _finish(tf.LlavaOnevisionForConditionalGeneration(config), "eager" if eager else "sdpa")
    video = _randn(1, frames, 3, 56, 56, seed=seed + 2)
    video[0, 1] = video[0, 0]
    video[0, 2] = video[0, 0]
    inputs = _prompts([[5, (VIDEO, frames * 16 + 1), 4]], seed)
    return model, {**inputs, "pixel_values_videos": video}


def _capture(seen: dict, name: str):
    """A layer pre-hook that keeps the first hidden states it sees under `name`."""

    def hook(module, args, kwargs) -> None:
        seen.setdefault(name, (args[0] if args else kwargs["hidden_states"]).clone())

    return hook


def _embeds_and_attention(model, inputs):
    """The unpruned LM input rows and, independently, the vision attention the official code ranks by."""
    seen = {}
    hook = model.model.language_model.layers[0].register_forward_pre_hook(_capture(seen, "h"), with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    frames = inputs["pixel_values_videos"][0]
    tower = model.model.vision_tower
    eager = tower.config._attn_implementation
    tower.config._attn_implementation = "eager"
    with torch.no_grad():
        out = tower(frames, output_attentions=True)
    tower.config._attn_implementation = eager
    attn = out.attentions[-1].mean(dim=1).mean(dim=1)  # (frames, 64): the official reduction
    side = int(attn.shape[1] ** 0.5)
    pooled = torch.nn.functional.interpolate(attn.view(-1, 1, side, side), size=[4, 4], mode="bilinear")
    return seen["h"][0], pooled.flatten(1)


def _positions_of_video(inputs):
    return (inputs["input_ids"][0] == VIDEO).nonzero().squeeze(1)


@pytest.mark.parametrize("positions", ["contiguous", "original"])
def test_engine_feeds_the_language_model_the_official_sequence(positions):
    model, inputs = tiny_onevision_video()
    embeds, attn = _embeds_and_attention(model, inputs)
    vid = _positions_of_video(inputs)
    feat = embeds[vid[:-1]].view(6, 16, -1)
    tau = float(torch.nn.functional.cosine_similarity(feat[3:-1], feat[4:], dim=-1).median())  # partly static
    keep = 30
    want, anchors, _ = official_video(feat, attn, (keep - 1) / 96, tau, fit_to=keep - 1)
    seen = {}
    method = HoliTom(keep=keep, tau=tau, inner=False, positions=positions)
    with method.apply(model) as handle:
        hook = model.model.language_model.layers[0].register_forward_pre_hook(_capture(seen, "h"), with_kwargs=True)
        model(**inputs)
        hook.remove()
    start = int(vid[0])
    rows = seen["h"][0, start : start + keep]
    anchor_pos = torch.tensor([int(vid[f * 16 + c]) for f, c in anchors] + [int(vid[-1])])
    assert torch.equal(handle.stats.kept_positions[0], anchor_pos.sort().values)
    block = torch.cat([want, embeds[vid[-1:]]])  # the official order, the newline last
    if positions == "original":
        block = block[anchor_pos.argsort()]  # fastv's variant: each token at its anchor
    assert torch.allclose(rows, block, atol=1e-5)
    assert handle.stats.layer_seq_lens == [len(inputs["input_ids"][0]) - 97 + keep] * 4


def test_inner_merge_through_the_engine_and_accounting():
    model, inputs = tiny_onevision_video(eager=True)
    keep, layers = 31, 4
    method = HoliTom(keep=keep)
    k = method.cut(layers)
    assert k == 3  # round(18 * 4 / 28)
    seen: dict = {}
    layer = model.model.language_model.layers[k]
    before = layer.register_forward_pre_hook(_capture(seen, "before"), with_kwargs=True)
    with method.apply(model) as handle:
        after = layer.register_forward_pre_hook(_capture(seen, "after"), with_kwargs=True)
        out = model(**inputs, output_attentions=True)
        after.remove()
    before.remove()
    text_before = 5
    video_rows = slice(text_before, text_before + keep)
    # layer k-1's attention of the last row (head mean) over the video rows, as the official code reads it
    attention = out.attentions[k - 1][0, :, -1].mean(0)[video_rows]
    want, kept = official_inner(seen["before"][0, video_rows], attention, 0.5)
    n2 = round(keep * 0.5)
    assert torch.allclose(seen["after"][0, text_before : text_before + n2], want, atol=1e-5)
    lens = handle.stats.layer_seq_lens
    text = len(inputs["input_ids"][0]) - 97
    assert lens == [text + v for v in visual_tokens_per_layer(method, layers, 97)] == [text + keep] * 3 + [text + n2]
    assert handle.stats.stage_kept == [[keep], [n2]]


def test_generate_and_budget_by_ratio():
    model, inputs = tiny_onevision_video()
    with make("holitom", ratio=0.75).apply(model) as handle:
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, suppress_tokens=[IMAGE, VIDEO])
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    keep = 97 - round(0.75 * 97)
    assert handle.stats.stage_kept[0] == [keep]
    assert visual_tokens_per_layer(make("holitom", ratio=0.75), 28, 97) == [keep] * 18 + [round(keep / 2)] * 10
    assert visual_tokens_per_layer(make("holitom", keep=628, inner=False), 28, 6273) == [628] * 28


def test_mixed_batch_of_the_shared_tiny_family():
    """tests/tiny_families' LLaVA-OneVision: images in sample 0 (untouched), image + 2-frame video in sample 1."""
    model, inputs = llava_onevision()
    with make("holitom", keep=5, inner=False).apply(model) as handle:
        model(**inputs)
    n_visual = handle.stats.num_visual
    video = int((inputs["input_ids"][1] == VIDEO).sum())
    assert handle.stats.num_kept == [n_visual[0], n_visual[1] - video + 5]


# ---------------------------------------------------------------------------- refusals


def test_refusals():
    with pytest.raises(UnsupportedModelError, match="LLaVA-OneVision"):
        make("holitom", keep=8).apply(tiny_llava())
    model, inputs = llava_onevision()
    images_only = {k: v[:1] for k, v in inputs.items() if k != "pixel_values_videos"}
    with make("holitom", keep=8).apply(model), pytest.raises(FastVError, match="no prompt of this batch holds"):
        model(**images_only)
    with pytest.raises(FastVError, match="merges tokens"):
        make("holitom", keep=8, mode="mask").apply(model)
    with pytest.raises(FastVError, match="merge_ratio"):
        make("holitom", keep=8, merge_ratio=1.0)
    with pytest.raises(FastVError, match="outside 1..3"):
        make("holitom", keep=8, layer=4).apply(model)


def test_cli_parses_the_method(tmp_path):
    """`fastv eval` builds holitom settings; `fastv generate --method holitom` on an image-only model says why not."""
    import numpy as np
    from PIL import Image
    from tiny_processor import IMAGE_SIZE, save_tiny_llava
    from typer.testing import CliRunner

    from fastv.cli import _register, app
    from fastv.eval.settings import method_grid

    names = [s.name for s in method_grid(["holitom"], keeps=[48], ratios=[0.9])]
    assert names[1:] == ["holitom keep=48", "holitom r=0.9"]
    image = tmp_path / "x.png"
    Image.fromarray(np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)).save(image)
    model_dir = save_tiny_llava(tmp_path / "model")
    _register()
    args = ["generate", "--model", str(model_dir), "--image", str(image), "--prompt", "hi", "--method", "holitom"]
    res = CliRunner().invoke(app, [*args, "--keep", "4"])
    assert res.exit_code == 2 and "LLaVA-OneVision" in res.output, res.output
