"""Observe the vision tower during a prefill, for methods that rank visual tokens by its attention.

Several methods (VisionZip, HoloV, VScan, FlowCut) score a visual token by the attention the
vision tower's [CLS] token pays it at the layer whose output the projector consumes. transformers
returns those probabilities only with eager attention and `output_attentions`; instead we tap the
tower's own attention (sdpa, eager or flash, through `fastv.attention_tap`) and recompute the one
[CLS] query row: O(heads x T x d) per image.

`record_cls_attention` stores, at every vision-tower call, a (n_images, T) tensor of head-averaged
[CLS] attention over the tokens the projector keeps (the patch tokens when the [CLS] token is
cropped, LLaVA's `vision_feature_select_strategy="default"`), images in the tower's batch order
(`ImageRun.number`).

Supported: LLaVA-1.5 (model_type "llava": a CLIP-like tower with [CLS] at index 0 and one int
`vision_feature_layer`); other families are refused with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from fastv.attention_tap import query_attention
from fastv.errors import FastVError, UnsupportedModelError
from fastv.families import Adapter
from fastv.layer_taps import tap

if TYPE_CHECKING:
    from fastv.engine import PruneHandle


def feature_attention_layer(adapter: Adapter, method: str) -> tuple[torch.nn.Module, int]:
    """The vision attention module whose layer's output LLaVA projects, and 1 if [CLS] is cropped (else 0)."""
    config = adapter.model.config
    if config.model_type != "llava":
        raise UnsupportedModelError(
            f"{method} supports LLaVA-1.5 (model_type 'llava'), not {adapter.family.name}: it needs the [CLS] "
            "attention of a CLIP-like vision tower at the projected feature layer"
        )
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise UnsupportedModelError(f"{method} needs one vision_feature_layer, not {layer!r}")
    model = getattr(adapter.model, "model", adapter.model)
    tower = model.vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers
    f = layer if layer >= 0 else len(layers) + 1 + layer  # hidden_states[f] is the output of layer f-1
    if not 1 <= f <= len(layers):
        raise UnsupportedModelError(f"vision_feature_layer={layer} selects no attention layer's output")
    skip = 1 if getattr(config, "vision_feature_select_strategy", "default") == "default" else 0
    return layers[f - 1].self_attn, skip


def record_cls_attention(handle: PruneHandle, name: str, method: str) -> Callable[[], None]:
    """At every vision-tower call, store its [CLS] attention (n_images, T) in `handle.extra[name]`."""
    attn, skip = feature_attention_layer(handle.adapter, method)

    def on_attention(module, query, key, mask, kwargs) -> None:
        probs = query_attention(module, query, key, mask, kwargs, rows=0).mean(1)[:, 0]  # (N, T+1)
        handle.extra[name] = probs[:, skip:]

    undo = tap(handle.model, "vision_config", [attn], on_attention)

    def remove() -> None:
        undo()
        handle.extra.pop(name, None)

    return remove


def images_attention(ctx_extra: dict, name: str, number: int, size: int, method: str) -> torch.Tensor:
    """Image `number`'s recorded [CLS] attention (size,), or a clear error when it was not observed."""
    seen = ctx_extra.get(name)
    if seen is None or number >= seen.shape[0]:
        count = 0 if seen is None else seen.shape[0]
        raise FastVError(
            f"{method}: the prompt holds more images than the vision tower encoded ({count}); "
            "pass pixel_values for every image"
        )
    if seen.shape[1] != size:
        raise FastVError(f"{method}: image {number} has {size} visual tokens but the tower attended {seen.shape[1]}")
    return seen[number]
