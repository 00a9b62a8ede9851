"""VScan against a transcription of its official LLaVA code (scans, merging, mid-LM cut), and its budget."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_families import qwen2_vl
from tiny_llava import IMAGE_TOKEN, left_pad, tiny_llava
from transformers import LlavaForConditionalGeneration

from fastv import FastVError
from fastv.core.errors import UnsupportedModelError
from fastv.methods import VScan, make
from fastv.methods.accounting import visual_tokens_per_layer

SIDE = 8
N = SIDE * SIDE  # 56 px / patch 7


def llava64(attn: str = "sdpa", seed: int = 0) -> LlavaForConditionalGeneration:
    return tiny_llava(attn, seed=seed, image_size=56, vision_layers=3, feature_layer=-2)


def batch64(images: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    prompts = []
    for count in images:
        ids = torch.randint(1, IMAGE_TOKEN, (3,), generator=g).tolist()
        for _ in range(count):
            ids += [IMAGE_TOKEN] * N + torch.randint(1, IMAGE_TOKEN, (2,), generator=g).tolist()
        prompts.append(ids + torch.randint(1, IMAGE_TOKEN, (4,), generator=g).tolist())
    out = left_pad(prompts)
    out["pixel_values"] = torch.randn(sum(images), 3, 56, 56, generator=g)
    return out


def window_cls_selection(image_attentions, visual_token_num, side, window_size):
    """VScan llava_arch.window_cls_selection (B = 1), its 24 x 24 grid made `side` x `side`."""
    attn_map = image_attentions.view(1, side, side)
    n_windows = side // window_size
    k = visual_token_num // (n_windows * n_windows)
    indices = []
    for i in range(n_windows):
        for j in range(n_windows):
            window = attn_map[0, i * window_size : (i + 1) * window_size, j * window_size : (j + 1) * window_size]
            for idx in torch.topk(window.reshape(-1), k)[1]:
                dy, dx = divmod(idx.item(), window_size)
                indices.append((i * window_size + dy) * side + j * window_size + dx)
    return torch.tensor(indices, dtype=torch.long)


def token_merging(image_features, index_mask):
    """VScan llava_arch.token_merging (B = 1, scaling = 1)."""
    retained = image_features[index_mask]
    others = image_features[~index_mask]
    cosine_sim = F.cosine_similarity(others.unsqueeze(1), retained.unsqueeze(0), dim=2)
    nearest = cosine_sim.argmax(dim=1)
    merge_count = torch.zeros(retained.shape[0]).scatter_add_(0, nearest, torch.ones(nearest.shape[0]))
    merged = retained.clone().scatter_add_(0, nearest[:, None].expand(-1, retained.shape[1]), others)
    return merged / (1 + merge_count[:, None])


class Stage1Only(VScan):
    """VScan's first cut alone: the reference sequence that layer c's own attention is computed on."""

    def stages(self, adapter):
        return super().stages(adapter)[:1]


@pytest.mark.parametrize(("keep", "windows", "shallow"), [(16, 2, 0), (24, 4, 0), (20, 2, 1)])
def test_vscan_matches_official_code(keep, windows, shallow):
    inputs = batch64([1])
    eager = llava64("eager")
    with torch.no_grad():
        out = eager.model.vision_tower(inputs["pixel_values"], output_attentions=True, output_hidden_states=True)
    cls = torch.stack(out.attentions)[:, 0, :, 0, 1:].mean(1)  # (layers, N)
    features = eager.model.multi_modal_projector(out.hidden_states[-2][:, 1:])[0].detach()
    n1 = round(1.5 * keep)
    n2 = (keep * 4 - 2 * n1) // 2
    local = window_cls_selection(cls[shallow], n1 // 2, SIDE, SIDE // windows)
    deep = cls[1].clone()  # vision_feature_layer=-2 of 3 layers: layer 1's output (the official [-2])
    deep[local] = 0
    chosen = torch.cat([local, deep.topk(n1 - local.numel())[1]])
    mask = torch.zeros(N, dtype=torch.bool)
    mask[chosen] = True
    merged = token_merging(features, mask)
    start = int((inputs["input_ids"][0] == IMAGE_TOKEN).nonzero().min())
    stage1 = start + mask.nonzero().squeeze(1)

    seen = {}
    method = make("vscan", keep=keep, windows=windows, shallow=shallow)
    with method.apply(eager) as handle:

        def capture(module, args, kwargs):
            seen.setdefault("h", (args[0] if args else kwargs["hidden_states"]).detach())
            seen.setdefault("pos", kwargs["position_ids"].clone())

        hook = eager.model.language_model.layers[0].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            with torch.no_grad():
                att = eager(**inputs, output_attentions=True).attentions
        finally:
            hook.remove()
    rows = seen["pos"][0]
    is_visual = torch.isin(rows, stage1)
    assert rows[is_visual].tolist() == stage1.tolist()  # stage 1: the scans' tokens, at their positions
    assert torch.allclose(seen["h"][0, is_visual], merged, atol=1e-5)  # with the merged features
    # Stage 2 at layer 2 ranks by layer 2's own last-row attention on its input, the stage-1 sequence
    # (checked above): eager attention of layer 2 in a run that makes only the first cut.
    with Stage1Only(keep=keep, windows=windows, shallow=shallow).apply(eager), torch.no_grad():
        own = eager(**inputs, output_attentions=True).attentions
    assert own[2].shape[-1] == rows.numel()
    score = own[2][0, :, -1].mean(0)[is_visual]
    assert not torch.allclose(score, att[1][0, :, -1].mean(0)[is_visual])  # not the previous layer's
    expected = stage1[score.topk(n2).indices].sort().values
    assert handle.stats.kept_positions[0].tolist() == expected.tolist()
    assert handle.stats.stage_kept == [[n1], [n2]]


@pytest.mark.parametrize("budget", [dict(keep=16), dict(ratio=0.75)])
def test_vscan_budget_and_accounting(budget):
    model, method = llava64(), make("vscan", windows=2, **budget)
    one = batch64([2])
    with method.apply(model) as handle:
        model(**one)
    text = one["input_ids"].shape[1] - 2 * N
    predicted = visual_tokens_per_layer(method, 4, N)
    assert predicted == [24, 24, 8, 8]  # mean 16 per layer
    assert handle.stats.layer_seq_lens == [text + 2 * v for v in predicted]
    with method.apply(model) as handle:
        model(**batch64([2, 1]))
    assert handle.stats.num_kept == [16, 8]


def test_vscan_generates():
    model, inputs = llava64(), batch64([2, 1])
    with make("vscan", keep=16, windows=2).apply(model):
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False, suppress_tokens=[IMAGE_TOKEN])
    assert out.shape[1] == inputs["input_ids"].shape[1] + 4


def test_vscan_refusals():
    with pytest.raises(UnsupportedModelError):
        make("vscan", keep=4).apply(qwen2_vl()[0])
    with pytest.raises(FastVError, match="merges tokens"):
        make("vscan", keep=16, windows=2, mode="mask").apply(llava64())
    with pytest.raises(FastVError, match="does not divide"):
        make("vscan", keep=16, windows=3).apply(llava64())
    with pytest.raises(FastVError, match="cannot be split"):
        make("vscan", keep=16, windows=2, split=4.0).apply(llava64())  # 64 before the LM leave -32 after
    with pytest.raises(FastVError, match="shallow=5"):
        make("vscan", keep=16, shallow=5).apply(llava64())
