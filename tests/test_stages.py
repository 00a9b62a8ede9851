"""Multi-stage cuts and other rankings on the same engine: drop must still equal the masked reference."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from tiny_families import BUILDERS
from tiny_llava import IMAGE_TOKEN, batch, prompt, tiny_llava

import fastv
from fastv import FastVError, FastVMean, Method
from fastv.core.hf import compat
from fastv.core.stages import Stage
from fastv.methods.fastv import last_token_attention


@dataclass(kw_only=True)
class TwoCuts(Method):
    """Halve the visual tokens at layer 1, then halve what is left at layer 3 (a small pyramid)."""

    name = "two_cuts"

    def stages(self, adapter):
        half = lambda n: n - n // 2  # noqa: E731
        return [Stage(1, half, last_token_attention, "last"), Stage(3, half, last_token_attention, "last")]


def _inputs():
    return batch([prompt(5, 7, images=2, seed=1), prompt(3, 4, images=1, seed=2)])


def _run(model, method, inputs):
    with method.apply(model) as handle:
        logits = model(**inputs).logits[:, -1]
        out = model.generate(**inputs, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    return logits, out.sequences, [layer.get_seq_length() for layer in compat.output_cache(out).layers], handle.stats


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_two_stage_drop_equals_mask(attn):
    model, inputs = tiny_llava(attn, layers=5), _inputs()
    ld, sd, lens, stats = _run(model, TwoCuts(), inputs)
    lm, sm, lens_m, _ = _run(model, TwoCuts(mode="mask"), inputs)
    assert (ld - lm).abs().max() < 1e-4 and torch.equal(sd, sm)
    assert stats.stage_kept == [[16, 8], [8, 4]]
    full = inputs["input_ids"].shape[1]
    widths = sorted(set(stats.layer_seq_lens), reverse=True)
    assert stats.layer_seq_lens == [full, widths[1], widths[1], widths[2], widths[2]]
    assert lens == [w + 5 for w in stats.layer_seq_lens] and lens_m == [full + 5] * 5


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_fastv_mean_scores_and_equivalence(attn):
    model, inputs = tiny_llava(attn), _inputs()
    ld, sd, _, stats = _run(model, FastVMean(k=2), inputs)
    lm, sm, _, _ = _run(model, FastVMean(k=2, mode="mask"), inputs)
    assert (ld - lm).abs().max() < 1e-4 and torch.equal(sd, sm)
    if attn == "eager":
        att = tiny_llava("eager")(**inputs, output_attentions=True).attentions[1].mean(1)  # (B, L, L)
        ids = inputs["input_ids"]
        for b in range(2):
            last_vis = int((ids[b] == IMAGE_TOKEN).nonzero().max())
            expected = att[b, last_vis + 1 :].mean(0)
            vis = ids[b] == IMAGE_TOKEN
            assert torch.allclose(stats.scores[b, vis], expected[vis], atol=1e-6)


def test_two_cuts_at_one_layer_refused():
    @dataclass(kw_only=True)
    class Same(Method):
        def stages(self, adapter):
            return [Stage(1, lambda n: n, last_token_attention, "last")] * 2

    with pytest.raises(FastVError, match="two cuts at one layer"):
        Same().apply(tiny_llava())


def test_a_stage_without_keep_must_return_its_counts():
    """keep=None means "the score gives the kept count per sample" (per-image stages); a bare tensor is refused."""

    @dataclass(kw_only=True)
    class NoBudget(Method):
        name = "no_budget"

        def stages(self, adapter):
            return [Stage(1, None, last_token_attention, "last")]

    model = tiny_llava()
    with NoBudget().apply(model), pytest.raises(FastVError, match="no_budget: a stage without `keep`"):
        model(**_inputs())


@dataclass(kw_only=True)
class OneCut(Method):
    """A method written outside fastv: one cut at its layer k, no accounting code of its own."""

    k: int = 2
    name = "one_cut"

    def stages(self, adapter):
        return [Stage(self.k, self.keep_count, last_token_attention, "last")]


@pytest.mark.parametrize("method", [OneCut(k=2, keep=3), OneCut(k=1, ratio=0.75, mode="mask")])
def test_a_new_method_accounts_for_its_layers(method):
    """Method.visual_tokens_per_layer (what fastv.methods.accounting asks) matches the engine's lengths."""
    from fastv.methods.accounting import visual_tokens_per_layer

    model = tiny_llava()
    one = batch([prompt(5, 7, images=1, seed=1)])
    n = int((one["input_ids"] == IMAGE_TOKEN).sum())
    with method.apply(model) as handle:
        model(**one)
    text = one["input_ids"].shape[1] - n
    predicted = visual_tokens_per_layer(method, len(handle.stats.layer_seq_lens), n)
    assert handle.stats.layer_seq_lens == [text + v for v in predicted]
    assert predicted[: method.k] == [n] * method.k


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_two_stage_drop_equals_mask_every_family(family):
    """Two cuts on every family, incl. Gemma3, whose sliding-window decode mask is sized by a cut layer."""
    model, inputs = BUILDERS[family]("sdpa")
    adapter = fastv.resolve(model)
    first = max(1, adapter.min_k)
    if first + 1 >= adapter.num_layers:
        pytest.skip(f"{family}'s tiny model has too few layers for two cuts after layer {first}")

    @dataclass(kw_only=True)
    class Cuts(Method):
        def stages(self, adapter):
            half = lambda n: n - n // 2  # noqa: E731
            return [
                Stage(first, half, last_token_attention, "last"),
                Stage(first + 1, half, last_token_attention, "last"),
            ]

    ld, sd, lens, _ = _run(model, Cuts(), inputs)
    lm, sm, _, _ = _run(model, Cuts(mode="mask"), inputs)
    assert (ld - lm).abs().max() < 1e-4 and torch.equal(sd, sm)
    assert lens[first - 1] > lens[first] > lens[first + 1]
