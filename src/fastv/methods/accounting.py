"""Visual tokens each decoder layer computes under a method, without running the model.

With `fastv.flops.prefill_flops(text_config, lens)` this predicts any method's prefill FLOPs:
`lens[l] = n_text + images * per_layer[l]`. Each method answers for itself
(`Method.visual_tokens_per_layer`: one cut by default; PDrop, compositions, SparseVLM and VScan
override it); the tests check it against the lengths the engine measured
(`PruneStats.layer_seq_lens`) for every method.
"""

from __future__ import annotations

from fastv.methods.base import Method


def visual_tokens_per_layer(method: Method, num_layers: int, n: int) -> list[int]:
    """Visual tokens of one n-token image that each of `num_layers` decoder layers computes.

    FastV's budget is per sample: for a prompt with several images, call it with the sample's total.
    Pre-LM methods (pool, divprune, visionzip) and random/uniform at k=0 cut before layer 0.
    """
    return method.visual_tokens_per_layer(num_layers, n)
