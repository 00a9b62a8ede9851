"""Score a cut with the cut layer's own attention, computed on that layer's input before the cut.

FastV ranks the tokens cut at layer K by the attention layer K-1 already computed. PDrop's official
code (Cooperx521/PyramidDrop, `pdrop_rank_drop`) ranks the cut before layer c by layer c's own
attention: layer c's input layernorm, q/k projections and RoPE applied to the hidden states entering
layer c, the last prompt token's row, softmax, mean over heads. Layer c has not run yet when its
pre-hook cuts, so we run just its input norm and self-attention on the pre-cut rows, with the
position embeddings and mask that layer receives, no KV cache, and let the engine's attention tap
(already on that module) recompute the query row it needs. The family's own attention module does
the projections, q/k norms (Qwen3, Gemma3), RoPE variant (M-RoPE) and scaling, so nothing of any
model is re-implemented here.

Cost: one extra input norm plus the attention block on the pre-cut rows (its q/k/v/o projections,
O(L d^2), and one attention call) per cut; the scores themselves are one query row, O(L d). The
prefill FLOPs account (`fastv.flops`) counts the layers' work, not this scoring overhead.
"""

from __future__ import annotations

from typing import Any

import torch

from fastv.core.errors import FastVError
from fastv.core.hf import compat


def attention_module(layer: torch.nn.Module, index: int) -> torch.nn.Module:
    """The self-attention of a decoder layer that own-layer scoring can run (else a clear error)."""
    attn = getattr(layer, "self_attn", None)
    if attn is None or getattr(layer, "input_layernorm", None) is None:
        raise FastVError(
            f"decoder layer {index} ({type(layer).__name__}) has no input_layernorm + self_attn pair: "
            "scoring a cut at its own layer is not supported for this model"
        )
    return attn


def run_own_attention(layer: torch.nn.Module, hidden: torch.Tensor, kwargs: dict[str, Any]) -> None:
    """Run `layer`'s input norm and self-attention on `hidden` (its pre-cut input), cache untouched.

    kwargs are the layer's own keyword arguments in the geometry of `hidden` (position embeddings,
    mask, position ids). The output is discarded: a tap on `layer.self_attn` reads its q and k.
    """
    passed = compat.without_cache(kwargs)  # a scoring-only call must not write the KV cache
    # .forward, not __call__: module hooks (transformers' output_attentions recorder among them) must
    # not see this extra call.
    layer.self_attn.forward(hidden_states=layer.input_layernorm(hidden), **passed)
