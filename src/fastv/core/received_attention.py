"""Observe how much attention each vision token *receives* in a vision tower without a [CLS] token.

`fastv.core.vision_taps` reads one query row, the [CLS] token's, of a CLIP-like tower. SigLIP towers
(LLaVA-OneVision, and its video frames) have no [CLS]; methods written for them (HoliTom, its adapted
VisionZip) score a token by the attention it receives, averaged over heads and over every query of
the frame: official `attn_weights.mean(dim=1).mean(dim=1)` on `output_attentions` of the projected
layer. Asking transformers for `output_attentions` forces eager attention and keeps every layer's
T x T matrix; instead we tap the one layer (`fastv.core.hf.attention_tap`) and rebuild its
probabilities in chunks of query rows, so memory stays O(chunk x T) per head.

The tower runs once per modality (LLaVA-OneVision: images first, then videos), inside the model's
forward or, under `generate`, just before the prefill (transformers pre-encodes `mm_encoder_outputs`).
So every call is kept, in order, in `handle.extra[name]` (a list of (n_frames, T) tensors) until the
next top-level forward ends; whether that forward holds a video (`pixel_values_videos`, or a
pre-encoded "video" output) is noted under `handle.extra[name + ".video"]`.

Supported: models whose vision tower has `encoder.layers` (directly or under `vision_model`) and one
int `vision_feature_layer`; other towers are refused with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from fastv.core.errors import UnsupportedModelError
from fastv.core.hf import attention_tap
from fastv.core.hf.attention_tap import query_attention
from fastv.core.hf.families import Adapter

if TYPE_CHECKING:
    from fastv.core.engine import PruneHandle

CHUNK_ELEMENTS = 1 << 25  # probabilities materialised at once (128 MiB of float32)


def projected_layer(adapter: Adapter, method: str) -> torch.nn.Module:
    """The attention module of the vision layer whose output the projector consumes."""
    config = adapter.model.config
    layer = getattr(config, "vision_feature_layer", None)
    if not isinstance(layer, int):
        raise UnsupportedModelError(f"{method} needs one int vision_feature_layer, not {layer!r}")
    inner = getattr(adapter.model, "model", adapter.model)
    tower = getattr(inner, "vision_tower", None)
    encoder = getattr(getattr(tower, "vision_model", tower), "encoder", None)
    layers = getattr(encoder, "layers", None)
    if layers is None:
        raise UnsupportedModelError(f"{method}: {adapter.family.name}'s vision tower has no encoder layers to observe")
    f = layer if layer >= 0 else len(layers) + 1 + layer  # hidden_states[f] is the output of layer f-1
    if not 1 <= f <= len(layers):
        raise UnsupportedModelError(f"vision_feature_layer={layer} selects no attention layer's output")
    return layers[f - 1].self_attn


def received_attention(module, query, key, mask, kwargs) -> torch.Tensor:
    """(N, T): attention each key receives, averaged over heads and all query rows (float32)."""
    n, heads, t = query.shape[:3]
    step = max(1, CHUNK_ELEMENTS // max(1, n * heads * key.shape[-2]))
    total = torch.zeros(n, key.shape[-2], device=query.device)
    for start in range(0, t, step):
        probs = query_attention(module, query, key, mask, kwargs, rows=slice(start, start + step))
        total += probs.sum(dim=(1, 2))
    return total / (heads * t)


def record_received_attention(handle: PruneHandle, name: str, method: str) -> Callable[[], None]:
    """At every vision-tower call, append its received attention (N, T) to `handle.extra[name]` (cleared as
    each forward of the model ends)."""
    attn = projected_layer(handle.adapter, method)

    def on_forward(module, args, kwargs) -> None:
        encoded = kwargs.get("mm_encoder_outputs") or {}
        video = kwargs.get("pixel_values_videos") is not None or encoded.get("video") is not None
        handle.extra[name + ".video"] = video

    def on_forward_end(*args) -> None:
        handle.extra[name] = []

    def on_attention(module, query, key, mask, kwargs) -> None:
        with torch.no_grad():
            handle.extra.setdefault(name, []).append(received_attention(module, query, key, mask, kwargs))

    undo_tap = attention_tap.install(handle.model, "vision_config", [attn], on_attention)
    hooks = [
        handle.model.register_forward_pre_hook(on_forward, with_kwargs=True),
        handle.model.register_forward_hook(on_forward_end, always_call=True),
    ]

    def remove() -> None:
        for hook in hooks:
            hook.remove()
        undo_tap()
        handle.extra.pop(name, None)
        handle.extra.pop(name + ".video", None)

    return remove
