"""`fastv.run`: the one path every tool runs a model through, under any method or none."""

from __future__ import annotations

import pytest
import torch
from tiny_llava import batch, prompt, tiny_llava

from fastv import FastVError, flops, make, run


class Ids:
    """A stand-in tokenizer: decoding returns the ids as text, so answers are comparable."""

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(map(str, row.tolist())) + " " for row in rows]


@pytest.fixture(scope="module")
def model():
    return tiny_llava(layers=4)


def test_options_go_to_the_methods_that_have_them():
    assert run.method_from_options("pool", k=2, scorer="last_token", keep=4).keep == 4  # no k, no scorer: ignored
    assert run.method_from_options("random", k=None, keep=4).k == 0  # None: the method's default
    assert run.method_from_options("fastv", k=1, ratio=0.25, scorer="random").scorer == "random"
    assert run.method_from_options("visionzip+fastv", k=1, keep=4).k == 1
    with pytest.raises(FastVError, match="has no setting pre_keep"):
        run.method_from_options("pool", keep=4, pre_keep=8)
    with pytest.raises(FastVError, match="k=0 leaves no layer"):
        run.method_from_options("fastv", k=0)
    assert run.describe(make("pool", keep=4)) == "pool keep=4"
    assert run.describe(make("fastv", ratio=0.5)) == "fastv k=2 r=0.5"
    assert run.describe(None) == "full model"


def test_generate_equals_plain_generate_under_the_method(model):
    inputs = batch([prompt(5, 7, images=1, seed=1), prompt(3, 4, images=1, seed=2)])
    method = make("pool", keep=4)
    got = run.generate(model, Ids(), inputs, method, max_new_tokens=3, logprobs=True)
    with make("pool", keep=4).apply(model) as handle:
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)  # fmt: skip
    width = inputs["input_ids"].shape[1]
    assert got.token_ids == out.sequences[0, width:].tolist()
    assert got.texts == [" ".join(map(str, row.tolist())) for row in out.sequences[:, width:]]
    assert got.stats.num_kept == handle.stats.num_kept == [4, 4]
    torch.testing.assert_close(got.logprobs, torch.log_softmax(out.logits[0][0].float(), -1))
    assert run.generate(model, Ids(), inputs, None, max_new_tokens=1).stats is None


def test_prefill_flops_are_the_engines_count(model):
    one = batch([prompt(5, 7, images=1, seed=1)])
    n = one["input_ids"].shape[1]
    pruned = run.prefill(model, one, make("fastv", k=2, keep=4))
    assert pruned.stats.layer_seq_lens == [n, n, n - 12, n - 12] and pruned.output.logits.shape[1] == 1
    assert run.prefill_flops(model, pruned.stats, n) == flops.prefill_flops(model.config, [n, n, n - 12, n - 12])
    assert run.prefill_flops(model, None, n) == flops.prefill_flops(model.config, [n] * 4)
    assert run.layer_seq_lens(model, None, n) == [n] * 4
