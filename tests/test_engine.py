"""The engine on a tiny LLaVA-1.5: drop mode must equal the masked reference, and refuse what it can't do."""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny_llava import GRID, IMAGE_TOKEN, batch, prompt, tiny_llava
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    MistralConfig,
    StaticCache,
)

import fastv
from fastv import FastV, FastVError, compat
from fastv.positions import take_columns as _take

NEW = 8


def _inputs():
    # Two images in sample 0, one in sample 1 (different visual counts), left padding.
    return batch([prompt(5, 7, images=2, seed=1), prompt(3, 4, images=1, seed=2)])


def _run(model, pruner, inputs, **gen):
    with pruner.apply(model) as handle:
        logits = model(**inputs).logits[:, -1]
        out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True, **gen)
        stats = handle.stats
    lens = [layer.get_seq_length() for layer in compat.output_cache(out).layers]
    return logits, out.sequences, lens, stats


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("k,ratio", [(2, 0.5), (1, 0.75), (3, 0.25)])
def test_drop_equals_mask(attn, k, ratio):
    model, inputs = tiny_llava(attn), _inputs()
    ld, sd, lens_d, stats = _run(model, FastV(k=k, ratio=ratio), inputs)
    lm, sm, lens_m, _ = _run(model, FastV(k=k, ratio=ratio, mode="mask"), inputs)
    assert (ld - lm).abs().max() < 1e-4
    assert torch.equal(sd, sm)
    full = inputs["input_ids"].shape[1] + NEW - 1
    kept = stats.kept_sequence_index.shape[1] + NEW - 1
    assert lens_d == [full] * k + [kept] * (4 - k)
    assert lens_m == [full] * 4
    assert kept < full


def test_negative_control_renumbered_positions(monkeypatch):
    """Giving kept tokens contiguous positions must break the match: the test above is sensitive."""
    model, inputs = tiny_llava("sdpa"), _inputs()
    ref, *_ = _run(model, FastV(k=2, ratio=0.5, mode="mask"), inputs)

    def renumbered(t, index, seq_dim):
        out = _take(t, index, seq_dim)
        if t.is_floating_point() and seq_dim == -2:  # cos/sin: use the first L' positions instead
            return t[..., : index.shape[1], :].expand_as(out)
        return out

    monkeypatch.setattr("fastv.positions.take_columns", renumbered)
    bad, *_ = _run(model, FastV(k=2, ratio=0.5), inputs)
    assert (bad - ref).abs().max() > 1e-4


def test_scores_equal_eager_attentions():
    model, inputs = tiny_llava("eager"), _inputs()
    attn = model(**inputs, output_attentions=True).attentions
    with FastV(k=2, ratio=0.5).apply(model) as handle:
        model(**inputs)
    expected = attn[1][:, :, -1].mean(1)
    visual = inputs["input_ids"] == IMAGE_TOKEN
    assert torch.allclose(handle.stats.scores[visual], expected[visual], atol=1e-6)


def test_sdpa_scores_equal_eager_scores():
    inputs = _inputs()
    scores = []
    for attn in ("eager", "sdpa"):
        with FastV(k=2).apply(tiny_llava(attn)) as handle:
            handle.model(**inputs)
        scores.append(handle.stats.scores)
    assert torch.allclose(scores[0], scores[1], atol=1e-5)


def test_kept_positions_are_top_visual_tokens():
    model, inputs = tiny_llava(), _inputs()
    with FastV(k=2, ratio=0.5).apply(model) as handle:
        model(**inputs)
    s = handle.stats
    ids = inputs["input_ids"]
    assert s.num_visual == [2 * GRID * GRID, GRID * GRID]
    assert s.num_kept == [GRID * GRID, GRID * GRID // 2]
    for b, kept in enumerate(s.kept_positions):
        assert torch.equal(kept, kept.sort().values)
        assert bool((ids[b, kept] == IMAGE_TOKEN).all())
        visual = (ids[b] == IMAGE_TOKEN).nonzero().squeeze(1)
        dropped = visual[~torch.isin(visual, kept)]
        assert s.scores[b, kept].min() >= s.scores[b, dropped].max()


def test_keep_count_exact():
    model, inputs = tiny_llava(), _inputs()
    with FastV(k=2, keep=5).apply(model) as handle:
        model(**inputs)
    assert handle.stats.num_kept == [5, 5]
    with pytest.raises(FastVError, match="only 16"), FastV(k=2, keep=20).apply(model):
        model(**inputs)


def test_ratio_zero_is_identical_and_remove_restores():
    model, inputs = tiny_llava(), _inputs()
    before = model(**inputs).logits
    gen_before = model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    with FastV(k=2, ratio=0.0).apply(model):
        assert torch.equal(model(**inputs).logits, before)
    handle = FastV(k=2, ratio=0.9).apply(model)
    assert not torch.equal(model(**inputs).logits[:, -1], before[:, -1])
    handle.remove()
    assert torch.equal(model(**inputs).logits, before)
    assert torch.equal(model.generate(**inputs, max_new_tokens=NEW, do_sample=False), gen_before)
    assert model.config.text_config._attn_implementation == "sdpa"
    assert not model._forward_pre_hooks and not any(m._forward_pre_hooks for m in model.modules())


def test_second_generate_does_not_leak_state():
    model = tiny_llava()
    a, b = batch([prompt(5, 7, seed=3)]), batch([prompt(9, 2, images=2, seed=4)])
    with FastV(k=2).apply(model) as handle:
        model.generate(**a, max_new_tokens=4, do_sample=False)
        second = model.generate(**b, max_new_tokens=4, do_sample=False)
        assert handle.stats.num_visual == [2 * GRID * GRID]
    with FastV(k=2).apply(model):
        fresh = model.generate(**b, max_new_tokens=4, do_sample=False)
    assert torch.equal(second, fresh)


def test_sampled_decoding_drop_equals_mask():
    model, inputs = tiny_llava(), _inputs()
    outs = []
    for mode in ("drop", "mask"):
        with FastV(k=2, mode=mode).apply(model):
            torch.manual_seed(0)
            outs.append(model.generate(**inputs, max_new_tokens=NEW, do_sample=True, top_k=50))
    assert torch.equal(outs[0], outs[1])


def test_random_scorer_seeded_and_k0():
    model, inputs = tiny_llava(), _inputs()
    kept = []
    for seed in (0, 0, 1):
        with FastV(k=0, scorer="random", seed=seed).apply(model) as handle:
            model(**inputs)
        kept.append(handle.stats.kept_positions[0])
    assert torch.equal(kept[0], kept[1]) and not torch.equal(kept[0], kept[2])
    ld, sd, lens, stats = _run(model, FastV(k=0, scorer="random"), inputs)
    lm, sm, *_ = _run(model, FastV(k=0, scorer="random", mode="mask"), inputs)
    assert (ld - lm).abs().max() < 1e-4 and torch.equal(sd, sm)
    assert len(set(lens)) == 1 and stats.layer_seq_lens == [stats.kept_sequence_index.shape[1]] * 4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    model, inputs = tiny_llava(dtype=dtype), _inputs()
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    ld, sd, lens, _ = _run(model, FastV(k=2), inputs)
    lm, sm, _, _ = _run(model, FastV(k=2, mode="mask"), inputs)
    assert ld.dtype == dtype and torch.isfinite(ld).all()
    assert (ld.float() - lm.float()).abs().max() < 0.05
    assert lens[0] > lens[-1]


# ---- refusals -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"ratio": 1.0}, r"outside \[0, 1\)"),
        ({"ratio": -0.1}, r"outside \[0, 1\)"),
        ({"ratio": 0.5, "keep": 3}, "either ratio or keep"),
        ({"keep": -1}, "keep=-1"),
        ({"k": 0}, "k=0"),
        ({"k": -1}, "k=-1"),
        ({"mode": "cut"}, "mode="),
        ({"scorer": "magic"}, "scorer="),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(FastVError, match=match):
        FastV(**kwargs)


def test_k_out_of_range():
    with pytest.raises(FastVError, match="k=4 is out of range.*choose k < 4"):
        FastV(k=4).apply(tiny_llava(layers=4))


def test_apply_twice():
    model = tiny_llava()
    with FastV().apply(model), pytest.raises(FastVError, match="already applied"):
        FastV().apply(model)
    FastV().apply(model).remove()  # the first handle's exit freed the model


def test_unsupported_model_names_families():
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2)
    )
    with pytest.raises(fastv.UnsupportedModelError, match="Supported families: LLaVA-1.5.*Qwen2-VL"):
        FastV().apply(model)


def test_no_visual_tokens_warns_and_runs_unpruned():
    model = tiny_llava()
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 8]])}
    ref = model(**inputs).logits
    with FastV().apply(model) as handle, pytest.warns(UserWarning, match="no visual tokens"):
        out = model(**inputs).logits
    assert torch.equal(out, ref) and handle.stats.num_visual == [0]
    with FastV(require_visual=True).apply(model), pytest.raises(FastVError, match="no visual tokens"):
        model(**inputs)


def test_static_cache_refused():
    model, inputs = tiny_llava(), _inputs()
    with FastV().apply(model), pytest.raises(FastVError, match="StaticCache.*DynamicCache"):
        model.generate(**inputs, max_new_tokens=2, cache_implementation="static")
    cache = StaticCache(config=model.config, max_cache_len=128)
    with FastV().apply(model), pytest.raises(FastVError, match="fixed-size"):
        model(**inputs, **compat.with_cache(model, cache))


def test_right_padding_refused():
    model, inputs = tiny_llava(), _inputs()
    inputs["attention_mask"] = inputs["attention_mask"].flip(1)
    with FastV().apply(model), pytest.raises(FastVError, match="padding_side = 'left'"):
        model(**inputs)


def test_short_sliding_window_refused():
    torch.manual_seed(0)
    text = MistralConfig(
        vocab_size=256,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=16,
    )
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=7
    )
    model = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN)
    ).eval()
    with FastV(k=1).apply(model), pytest.raises(FastVError, match="sliding window \\(16\\)"):
        model(**batch([prompt(5, 5)]))


def test_foreign_cache_refused():
    model, inputs = tiny_llava(), batch([prompt(5, 7)])
    out = model(**inputs, use_cache=True)  # unpruned prefill
    with FastV(k=2).apply(model) as handle:
        model(**inputs)  # pruned prefill; then decode on the unpruned cache
        nxt = {"input_ids": torch.tensor([[3]]), **compat.with_cache(model, compat.output_cache(out))}
        with pytest.raises(FastVError, match="not filled by this prefill"):
            model(**nxt)
    assert handle.model is model


def test_no_warning_on_normal_use():
    model, inputs = tiny_llava(), _inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with FastV().apply(model):
            model.generate(**inputs, max_new_tokens=2, do_sample=False)


def test_handle_reports_prefill_flops():
    model, inputs = tiny_llava(), _inputs()
    with FastV(k=2, ratio=0.5).apply(model) as handle:
        model(**inputs)
    f = handle.stats.flops
    assert f["pruned"] < f["full"] and 0 < f["reduction"] < 1
    with FastV(k=2, ratio=0.0).apply(model) as handle:
        model(**inputs)
    assert handle.stats.flops["reduction"] == 0


def test_beam_search_drop_equals_mask():
    model, inputs = tiny_llava(), _inputs()
    outs = []
    for mode in ("drop", "mask"):
        with FastV(k=2, mode=mode).apply(model):
            outs.append(
                model.generate(**inputs, max_new_tokens=6, num_beams=3, num_return_sequences=2, do_sample=False)
            )
    assert torch.equal(outs[0], outs[1]) and outs[0].shape[0] == 4
