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

from fastv import attention_tap, compat
from fastv.attention_tap import query_attention
from fastv.errors import FastVError, UnsupportedModelError
from fastv.families import Adapter

if TYPE_CHECKING:
    from fastv.engine import PruneHandle


def feature_layer(adapter: Adapter, method: str) -> tuple[torch.nn.ModuleList, int, int]:
    """The vision encoder's layers, the index of the layer whose output LLaVA projects, and 1 if [CLS] is cropped."""
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
    return layers, f - 1, skip


def feature_attention_layer(adapter: Adapter, method: str) -> tuple[torch.nn.Module, int]:
    """The vision attention module whose layer's output LLaVA projects, and 1 if [CLS] is cropped (else 0)."""
    layers, index, skip = feature_layer(adapter, method)
    return layers[index].self_attn, skip


def record_cls_attention(handle: PruneHandle, name: str, method: str, index: int | None = None) -> Callable[[], None]:
    """At every vision-tower call, store its [CLS] attention (n_images, T) in `handle.extra[name]`.

    index: the vision layer to read (default: the one whose output LLaVA projects).
    """
    layers, feature, skip = feature_layer(handle.adapter, method)
    index = feature if index is None else index
    if not 0 <= index < len(layers):
        raise FastVError(f"{method}: vision layer {index} does not exist (the tower has {len(layers)})")
    attn = layers[index].self_attn

    def on_attention(module, query, key, mask, kwargs) -> None:
        probs = query_attention(module, query, key, mask, kwargs, rows=0).mean(1)[:, 0]  # (N, T+1)
        handle.extra[name] = probs[:, skip:]

    undo = attention_tap.install(handle.model, "vision_config", [attn], on_attention)

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


Decide = Callable[[int, torch.Tensor], "torch.Tensor | None"]


class EncoderCut:
    """A stage inside the vision encoder: drop rows of the tower's sequence between its layers.

    Before each encoder layer i = 1 .. (the projected feature layer), `decide(i - 1, hidden)` sees
    the output of layer i - 1 (n_images, T, D) and returns the rows to keep (n_images, T') as
    indices into the current rows, or None to keep all. The kept rows' original indices are
    tracked; LLaVA then projects fewer features than the prompt has image tokens, so a forward
    hook on the projector scatters them back into a full-length tensor (zeros at dropped patches)
    and stores each image's kept patch indices (n_images, k), sorted, in `handle.extra[name]`.
    A layer-0 stage of the language model then keeps exactly those positions (drop) or masks
    the rest (mask): the dropped rows' zeros are never attended to.

    Rows are dropped for every image of a tower call alike (one rectangular tensor), so `decide`
    must return the same count for every image of the call.
    """

    def __init__(self, handle: PruneHandle, name: str, method: str, decide: Decide) -> None:
        self.handle, self.name, self.decide = handle, name, decide
        self.layers, self.index, self.skip = feature_layer(handle.adapter, method)
        if self.skip != 1:
            raise UnsupportedModelError(
                f"{method} drops rows inside the vision tower and keeps its [CLS] row apart: it needs "
                "vision_feature_select_strategy='default' (the [CLS] token cropped)"
            )
        self.rows: torch.Tensor | None = None  # (n_images, T') original row indices of the current rows
        self.full = 0

    def install(self) -> list[Callable[[], None]]:
        undo = [self.layers[0].register_forward_pre_hook(self._start, with_kwargs=True).remove]
        for i in range(1, self.index + 1):
            undo.append(self.layers[i].register_forward_pre_hook(self._cut(i), with_kwargs=True).remove)
        model = getattr(self.handle.model, "model", self.handle.model)
        undo.append(model.multi_modal_projector.register_forward_hook(self._expand).remove)
        undo.append(lambda: self.handle.extra.pop(self.name, None))
        return undo

    def _start(self, module, args, kwargs) -> None:
        hidden = compat.hidden_states(args, kwargs)
        n, t = hidden.shape[:2]
        self.rows = torch.arange(t, device=hidden.device).expand(n, t)
        self.full = t

    def _cut(self, i: int):
        def hook(module, args, kwargs):
            hidden = compat.hidden_states(args, kwargs)
            with torch.no_grad():
                keep = self.decide(i - 1, hidden)
            if keep is None:
                return None
            keep = keep.to(hidden.device)
            self.rows = self.rows.gather(1, keep)
            new = hidden.gather(1, keep[..., None].expand(-1, -1, hidden.shape[-1]))
            return compat.replace_hidden_states(args, kwargs, new)

        return hook

    def _expand(self, module, args, output: torch.Tensor) -> torch.Tensor | None:
        if self.rows is None:
            raise FastVError(f"{self.name}: the projector ran without the vision tower's layers being observed")
        patches = self.rows[:, self.skip :] - self.skip  # (n, k) kept patch indices
        self.rows = None
        self.handle.extra[self.name] = patches
        if patches.shape[1] == self.full - self.skip:
            return None
        full = output.new_zeros(output.shape[0], self.full - self.skip, output.shape[-1])
        return full.scatter(1, patches[..., None].expand(-1, -1, output.shape[-1]), output)
