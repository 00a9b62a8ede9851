"""VisionZip (Yang et al., CVPR 2025, arXiv 2412.04467): dominant tokens plus merged context.

A few visual tokens receive most of the vision tower's attention. As the official code does
(dvlab-research/VisionZip, `CLIPVisionTower_VisionZip.forward`), per image and at the layer whose
output LLaVA feeds the projector (`vision_feature_layer`):

1. dominant: the [CLS] token plus the `dominant - 1` patches that [CLS] attends to most (attention
   summed over heads); the paper's 54 dominant tokens are 53 patches + [CLS];
2. contextual: of the remaining patches (in raster order), targets are taken at even steps
   (step = max(1, remaining // contextual)); every other remaining patch joins the target whose
   key (the layer's raw keys, averaged over heads) is most cosine-similar (ties: the first target);
   each contextual token is `target + mean(the patches that joined it)` (just the target if none did);
3. the image becomes one block, [CLS, dominant patches in raster order, contextual tokens in target
   order], projected by the model's own projector.

fastv observes the tower's attention with a tap and the layer's output (for [CLS]) with a hook,
compresses on a forward hook of the projector, and writes the block into the image's kept rows at
layer 0. With positions="contiguous" (the default, official) the block has contiguous positions, so
the language model sees exactly the official sequence. positions="original" is fastv's variant: each
dominant patch keeps its own position and each contextual token takes its target's; [CLS] has no
patch position there, so that variant leaves it out (cls=False) and keeps one more patch instead.
`kept_positions` in the stats lists the dominant patches, the targets, and (with [CLS]) the first
free position of the image, whose row carries [CLS].

HF LLaVA-1.5 drops [CLS] before the projector (`vision_feature_select_strategy="default"`, as the
original LLaVA-1.5's `select_feature="patch"` does), so the model never saw [CLS] in training;
official VisionZip feeds it anyway, and so does fastv by default (`cls=False` to leave it out).
Default split: contextual = round(keep * 5 / 32), the paper's 54+10, 108+20, 162+30 for 64/128/192.

Supported: LLaVA-1.5 (model_type "llava", a CLIP-like tower with [CLS] at index 0, one int
`vision_feature_layer`); other families are refused. Drop mode only (it merges).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fastv import attention_tap
from fastv.attention_tap import query_attention
from fastv.errors import FastVError
from fastv.families import Adapter
from fastv.methods.base import Method, Stage, StageContext
from fastv.methods.grid import ImageRun
from fastv.methods.per_image import Choice, PerImageStage
from fastv.vision_taps import feature_layer

if TYPE_CHECKING:
    from fastv.engine import PruneHandle

KEY = "visionzip"


@dataclass
class Zipped:
    """One image's compression, in indices of its patches (0 = the first patch after [CLS])."""

    dominant: torch.Tensor  # (d,) dominant patches, raster order
    targets: torch.Tensor  # (c,) the contextual tokens' target patches, target order
    block: torch.Tensor  # (cls + d + c, H) projected features: [CLS?, dominant, contextual]
    cls: bool  # whether the block starts with [CLS]
    patches: int  # patches of the image (its visual tokens minus a [CLS] slot under strategy "full")


def zip_image(
    cls_attention: torch.Tensor,
    keys: torch.Tensor,
    features: torch.Tensor,
    projected: torch.Tensor,
    cls_feature: torch.Tensor | None,
    dominant: int,
    contextual: int,
    project: Callable[[torch.Tensor], torch.Tensor],
) -> Zipped:
    """One image. cls_attention (T,): [CLS]'s attention to each patch; keys (T, d), features (T, Hv) and
    projected (T, H) (the projector's output: dominant rows are reused) of the patches; cls_feature (Hv,)
    or None to leave [CLS] out; dominant: patches kept by attention. Only [CLS] and the merged tokens
    go through `project` again."""
    n = features.shape[0]
    dom = cls_attention.float().topk(dominant).indices.sort().values
    rest = torch.ones(n, dtype=torch.bool, device=features.device)
    rest[dom] = False
    rest = rest.nonzero().squeeze(1)
    cls = cls_feature[None] if cls_feature is not None else features[:0]

    def block(merged: torch.Tensor) -> torch.Tensor:
        new = project(torch.cat([cls, merged])) if cls.shape[0] + merged.shape[0] else projected[:0]
        return torch.cat([new[: cls.shape[0]], projected[dom], new[cls.shape[0] :]])

    if contextual == 0:
        return Zipped(dom, rest[:0], block(features[:0]), cls_feature is not None, n)
    step = max(1, rest.numel() // contextual)
    pick = torch.zeros(rest.numel(), dtype=torch.bool, device=features.device)
    pick[torch.arange(0, rest.numel(), step, device=features.device)[:contextual]] = True
    targets, others = rest[pick], rest[~pick]
    k = torch.nn.functional.normalize(keys.float(), dim=-1)
    group = (k[others] @ k[targets].T).argmax(1)
    sums = torch.zeros(targets.numel(), features.shape[1], device=features.device).index_add(
        0, group, features[others].float()
    )
    counts = torch.zeros(targets.numel(), device=features.device).index_add(
        0, group, torch.ones_like(group, dtype=torch.float)
    )
    merged = (features[targets].float() + sums / counts.clamp(min=1)[:, None]).to(features.dtype)
    return Zipped(dom, targets, block(merged), cls_feature is not None, n)


@dataclass(kw_only=True)
class VisionZip(Method):
    """Keep `keep` tokens per image: [CLS] + dominant patches (CLS attention) + contextual merged tokens.

    contextual: merged tokens per image (default round(keep * 5 / 32)).
    cls: count [CLS] among the dominant tokens (official; default with contiguous positions). With
        positions="original" it defaults to False (no patch position for [CLS]); asking for both is refused.
    positions: "contiguous" (official, default) or "original" (fastv's variant). LLaVA-1.5 only; drop mode.
    """

    contextual: int | None = None
    cls: bool | None = None

    name = "visionzip"
    default_positions = "contiguous"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.contextual is not None and self.contextual < 0:
            raise FastVError(f"contextual={self.contextual} must be >= 0")
        if self.cls and self.position_mode == "original":
            raise FastVError(
                "visionzip: cls=True needs positions='contiguous': with original positions [CLS] has no "
                "patch position of its own; use cls=False or positions='contiguous'"
            )

    @property
    def with_cls(self) -> bool:
        return self.position_mode == "contiguous" if self.cls is None else self.cls

    def split(self, n: int) -> tuple[int, int]:
        """(dominant, contextual) tokens kept of an n-token image; dominant counts [CLS] if `with_cls`."""
        k = self.keep_count(n)
        c = round(k * 5 / 32) if self.contextual is None else self.contextual
        if not 0 <= k <= n or c > k or (self.with_cls and c == k and k):
            raise FastVError(
                f"visionzip: cannot keep {k} of {n} visual tokens with {c} contextual"
                + (" and [CLS]" if self.with_cls else "")
                + f"; need contextual {'<' if self.with_cls else '<='} keep <= {n}"
            )
        return k - c, c

    def stages(self, adapter: Adapter) -> list[Stage]:
        feature_layer(adapter, self.name)
        return [PerImageStage(self.name, self.choose).stage(0, merging=True)]

    def prepare(self, handle: PruneHandle) -> list[Callable[[], None]]:
        model = handle.model
        layers, index, cropped = feature_layer(handle.adapter, self.name)
        layer, attn = layers[index], layers[index].self_attn
        skip = 1 - cropped  # 1 if the projector gets [CLS] too
        seen: dict[str, torch.Tensor] = {}

        def on_attention(module, query, key, mask, kwargs) -> None:
            seen["cls"] = query_attention(module, query, key, mask, kwargs, rows=0).mean(1)[:, 0]  # (N, T+1)
            seen["keys"] = key.float().mean(1)  # (N, T+1, d), averaged over heads

        def on_layer(module, args, output) -> None:
            seen["cls_feature"] = (output[0] if isinstance(output, tuple) else output)[:, 0]

        def on_projector(module, args, output) -> None:
            feats = args[0][:, skip:]  # the patches (strategy "full" also hands [CLS] to the projector)
            if "cls" not in seen:
                raise FastVError("visionzip: the projector ran without the vision tower's attention being observed")
            cls, keys, cls_feature = seen.pop("cls")[:, 1:], seen.pop("keys")[:, 1:], seen.pop("cls_feature")
            dominant, contextual = self.split(feats.shape[1] + skip)
            patches = dominant - (1 if self.with_cls else 0)
            handle.extra[KEY] = [
                zip_image(
                    cls[i],
                    keys[i],
                    feats[i],
                    output[i, skip:],
                    cls_feature[i].to(feats.dtype) if self.with_cls else None,
                    patches,
                    contextual,
                    module.forward,
                )
                for i in range(feats.shape[0])
            ]

        undo_tap = attention_tap.install(model, "vision_config", [attn], on_attention)
        hooks = [
            layer.register_forward_hook(on_layer),
            _inner(model).multi_modal_projector.register_forward_hook(on_projector),
        ]
        return [undo_tap, *(h.remove for h in hooks)]

    def choose(self, ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
        zipped = ctx.extra.get(KEY)
        if zipped is None or run.number >= len(zipped):
            raise FastVError(
                f"visionzip: the prompt holds more images than the vision tower encoded ({len(zipped or [])}); "
                "pass pixel_values for every image"
            )
        z = zipped[run.number]
        dev = run.positions.device
        offset = run.size - z.patches  # 1 under strategy "full": the image's first slot is [CLS]'s
        patch_pos = run.positions[offset:]
        targets = patch_pos[z.targets.to(dev)]
        if not z.cls:  # fastv's original-position variant: contextual tokens at their targets' positions
            keep = torch.cat([patch_pos[z.dominant.to(dev)], targets]).sort().values
            return Choice(keep, targets, z.block[z.dominant.numel() :])
        used = torch.cat([patch_pos[z.dominant.to(dev)], targets])
        if offset:  # strategy "full": [CLS] has its own slot, the image's first
            slot = run.positions[:1]
        else:
            free = ~torch.isin(run.positions, used)
            slot = run.positions[free][:1]
        keep = torch.cat([slot, used]).sort().values
        return Choice(keep, keep, z.block)  # the block, in order, fills the image's kept rows


def _inner(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "model", model)
