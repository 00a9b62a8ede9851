"""FastV's claims on every supported family: drop mode equals mask mode, exactly.

For each family x attention implementation, on a left-padded batch of two prompts whose visual
token counts differ: last-token logits agree to 1e-4, greedy generation produces identical
tokens, layers >= K cache only the kept tokens, the recorded scores equal eager
`output_attentions`, and removing FastV restores the model bit for bit. A negative control shows
the logits test is sensitive: renumbering the kept tokens' positions breaks it. Qwen3-VL
(deepstack) and Gemma3 (sliding windows) must refuse the settings they cannot run exactly.
"""

from __future__ import annotations

import pytest
import torch
from tiny_families import BUILDERS

import fastv
from fastv import FastV, FastVError, compat, positions

K = 2
RATIO = 0.5
NEW = 8
ATOL = 1e-4
ATTN = ("eager", "sdpa")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


_CACHE: dict[tuple[str, str], tuple[torch.nn.Module, dict[str, torch.Tensor]]] = {}


def build(family: str, attn: str):
    """Build once per (family, attn): the tests only read the model, and FastV undoes itself."""
    key = (family, attn)
    if key not in _CACHE:
        _CACHE[key] = BUILDERS[family](attn)
    return _CACHE[key]


def last_logits(model, inputs, mode: str) -> tuple[torch.Tensor, fastv.PruneStats]:
    with torch.no_grad(), FastV(k=K, ratio=RATIO, mode=mode).apply(model) as h:
        logits = model(**inputs).logits[:, -1]
    return logits, h.stats


def generate(model, inputs, mode: str):
    with torch.no_grad(), FastV(k=K, ratio=RATIO, mode=mode).apply(model) as h:
        out = model.generate(**inputs, max_new_tokens=NEW, do_sample=False, return_dict_in_generate=True)
    return out, h.stats


def expected_kept_width(model, inputs) -> int:
    """Rows layers >= K compute: the widest sample's text tokens + kept visual tokens."""
    adapter = fastv.resolve(model)
    ids = inputs["input_ids"]
    visual = torch.isin(ids, torch.tensor(adapter.visual_token_ids))
    n_visual = visual.sum(1)
    kept = ids.shape[1] - n_visual + (n_visual - torch.round(RATIO * n_visual).long())
    return int(kept.max())


PARAMS = [pytest.param(f, a, id=f"{f}-{a}") for f in BUILDERS for a in ATTN]


@pytest.mark.parametrize(("family", "attn"), PARAMS)
def test_drop_equals_mask_logits(family: str, attn: str) -> None:
    model, inputs = build(family, attn)
    with torch.no_grad():
        before = model(**inputs).logits
    ref, ref_stats = last_logits(model, inputs, "mask")
    got, stats = last_logits(model, inputs, "drop")
    with torch.no_grad():
        after = model(**inputs).logits
    assert torch.equal(before, after), "removing FastV must restore the model bit for bit"
    assert fastv.resolve(model).text_config._attn_implementation == attn
    assert stats.num_visual[0] != stats.num_visual[1], "the batch must mix visual-token counts"
    assert stats.num_kept == ref_stats.num_kept
    assert stats.layer_seq_lens == [inputs["input_ids"].shape[1]] * K + [expected_kept_width(model, inputs)] * (
        len(stats.layer_seq_lens) - K
    )
    torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("family", "attn"), PARAMS)
def test_drop_equals_mask_generate(family: str, attn: str) -> None:
    model, inputs = build(family, attn)
    ref, _ = generate(model, inputs, "mask")
    got, stats = generate(model, inputs, "drop")
    assert torch.equal(got.sequences, ref.sequences)
    prompt = inputs["input_ids"].shape[1]
    full, kept = prompt + NEW - 1, expected_kept_width(model, inputs) + NEW - 1
    n = len(compat.output_cache(got).layers)
    assert [layer.get_seq_length() for layer in compat.output_cache(got).layers] == [full] * K + [kept] * (n - K)
    assert [layer.get_seq_length() for layer in compat.output_cache(ref).layers] == [full] * n


@pytest.mark.parametrize(("family", "attn"), PARAMS)
def test_scores_equal_eager_attentions(family: str, attn: str) -> None:
    """The tap's scores equal eager `output_attentions`, also when the model itself runs SDPA."""
    eager, inputs = build(family, "eager")
    model, _ = build(family, attn)
    with torch.no_grad():
        plain = eager(**inputs, output_attentions=True)
        _, stats = last_logits(model, inputs, "drop")
    want = plain.attentions[K - 1][:, :, -1].float().mean(1)
    visual = torch.isin(inputs["input_ids"], torch.tensor(fastv.resolve(model).visual_token_ids))
    torch.testing.assert_close(stats.scores[visual], want[visual], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl", "qwen2_5_vl", "gemma3"])
def test_renumbered_positions_break_the_match(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Give kept tokens contiguous positions (the last L' of the prompt): the logits must move."""
    model, inputs = build(family, "sdpa")
    ref, _ = last_logits(model, inputs, "mask")
    take = positions.take_columns

    def renumbered(t: torch.Tensor, index: torch.Tensor, seq_dim: int) -> torch.Tensor:
        if seq_dim == 1:  # the engine gathers hidden states with seq_dim=1: keep the real kept rows
            return take(t, index, seq_dim)
        length = t.shape[seq_dim]
        tail = torch.arange(length - index.shape[1], length).expand_as(index)
        return take(t, tail, seq_dim)  # position embeddings / ids of a contiguous run

    monkeypatch.setattr(positions, "take_columns", renumbered)
    got, _ = last_logits(model, inputs, "drop")
    assert (got - ref).abs().max() > ATOL


def test_qwen3_vl_refuses_k_below_deepstack_depth() -> None:
    model, _ = build("qwen3_vl", "sdpa")
    depth = len(model.config.vision_config.deepstack_visual_indexes)
    assert depth == K
    with pytest.raises(FastVError, match="deepstack"):
        FastV(k=depth - 1, ratio=RATIO).apply(model)
    FastV(k=depth, ratio=RATIO).apply(model).remove()  # the smallest valid K installs


@pytest.mark.parametrize("window_margin", [-1, 4])
def test_gemma3_refuses_sequences_longer_than_the_sliding_window(
    window_margin: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pruned and unpruned sliding layers would evict different tokens: refuse, at prefill or decode."""
    model, inputs = build("gemma3", "sdpa")
    monkeypatch.setattr(model.config.text_config, "sliding_window", inputs["input_ids"].shape[1] + window_margin)
    with torch.no_grad(), FastV(k=K, ratio=RATIO).apply(model), pytest.raises(FastVError, match="sliding window"):
        model.generate(**inputs, max_new_tokens=NEW, do_sample=False)
