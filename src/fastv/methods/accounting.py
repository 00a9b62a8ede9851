"""Visual tokens each decoder layer computes under a method, without running the model.

With `fastv.flops.prefill_flops(text_config, lens)` this predicts any method's prefill FLOPs:
`lens[l] = n_text + images * per_layer[l]`. The tests check it against the lengths the engine
measured (`PruneStats.layer_seq_lens`) for every method.
"""

from __future__ import annotations

from fastv.core.errors import FastVError
from fastv.methods.base import Method
from fastv.methods.compose import Composite
from fastv.methods.dart import DART
from fastv.methods.fastv import FastV
from fastv.methods.pdrop import PDrop
from fastv.methods.random_uniform import _LayerChoice


def visual_tokens_per_layer(method: Method, num_layers: int, n: int) -> list[int]:
    """Visual tokens of one n-token image that each of `num_layers` decoder layers computes.

    FastV's budget is per sample: for a prompt with several images, call it with the sample's total.
    Pre-LM methods (pool, divprune, visionzip) and random/uniform at k=0 cut before layer 0.
    """
    own = getattr(method, "visual_tokens_per_layer", None)
    if own is not None:  # methods whose schedule is their own (e.g. recycled tokens on top of the kept ones)
        return own(num_layers, n)
    if method.mode == "mask":
        return [n] * num_layers  # masked tokens are still computed
    if isinstance(method, Composite):  # the in-LLM part sees what the pre-LM part kept
        pre = visual_tokens_per_layer(method.parts[0], num_layers, n)
        post = visual_tokens_per_layer(method.parts[1], num_layers, pre[0])
        return [min(a, b) for a, b in zip(pre, post, strict=True)]
    if isinstance(method, PDrop):
        cuts = method.cuts(num_layers)
        counts = method.schedule(n, num_layers)
        out, current = [], n
        for layer in range(num_layers):
            if layer in cuts:
                current = counts[cuts.index(layer)]
            out.append(current)
        return out
    keep = method.keep_count(n)
    if not 0 <= keep <= n:
        raise FastVError(f"{method.name}: cannot keep {keep} of {n} visual tokens")
    k = method.k if isinstance(method, (FastV, _LayerChoice, DART)) else 0
    return [n] * k + [keep] * (num_layers - k)
