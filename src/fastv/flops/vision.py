"""FLOPs of the vision tower and projector (CLIP-style and Qwen-style towers)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from transformers import PretrainedConfig

__all__ = ["VisionFlops", "vision_flops"]


# --------------------------------------------------------------------------- vision tower + projector


@dataclass(frozen=True)
class VisionFlops:
    """Vision side of a prefill; FastV leaves it unchanged."""

    tower: int
    projector: int
    units: int  # images, crops, frames or temporal patch groups through the tower
    visual_tokens: int  # tokens handed to the language model
    note: str = ""


def _vit_layer(n: int, d: int, m: int, mlp_matrices: int = 2) -> int:
    """A ViT block on n tokens: Q,K,V,O projections, dense attention, MLP."""
    return 8 * n * d * d + 4 * n * n * d + 2 * mlp_matrices * n * d * m


def _clip_vision(config: PretrainedConfig, kind: str, n_visual: int | None, frames: int | None) -> VisionFlops:
    vc = config.vision_config
    patches = (vc.image_size // vc.patch_size) ** 2
    n_tower = patches + 1  # + CLS
    layers = config.vision_feature_layer
    n_feature_layers = 1 if isinstance(layers, int) else len(layers)
    keep_cls = config.vision_feature_select_strategy != "default"
    d_text = config.text_config.hidden_size

    def projector(n: int) -> int:
        return 2 * n * vc.hidden_size * n_feature_layers * d_text + 2 * n * d_text * d_text

    note = ""
    if kind == "video_llava" and (frames or (n_visual is None)):
        # Video-LLaVA keeps the CLS token of every frame.
        frames = frames or 8
        units, per_unit_lm, per_unit_proj = frames, n_tower, n_tower
        visual = frames * n_tower
        note = f"video: {frames} frames x {n_tower} tokens"
    elif kind == "llava_next":
        # anyres, a square image at the largest 2x2 grid: base crop + 4 tiles, unpadded grid + newlines.
        side = int(math.isqrt(patches))
        per_image = patches + (2 * side) * (2 * side + 1)
        images = max(1, round(n_visual / per_image)) if n_visual else 1
        units = 5 * images
        per_unit_proj = n_tower if keep_cls else patches
        visual = n_visual or images * per_image
        note = f"anyres: {images} image(s) x 5 crops"
        return VisionFlops(units * _clip_tower(vc, n_tower), units * projector(per_unit_proj), units, visual, note)
    else:
        per_unit_lm = per_unit_proj = n_tower if keep_cls else patches
        units = max(1, math.ceil(n_visual / per_unit_lm)) if n_visual else 1
        visual = n_visual or units * per_unit_lm
    return VisionFlops(units * _clip_tower(vc, n_tower), units * projector(per_unit_proj), units, visual, note)


def _clip_tower(vc: PretrainedConfig, n_tower: int) -> int:
    """All CLIP layers run (the feature layer is picked from the hidden states afterwards)."""
    patches = n_tower - 1
    conv = 2 * patches * vc.hidden_size * vc.num_channels * vc.patch_size**2
    return conv + vc.num_hidden_layers * _vit_layer(n_tower, vc.hidden_size, vc.intermediate_size)


def _merged_grid(tokens: int) -> tuple[int, int]:
    """A near-square (h, w) grid of merged patches with h*w == tokens."""
    h = int(math.isqrt(tokens))
    while tokens % h:
        h -= 1
    return h, tokens // h


def _window_sizes(grid_h: int, grid_w: int, window: int, unit: int) -> list[int]:
    """Patch counts of Qwen2.5-VL's attention windows over one temporal group (merged grid h x w)."""
    rows = [window] * (grid_h // window) + ([grid_h % window] if grid_h % window else [])
    cols = [window] * (grid_w // window) + ([grid_w % window] if grid_w % window else [])
    return [r * c * unit for r in rows for c in cols]


def _qwen_vision(config: PretrainedConfig, kind: str, n_visual: int | None, frames: int | None) -> VisionFlops:
    vc = config.vision_config
    merge = vc.spatial_merge_size
    unit = merge * merge
    groups = max(1, math.ceil(frames / vc.temporal_patch_size)) if frames else 1
    visual = n_visual or groups * 576
    per_group = max(1, visual // groups)
    gh, gw = _merged_grid(per_group)
    visual = groups * gh * gw
    n = visual * unit  # patches through the tower
    if kind == "qwen2_vl":
        d, m, mlp_matrices, out = vc.embed_dim, vc.embed_dim * vc.mlp_ratio, 2, vc.hidden_size
    else:
        d, m, mlp_matrices, out = vc.hidden_size, vc.intermediate_size, 3, vc.out_hidden_size
    conv = 2 * n * d * vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    dense = 8 * n * d * d + 2 * mlp_matrices * n * d * m
    full_attn = 4 * d * groups * (gh * gw * unit) ** 2  # attention stays within a temporal group
    if kind == "qwen2_vl":
        tower = conv + vc.depth * (dense + full_attn)
    else:
        window = vc.window_size // merge // vc.patch_size
        win_attn = 4 * d * groups * sum(s * s for s in _window_sizes(gh, gw, window, unit))
        n_full = len(vc.fullatt_block_indexes)
        tower = conv + vc.depth * dense + n_full * full_attn + (vc.depth - n_full) * win_attn
    ctx = d * unit
    projector = 2 * visual * ctx * ctx + 2 * visual * ctx * out
    note = f"{groups} temporal group(s) of {gh * merge}x{gw * merge} patches"
    return VisionFlops(tower, projector, groups, visual, note)


def vision_flops(
    config: PretrainedConfig, n_visual: int | None = None, frames: int | None = None, batch_size: int = 1
) -> VisionFlops:
    """Vision tower + projector FLOPs for the visual tokens the language model will see.

    `n_visual` is the language model's visual-token count (default: one typical image, or a video
    for video models); `frames` asks for a video. Unknown families report zero with a note.
    """
    kind = getattr(config, "model_type", "")
    if kind in ("llava", "llava_next", "video_llava"):
        v = _clip_vision(config, kind, n_visual, frames)
    elif kind in ("qwen2_vl", "qwen2_5_vl"):
        v = _qwen_vision(config, kind, n_visual, frames)
    else:
        return VisionFlops(0, 0, 0, n_visual or 576, f"vision tower of {kind or 'this model'} not counted")
    if batch_size == 1:
        return v
    return VisionFlops(v.tower * batch_size, v.projector * batch_size, v.units, v.visual_tokens, v.note)
