"""VisionZip (Yang et al., CVPR 2025, arXiv 2412.04467): dominant tokens plus merged context.

A few visual tokens receive most of the vision tower's attention. VisionZip keeps, per image, the
`keep - contextual` "dominant" tokens that the CLS token attends to most (head-averaged attention
at the layer whose output LLaVA feeds the projector: `vision_feature_layer`), then merges the rest
into `contextual` tokens: targets are taken at even steps through the remaining tokens, every other
remaining token joins the target whose key (head-averaged, at the same layer) is most cosine-similar,
and each target becomes the mean of its group.

As in the paper, the merge happens on the vision features before the projector: we observe the
tower's attention with a tap, compress on a forward hook of the projector, and project the
contextual tokens with the projector itself. The language model then drops the other tokens at
layer 0 and writes the contextual features into the target tokens' rows, so each contextual token
sits at its target's original position. Default split: contextual = round(keep * 5 / 32), the
paper's 54+10, 108+20, 162+30 for 64/128/192.

Supported: LLaVA-1.5 (model_type "llava", a CLIP-like tower with a CLS token at index 0, one int
`vision_feature_layer`); other families are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fastv import attention_tap
from fastv.attention_tap import query_attention
from fastv.errors import FastVError, UnsupportedModelError
from fastv.families import Adapter
from fastv.methods.base import Method, Stage, StageContext
from fastv.methods.grid import ImageRun
from fastv.methods.per_image import Choice, PerImageStage

if TYPE_CHECKING:
    from fastv.engine import PruneHandle

KEY = "visionzip"


@dataclass
class Zipped:
    """One image's compression, in indices of its visual tokens."""

    dominant: torch.Tensor  # (d,)
    targets: torch.Tensor  # (c,) positions the contextual tokens take
    contextual: torch.Tensor  # (c, H) projected contextual features


def zip_image(
    cls_attention: torch.Tensor,
    keys: torch.Tensor,
    features: torch.Tensor,
    dominant: int,
    contextual: int,
    project: Callable[[torch.Tensor], torch.Tensor],
) -> Zipped:
    """cls_attention (T,), keys (T, d), features (T, Hv) of one image -> its dominant + contextual tokens."""
    n = features.shape[0]
    dom = cls_attention.float().topk(dominant).indices.sort().values
    rest = torch.ones(n, dtype=torch.bool, device=features.device)
    rest[dom] = False
    rest = rest.nonzero().squeeze(1)
    if contextual == 0:
        return Zipped(dom, rest[:0], features.new_zeros(0, 0))
    step = max(1, rest.numel() // contextual)
    pick = torch.zeros(rest.numel(), dtype=torch.bool, device=features.device)
    pick[torch.arange(0, rest.numel(), step, device=features.device)[:contextual]] = True
    targets, others = rest[pick], rest[~pick]
    k = torch.nn.functional.normalize(keys.float(), dim=-1)
    group = (k[others] @ k[targets].T).argmax(1)
    sums = features[targets].float().index_add(0, group, features[others].float())
    counts = torch.ones(contextual, device=features.device).index_add(
        0, group, torch.ones_like(group, dtype=torch.float)
    )
    merged = (sums / counts[:, None]).to(features.dtype)
    return Zipped(dom, targets, project(merged))


@dataclass(kw_only=True)
class VisionZip(Method):
    """Keep `keep` tokens per image: keep - contextual dominant (CLS attention) + contextual merged.

    contextual: merged tokens per image (default round(keep * 5 / 32)). LLaVA-1.5 only; drop mode only.
    """

    contextual: int | None = None

    name = "visionzip"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.contextual is not None and self.contextual < 0:
            raise FastVError(f"contextual={self.contextual} must be >= 0")

    def split(self, n: int) -> tuple[int, int]:
        """(dominant, contextual) tokens kept of an n-token image."""
        k = self.keep_count(n)
        c = round(k * 5 / 32) if self.contextual is None else self.contextual
        if not 0 <= k <= n or c > k:
            raise FastVError(
                f"visionzip: cannot keep {k} of {n} visual tokens with {c} contextual; need contextual <= keep <= {n}"
            )
        return k - c, c

    def stages(self, adapter: Adapter) -> list[Stage]:
        _vision_layer(adapter)
        return [PerImageStage(self.name, self.choose).stage(0, merging=True)]

    def prepare(self, handle: PruneHandle) -> list[Callable[[], None]]:
        model = handle.model
        attn, skip = _vision_layer(handle.adapter)
        seen: dict[str, torch.Tensor] = {}

        def on_attention(module, query, key, mask, kwargs) -> None:
            seen["cls"] = query_attention(module, query, key, mask, kwargs, rows=0).mean(1)[:, 0]  # (N, T+1)
            seen["keys"] = key.float().mean(1)  # (N, T+1, d), averaged over heads

        def on_projector(module, args, output) -> None:
            feats = args[0]
            if "cls" not in seen:
                raise FastVError("visionzip: the projector ran without the vision tower's attention being observed")
            cls, keys = seen.pop("cls")[:, skip:], seen.pop("keys")[:, skip:]
            dominant, contextual = self.split(feats.shape[1])
            handle.extra[KEY] = [
                zip_image(cls[i], keys[i], feats[i], dominant, contextual, module.forward)
                for i in range(feats.shape[0])
            ]

        undo_tap = attention_tap.install(model, "vision_config", [attn], on_attention)
        projector = _inner(model).multi_modal_projector
        hook = projector.register_forward_hook(on_projector)
        return [undo_tap, hook.remove]

    def choose(self, ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
        zipped = ctx.extra.get(KEY)
        if zipped is None or run.number >= len(zipped):
            raise FastVError(
                f"visionzip: the prompt holds more images than the vision tower encoded ({len(zipped or [])}); "
                "pass pixel_values for every image"
            )
        z = zipped[run.number]
        dev = run.positions.device
        targets = run.positions[z.targets.to(dev)]
        keep = run.positions[torch.cat([z.dominant, z.targets]).to(dev)].sort().values
        return Choice(keep, targets, z.contextual)


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "model", model)


def _vision_layer(adapter: Adapter) -> tuple[torch.nn.Module, int]:
    """The vision attention module whose output LLaVA projects, and 1 if CLS is cropped (else 0)."""
    config = adapter.model.config
    if config.model_type != "llava":
        raise UnsupportedModelError(
            f"visionzip supports LLaVA-1.5 (model_type 'llava'), not {adapter.family.name}: it needs the CLS "
            "attention of a CLIP-like tower at the projected feature layer"
        )
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise UnsupportedModelError(f"visionzip needs one vision_feature_layer, not {layer!r}")
    tower = _inner(adapter.model).vision_tower
    layers = getattr(tower, "vision_model", tower).encoder.layers
    f = layer if layer >= 0 else len(layers) + 1 + layer  # hidden_states[f] is the output of layer f-1
    if not 1 <= f <= len(layers):
        raise UnsupportedModelError(f"vision_feature_layer={layer} selects no attention layer's output")
    skip = 1 if getattr(config, "vision_feature_select_strategy", "default") == "default" else 0
    return layers[f - 1].self_attn, skip
