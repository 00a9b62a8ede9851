"""Refusals the engine raises before it hooks a model or runs a call, each naming the fix.

One home for "fastv cannot run this correctly" so that the engine's hooks stay about running:
stage plans that do not fit the model, caches and attention implementations fastv cannot shorten,
and sequences longer than a pruned layer's sliding window (pruned and unpruned layers would evict
different tokens).
"""

from __future__ import annotations

from typing import Any

from fastv.core import positions
from fastv.core.errors import FastVError
from fastv.core.hf import compat
from fastv.core.hf.families import Adapter
from fastv.core.stages import Stage, StagePlan


def check_stages(stages: list[Stage], adapter: Adapter, method: StagePlan) -> None:
    """Every stage's layer exists, may be cut, and asks for what the method's mode can express."""
    n, name = adapter.num_layers, adapter.family.name
    for stage in stages:
        if stage.layer >= n:
            raise FastVError(
                f"k={stage.layer} is out of range: the {name} language model has {n} layers; choose k < {n}"
            )
        if stage.layer < adapter.min_k:
            raise FastVError(
                f"k={stage.layer} is too small for {name}: its first {adapter.min_k} layers receive deepstack "
                f"visual features on the full sequence; choose k >= {adapter.min_k}"
            )
        if stage.attention_rows and stage.layer == 0 and stage.scored_at == "previous":
            raise FastVError("a cut at layer 0 has no earlier layer to take attention from")
        if stage.positions == "contiguous":
            positions.check_supported(adapter.model.config.model_type, method.name)
        if stage.merge is not None and method.mode == "mask":
            raise FastVError(f"{method.name} merges tokens, which mode='mask' cannot express: use 'drop'")
    if len({s.layer for s in stages}) != len(stages):
        raise FastVError("two cuts at one layer: give each stage its own layer")


def check_attention(adapter: Adapter) -> None:
    """Paged and flex attention keep their own KV layout, which per-layer shortening would corrupt."""
    impl = compat.attention_implementation(adapter.text_config)
    if impl.startswith("paged") or "flex" in impl:
        raise FastVError(f"attention implementation {impl!r} is not supported: use 'sdpa', 'eager' or flash")


def check_cache(cache: Any) -> None:
    """Fixed-size cache layers cannot hold a shorter sequence in the layers after a cut."""
    fixed = compat.non_dynamic_layer(cache)
    if fixed is not None:
        raise FastVError(
            f"{type(cache).__name__} ({fixed}) has fixed-size layers that fastv cannot "
            "shorten: use the default DynamicCache (no cache_implementation='static', no torch.compile "
            "with static shapes)"
        )


def check_window(adapter: Adapter, first_cut: int, total_len: int) -> None:
    """Refuse a sequence longer than the sliding window of any layer from the first cut on."""
    cfg = adapter.text_config
    window = getattr(cfg, "sliding_window", None)
    if window is None or getattr(cfg, "use_sliding_window", True) is False:
        return
    types = getattr(cfg, "layer_types", None)
    if types is not None and "sliding_attention" not in types[first_cut:]:
        return
    if total_len > window:
        raise FastVError(
            f"sequence of {total_len} tokens exceeds the sliding window ({window}) of the pruned layers: "
            "pruned and unpruned layers would evict different tokens. Shorten the prompt/generation "
            "or use a model without a shorter sliding window"
        )
