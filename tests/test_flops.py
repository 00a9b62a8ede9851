"""FLOPs: the paper's figure, the exact count against torch's FlopCounterMode, shapes, budget solver."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

from fastv import flops
from fastv.flops.shapes import KNOWN_SHAPES, build_config, load_config

TINY_TEXT = dict(
    hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=300,
)  # fmt: skip
QWEN_TEXT = {**TINY_TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}}
TINY_CLIP = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=14
)
QWEN_IDS = dict(image_token_id=299, video_token_id=298, vision_start_token_id=297)


def _counted(config, inputs: dict) -> int:
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config).eval()
    with torch.inference_mode(), flops.flop_counter() as counter:
        model(**inputs, logits_to_keep=1)
    return counter.get_total_flops()


def _qwen_case(kind: str, vision: dict):
    config = build_config(kind, QWEN_TEXT, vision, QWEN_IDS)
    h, w = 6, 10  # patches; 15 merged tokens
    ids = torch.tensor([[1, 1, 297] + [299] * (h * w // 4) + [5] * 7])
    inputs = dict(
        input_ids=ids,
        mm_token_type_ids=(ids == 299).long(),
        pixel_values=torch.randn(h * w, 3 * 2 * 14 * 14),
        image_grid_thw=torch.tensor([[1, h, w]]),
    )
    return config, inputs, dict(n_visual=h * w // 4, n_text=10)


def _cases():
    llava = build_config("llava", TINY_TEXT, {**TINY_CLIP, "image_size": 56}, dict(image_token_id=299))
    ids = torch.tensor([[1] * 3 + [299] * 16 + [5] * 7])
    yield "llava", llava, dict(input_ids=ids, pixel_values=torch.randn(1, 3, 56, 56)), dict(n_visual=16, n_text=10)

    video = build_config("video_llava", TINY_TEXT, TINY_CLIP, dict(video_token_id=298, image_token_id=299))
    ids = torch.tensor([[1] * 3 + [298] * (8 * 5) + [5] * 7])  # Video-LLaVA keeps each frame's CLS
    yield (
        "video_llava",
        video,
        dict(input_ids=ids, pixel_values_videos=torch.randn(1, 8, 3, 28, 28)),
        dict(frames=8, n_text=10),
    )

    nxt = build_config("llava_next", TINY_TEXT, TINY_CLIP, dict(image_token_id=299, image_grid_pinpoints=[[56, 56]]))
    ids = torch.tensor([[1] * 3 + [299] * 24 + [5] * 7])  # base 4 + 2x2 grid of 2x2 (16) + 4 newlines
    inputs = dict(input_ids=ids, pixel_values=torch.randn(1, 5, 3, 28, 28), image_sizes=torch.tensor([[56, 56]]))
    yield "llava_next", nxt, inputs, dict(n_visual=24, n_text=10)

    q2 = dict(depth=2, embed_dim=32, num_heads=4, mlp_ratio=2, patch_size=14, spatial_merge_size=2, hidden_size=64)
    yield "qwen2_vl", *_qwen_case("qwen2_vl", q2)
    q25 = dict(
        depth=3, hidden_size=32, intermediate_size=48, num_heads=4, patch_size=14, spatial_merge_size=2,
        window_size=56, fullatt_block_indexes=[1], out_hidden_size=64,
    )  # fmt: skip
    yield "qwen2_5_vl", *_qwen_case("qwen2_5_vl", q25)


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: c[0])
def test_exact_count_matches_flop_counter(case):
    _, config, inputs, est = case
    counted = _counted(config, inputs)
    report = flops.estimate(config, k=1, ratio=0.0, **est)
    assert report.total_full == pytest.approx(counted, rel=0.02)


def test_sdpa_formula_is_needed():
    """Without the registered formula CPU attention counts zero: the exact count must see it."""
    q = torch.randn(1, 4, 10, 16)
    with flops.flop_counter() as counter:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert counter.get_total_flops() == 4 * 4 * 10 * 10 * 16


def test_prefill_flops_per_layer_lengths():
    """Layers at different lengths (what pruning produces) add up layer by layer."""
    config = build_config("llava", TINY_TEXT, TINY_CLIP).text_config
    model = AutoModelForImageTextToText.from_config(build_config("llava", TINY_TEXT, TINY_CLIP)).eval()
    lm, head = model.model.language_model, model.lm_head
    lens = [20, 20, 12]
    total = 0
    with torch.inference_mode():
        for i, n in enumerate(lens):
            hidden = torch.randn(1, n, 64)
            cos_sin = lm.rotary_emb(hidden, torch.arange(n)[None])
            with flops.flop_counter() as counter:
                lm.layers[i](hidden, position_embeddings=cos_sin, attention_mask=None)
            total += counter.get_total_flops()
        with flops.flop_counter() as counter:
            head(hidden[:, -1:])
        total += counter.get_total_flops()
    assert flops.prefill_flops(config, lens) == total
    rep = flops.prefill_report(config, lens)
    assert rep.full == flops.prefill_flops(config, [20, 20, 20]) and 0 < rep.reduction < 1


def test_paper_reduction_llava_13b():
    """LLaVA-1.5-13B, 576 visual tokens + a short prompt, K=2 R=50%: about the paper's 45%."""
    shape = flops.TextShape.from_config(load_config("llava-1.5-13b"))
    assert (shape.hidden, shape.intermediate, shape.num_layers) == (5120, 13824, 40)
    theory = flops.theory_reduction(shape.hidden, shape.intermediate, shape.num_layers, 2, 0.5, 576, 40)
    assert theory == pytest.approx(0.45, abs=0.01)
    exact = flops.estimate("llava-1.5-13b", k=2, ratio=0.5, n_text=40)
    assert exact.llm_reduction == pytest.approx(0.45, abs=0.01)
    assert exact.vision_tower > 0 and exact.total_reduction < exact.llm_reduction  # vision unchanged


@pytest.mark.parametrize("name", list(KNOWN_SHAPES))
def test_known_shapes_build_offline(name):
    report = flops.estimate(name, k=2, ratio=0.5)
    assert report.llm_fastv < report.llm_full and report.vision_tower > 0 and report.projector > 0
    assert 0.3 < report.llm_reduction < 0.5


def test_local_config_json(tmp_path):
    path = tmp_path / "config.json"
    load_config("llava-1.5-7b").to_json_file(path)
    a, b = flops.estimate(str(path), k=2, ratio=0.5), flops.estimate("llava-1.5-7b", k=2, ratio=0.5)
    assert (a.llm_full, a.llm_fastv, a.vision_tower) == (b.llm_full, b.llm_fastv, b.vision_tower)
    with pytest.raises(ValueError):
        load_config(str(tmp_path / "missing"))


def test_layer_lengths_and_kv_bytes():
    lens = flops.fastv_layer_seq_lens(4, 616, 576, 2, flops.kept_count(576, 0.75))
    assert lens == [616, 616, 184, 184]
    shape = flops.TextShape(64, 96, 4, 2, 16, 300, 4)
    assert flops.kv_cache_bytes(shape, lens, dtype_bytes=4) == 2 * 2 * 16 * 4 * sum(lens)
    assert flops.decode_step_flops(shape, lens) < flops.decode_step_flops(shape, [616] * 4)


def test_budget_solver_and_cross_model():
    base = flops.estimate("llava-1.5-13b", k=2, ratio=0.0)
    rows = flops.solve_budget("llava-1.5-13b", 0.55 * base.total_full, ks=(1, 2, 3, 8, 99))
    assert [r.k for r in rows] == [1, 2, 3, 8]  # K deeper than the model is skipped
    for r in rows:
        assert r.total_fastv <= 0.55 * base.total_full
        looser = flops.estimate("llava-1.5-13b", k=r.k, kept=r.kept + 1)
        assert r.kept == r.n_visual or looser.total_fastv > 0.55 * base.total_full  # the mildest that fits
    assert rows[0].ratio < rows[-1].ratio  # later pruning must prune harder
    # The paper's claim: 13B with FastV under the 7B's full budget.
    seven = flops.estimate("llava-1.5-7b", k=2, ratio=0.0).total_full
    fits = flops.solve_budget("llava-1.5-13b", seven, ks=(2,))
    assert fits and fits[0].total_fastv <= seven and fits[0].ratio < 0.6


def test_pruned_prefill_matches_flop_counter():
    """With FastV applied, the counter agrees with the count from the engine's per-layer lengths."""
    import fastv

    config = build_config("llava", {**TINY_TEXT, "num_hidden_layers": 4}, {**TINY_CLIP, "image_size": 56})
    config.image_token_id = 299
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(config).eval()
    ids = torch.tensor([[1] * 3 + [299] * 16 + [5] * 7])
    with fastv.FastV(k=2, ratio=0.75).apply(model) as handle:
        with torch.inference_mode(), flops.flop_counter() as counter:
            model(input_ids=ids, pixel_values=torch.randn(1, 3, 56, 56), logits_to_keep=1)
        lens = handle.stats.layer_seq_lens
    assert lens == [26, 26, 14, 14]
    vision = flops.vision_flops(config, n_visual=16)
    expected = vision.tower + vision.projector + flops.prefill_flops(config, lens)
    assert counter.get_total_flops() == pytest.approx(expected, rel=0.02)
    assert flops.prefill_report(config, lens).full == flops.prefill_flops(config, [26] * 4)
