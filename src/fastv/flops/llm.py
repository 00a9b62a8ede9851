"""The language model's FLOPs: the FastV paper's estimate, the schedule of a cut, a counter."""

from __future__ import annotations

import math

from fastv.core.errors import FastVError

__all__ = ["fastv_layer_seq_lens", "flop_counter", "kept_count", "theory_layer_flops", "theory_reduction"]


# --------------------------------------------------------------------------- theory (the paper)


def theory_layer_flops(n: float, d: int, m: int) -> float:
    """The paper's per-layer cost with n tokens: 4nd^2 (Q,K,V,O) + 2n^2d (QK^T, AV) + 2ndm (FFN)."""
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def theory_reduction(d: int, m: int, num_layers: int, k: int, ratio: float, n_visual: int, n_text: int = 0) -> float:
    """Fraction of LLM FLOPs FastV saves by the paper's formula: K layers at n, the rest at the kept count.

    With `n_text=0` this is exactly the paper's image-token-only figure; a prompt adds unpruned tokens.
    """
    n = n_visual + n_text
    n_hat = n_text + (1 - ratio) * n_visual
    full = num_layers * theory_layer_flops(n, d, m)
    pruned = k * theory_layer_flops(n, d, m) + (num_layers - k) * theory_layer_flops(n_hat, d, m)
    return 1 - pruned / full


def kept_count(n_visual: int, ratio: float) -> int:
    """Visual tokens FastV keeps at pruning ratio R: the same rounding as `FastV.keep_count`."""
    if not 0.0 <= ratio <= 1.0:
        raise FastVError(f"ratio must be in [0, 1], got {ratio}")
    return n_visual - round(ratio * n_visual)


def fastv_layer_seq_lens(num_layers: int, n_tokens: int, n_visual: int, k: int, kept: int) -> list[int]:
    """Sequence length per layer under FastV: n for layers < K, n - dropped from layer K on."""
    if not 0 <= k <= num_layers:
        raise FastVError(f"K must be in [0, {num_layers}], got {k}")
    short = n_tokens - (n_visual - kept)
    return [n_tokens] * k + [short] * (num_layers - k)


# --------------------------------------------------------------------------- measuring


def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Dense attention: QK^T and AV, 2 FLOPs per multiply-accumulate each."""
    *batch, heads, s_q, d_qk = query_shape
    s_kv, d_v = key_shape[-2], value_shape[-1]
    b = math.prod(batch)
    return 2 * b * heads * s_q * s_kv * d_qk + 2 * b * heads * s_q * s_kv * d_v


def flop_counter():
    """A `FlopCounterMode` that also counts CPU SDPA, which torch leaves without a formula.

    Without it, attention on CPU (`aten._scaled_dot_product_flash_attention_for_cpu`) counts zero.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ops = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    mapping = {ops: _sdpa_flop} if ops is not None else {}
    return FlopCounterMode(display=False, custom_mapping=mapping)
