"""Scoring a cut with the cut layer's own attention (PDrop's rule) equals eager attention of that layer."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from tiny_families import BUILDERS
from tiny_llava import batch, prompt, tiny_llava

from fastv import Method
from fastv.core.stages import Stage
from fastv.methods.fastv import last_token_attention

FAMILIES = ["llava", "qwen2_vl", "gemma3", "internvl", "idefics3"]


@dataclass(kw_only=True)
class OwnCuts(Method):
    """Halve the visual tokens at each of `cuts`, ranked by the cut layer's own last-row attention."""

    cuts: tuple[int, ...] = (1, 3)
    seen: dict = field(default_factory=dict)  # stage -> (B, L) head-mean probs over original positions

    name = "own_cuts"

    def stages(self, adapter):
        def scorer(n: int):
            def score(ctx):
                self.seen[n] = ctx.absolute(ctx.attention[:, -1], fill=float("nan"))
                return last_token_attention(ctx)

            return score

        half = lambda k: k - k // 2  # noqa: E731
        return [Stage(c, half, scorer(n), "last", scored_at="own") for n, c in enumerate(self.cuts)]


def _build(family: str, attn: str):
    if family == "llava":
        return tiny_llava(attn, layers=4), batch([prompt(5, 7, images=2, seed=1), prompt(3, 4, images=1, seed=2)])
    return BUILDERS[family](attn)


# M-RoPE (qwen2_vl) has no contiguous renumbering: refused, see tests/test_positions.py.
CASES = [(f, p) for f in FAMILIES for p in ("original", "contiguous") if (f, p) != ("qwen2_vl", "contiguous")]


@pytest.mark.parametrize(("family", "positions"), CASES)
def test_own_layer_scores_equal_eager_attention(family, positions):
    """Stage n's scores == eager output_attentions of its own layer (last row, mean over heads) where that
    layer really runs on the same input: the masked reference with only the stages before n; drop mode
    computes the same values."""
    model, inputs = _build(family, "eager")
    cuts = (1, 3) if family != "internvl" else (1, 2)
    masked = OwnCuts(cuts=cuts, mode="mask", positions=positions)
    with masked.apply(model):
        model(**inputs)
    for n, c in enumerate(cuts):
        before = OwnCuts(cuts=cuts[:n], mode="mask", positions=positions)
        if n:
            with before.apply(model):
                att = model(**inputs, output_attentions=True).attentions
        else:
            att = model(**inputs, output_attentions=True).attentions
        want = att[c][:, :, -1].mean(1).float()  # (B, L): eager probabilities of the cut layer's last row
        got = masked.seen[n]
        ok = ~got.isnan()
        assert bool(ok.any()) and torch.allclose(got[ok], want[ok], atol=2e-6), (n, c)
        assert float(want[~ok].abs().sum()) == 0.0  # the rows not computed are the masked columns
    dropped = OwnCuts(cuts=cuts, positions=positions)
    with dropped.apply(model):
        model(**inputs)
    for n in range(len(cuts)):
        ok = ~dropped.seen[n].isnan()
        assert torch.allclose(dropped.seen[n][ok], masked.seen[n][ok], atol=2e-6)


def test_own_layer_differs_from_previous_layer():
    """A negative control: the cut layer's own attention is not the attention of the layer before it."""
    model, inputs = _build("llava", "eager")
    method = OwnCuts(cuts=(2,), mode="mask", positions="original")
    with method.apply(model):
        model(**inputs)
    att = model(**inputs, output_attentions=True).attentions
    assert torch.allclose(method.seen[0], att[2][:, :, -1].mean(1), atol=2e-6)
    assert not torch.allclose(method.seen[0], att[1][:, :, -1].mean(1), atol=1e-3)


def test_own_scoring_leaves_the_cache_and_outputs_alone():
    """The scoring call writes no KV cache entry: drop == mask in logits and cached generation."""
    model, inputs = _build("llava", "sdpa")
    results = []
    for mode in ("drop", "mask"):
        with OwnCuts(cuts=(0, 2), mode=mode).apply(model):
            logits = model(**inputs).logits[:, -1]
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
        results.append((logits, out.sequences, [x.get_seq_length() for x in out.past_key_values.layers]))
    (ld, sd, lens), (lm, sm, lens_m) = results
    assert (ld - lm).abs().max() < 1e-4 and torch.equal(sd, sm)
    full = inputs["input_ids"].shape[1]
    assert lens_m == [full + 3] * 4 and lens[0] < full  # a layer-0 cut may be scored at layer 0 itself
