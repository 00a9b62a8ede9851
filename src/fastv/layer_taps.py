"""Record what a language-model layer computes during a prefill, for methods that rank by it.

The engine taps attention only for the rows FastV-style scores need. Some methods rank by other
per-token signals of a layer: DART (arXiv 2502.11494) by the L1 norm of every token's key at the
layer before its cut. `record_keys` stores a layer's post-RoPE keys (as the model's own attention
kernel received them, before grouped-query repetition) in `handle.extra[name]` at every prefill.

It reuses `fastv.attention_tap` and coexists with the engine's own tap: when the text model already
runs the tapping attention implementation, only the callback is added (and later removed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fastv import attention_tap
from fastv.errors import FastVError

if TYPE_CHECKING:
    from fastv.engine import PruneHandle


def record_keys(handle: PruneHandle, layer: int, name: str) -> Callable[[], None]:
    """At every prefill, store layer `layer`'s keys (B, kv_heads, L, head_dim) in `handle.extra[name]`.

    A prefill is a call whose queries see no cached keys (query length == key length); decode
    steps leave the entry alone, so it always holds the last prefill's keys for the rows computed
    at that layer (`StageContext.rows` of a cut right after it).
    """
    attn = getattr(handle.adapter.layers[layer], "self_attn", None)
    if attn is None:
        raise FastVError(f"layer {layer} of {handle.adapter.family.name} has no self_attn module to read keys from")

    def on_attention(module, query, key, mask, kwargs) -> None:
        if query.shape[-2] == key.shape[-2]:
            handle.extra[name] = key.detach()

    undo = attention_tap.install(handle.model, handle.adapter.text_config_key, [attn], on_attention)

    def remove() -> None:
        undo()
        handle.extra.pop(name, None)

    return remove
