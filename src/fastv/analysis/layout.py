"""Where the tokens of a prompt are: token groups (system, visual, ..., output) and the visual tokens'
grids (per image, per video frame), with the pictures under those grids.

Shared by the tapped forward (`fastv.analysis.attention`), its results and the plots, so it sits below them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fastv.analysis.overlay import unnormalize
from fastv.core.call import visual_mask
from fastv.core.errors import FastVError
from fastv.core.hf.families import Adapter, resolve

GROUPS = ("system", "visual", "interleaved", "instruction", "output")
"""system: text before the first visual token; visual: image/video tokens; interleaved: text between
visual tokens (several images, frame separators); instruction: prompt text after the last visual
token; output: generated tokens."""
QWEN_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


# ---- visual-token layout ----------------------------------------------------------------------
@dataclass
class Panel:
    """One image (or one video frame) worth of visual tokens, laid out row-major on `shape`."""

    kind: str  # "image" | "video"
    index: int  # which image / video of this sample
    frame: int | None  # temporal index within a video (Qwen: one per temporal patch)
    shape: tuple[int, int]  # (rows, cols) of the token grid; (1, n) for a 1-D strip
    positions: list[int]  # sequence positions of the tokens, row-major
    exact: bool = True  # False when the family's layout is unknown and this is a strip or a guess

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "index": self.index,
            "frame": self.frame,
            "shape": list(self.shape),
            "exact": self.exact,
            "first_position": self.positions[0] if self.positions else None,
        }


def _runs(positions: list[int]) -> list[list[int]]:
    """Split sorted positions into contiguous runs."""
    runs: list[list[int]] = []
    for p in positions:
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def _square_or_strip(kind: str, index: int, pos: list[int], exact: bool) -> Panel:
    side = math.isqrt(len(pos))
    if side * side == len(pos):
        return Panel(kind, index, None, (side, side), pos, exact)
    return Panel(kind, index, None, (1, len(pos)), pos, False)


def _llava_panels(model: Any, ids: torch.Tensor, pixel_values: Any, counter: dict[str, int]) -> list[Panel]:
    """LLaVA-1.5: a (H/p) x (W/p) grid per image, taken from the pixel tensor (24x24 for 336 px)."""
    cfg = model.config
    pos = (ids == cfg.image_token_id).nonzero().squeeze(1).tolist()
    p = cfg.vision_config.patch_size
    if isinstance(pixel_values, torch.Tensor) and pixel_values.ndim == 4:
        h, w = pixel_values.shape[-2] // p, pixel_values.shape[-1] // p
    else:
        side = cfg.vision_config.image_size // p
        h, w = side, side
    cls = 1 if getattr(cfg, "vision_feature_select_strategy", "default") == "full" else 0
    n = h * w + cls
    if not pos or len(pos) % n:
        return [_square_or_strip("image", i, r, False) for i, r in enumerate(_runs(pos))]
    panels = []
    for i in range(len(pos) // n):
        chunk = pos[i * n + cls : (i + 1) * n]  # the class token (strategy "full") has no place
        panels.append(Panel("image", counter["image"], None, (h, w), chunk))
        counter["image"] += 1
    return panels


def _qwen_panels(model: Any, ids: torch.Tensor, inputs: dict[str, Any], counter: dict[str, int]) -> list[Panel]:
    """Qwen-VL: per image (t, h/m, w/m) merged tokens from `image_grid_thw`; video frames likewise."""
    cfg = model.config
    m = cfg.vision_config.spatial_merge_size
    panels = []
    for kind, tok in (("image", cfg.image_token_id), ("video", getattr(cfg, "video_token_id", None))):
        grid = inputs.get(f"{kind}_grid_thw")
        pos = (ids == tok).nonzero().squeeze(1).tolist() if tok is not None else []
        start, local = 0, 0
        while start < len(pos):
            if grid is None or counter[kind] >= len(grid):
                raise FastVError(f"more {kind} tokens than rows in {kind}_grid_thw")
            t, h, w = (int(v) for v in grid[counter[kind]])
            hh, ww = h // m, w // m
            for f in range(t):
                chunk = pos[start : start + hh * ww]
                panels.append(Panel(kind, local, f if kind == "video" else None, (hh, ww), chunk))
                start += hh * ww
            counter[kind] += 1
            local += 1
    return sorted(panels, key=lambda pn: pn.positions[0])


def _generic_panels(adapter: Adapter, ids: torch.Tensor) -> list[Panel]:
    """Unknown layout: one panel per contiguous run; a square when the count is a perfect square.

    Gemma3's runs are its pooled square grid (`mm_tokens_per_image`, 16x16), so those are exact.
    """
    visual = visual_mask(ids, adapter.visual_token_ids)
    runs = _runs(visual.nonzero().squeeze(1).tolist())
    per_image = getattr(adapter.model.config, "mm_tokens_per_image", None)
    exact = [adapter.model.config.model_type == "gemma3" and len(r) == per_image for r in runs]
    return [_square_or_strip("image", i, r, e) for i, (r, e) in enumerate(zip(runs, exact, strict=True))]


def visual_layout(model: Any, input_ids: torch.Tensor, inputs: dict[str, Any] | None = None) -> list[list[Panel]]:
    """Per sample of a (padded) batch, its visual tokens as panels, in sequence coordinates.

    Exact for LLaVA-1.5 (square grid per image) and Qwen2/2.5/3-VL (merged grid per image and
    per temporal patch of a video); other families fall back to one strip (or guessed square)
    per contiguous run of visual tokens, with `exact=False`.
    """
    adapter = resolve(model)
    inputs = inputs or {}
    model_type = model.config.model_type
    counter = {"image": 0, "video": 0}
    out = []
    for row in input_ids:
        if model_type == "llava":
            out.append(_llava_panels(model, row, inputs.get("pixel_values"), counter))
        elif model_type in QWEN_TYPES:
            out.append(_qwen_panels(model, row, inputs, counter))
        else:
            out.append(_generic_panels(adapter, row))
    return out


# ---- token groups -----------------------------------------------------------------------------
def token_groups(
    input_ids: torch.Tensor,
    visual_ids: Sequence[int],
    attention_mask: torch.Tensor | None = None,
    prompt_len: int | None = None,
) -> torch.Tensor:
    """(B, L) index into `GROUPS` per position; -1 on padding.

    Positions >= `prompt_len` (columns, so left padding is allowed) are generated output.
    """
    b, length = input_ids.shape
    prompt_len = length if prompt_len is None else prompt_len
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    visual = visual_mask(input_ids, tuple(visual_ids))
    col = torch.arange(length, device=input_ids.device)
    in_prompt = col[None, :] < prompt_len
    labels = torch.full_like(input_ids, -1)
    for i in range(b):
        vis = (visual[i] & in_prompt[0] & valid[i]).nonzero().squeeze(1)
        first, last = (int(vis[0]), int(vis[-1])) if vis.numel() else (0, -1)
        row = torch.full((length,), GROUPS.index("instruction"), device=input_ids.device)
        row[col < first] = GROUPS.index("system")
        row[(col > first) & (col < last)] = GROUPS.index("interleaved")
        row[visual[i] & in_prompt[0]] = GROUPS.index("visual")
        row[~in_prompt[0]] = GROUPS.index("output")
        row[~valid[i]] = -1
        labels[i] = row
    return labels


# ---- pictures under the heat maps -------------------------------------------------------------
def panel_pictures(
    model: Any,
    inputs: dict[str, Any],
    layouts: list[list[Panel]],
    images: Sequence[Sequence[Any]] | None,
    processor: Any,
) -> list[dict[tuple[str, int], list[np.ndarray]]]:
    """Per sample, (kind, index) -> frames as uint8 arrays, aligned with the token grid when possible.

    A 4D pixel tensor (LLaVA) is exactly what the model saw, so it is used first; otherwise the
    caller's images (resized to the grid by the plots) or nothing.
    """
    out: list[dict[tuple[str, int], list[np.ndarray]]] = [{} for _ in layouts]
    pixels = inputs.get("pixel_values")
    if isinstance(pixels, torch.Tensor) and pixels.ndim == 4 and model.config.model_type == "llava":
        mean, std = _norm(processor)
        g = 0
        for b, panels in enumerate(layouts):
            for p in panels:
                if p.kind == "image" and g < pixels.shape[0]:
                    out[b][("image", p.index)] = [np.asarray(unnormalize(pixels[g], mean, std))]
                    g += 1
        return out
    if images is not None:
        for b, sample in enumerate(images):
            kinds = [(p.kind, p.index) for p in layouts[b] if p.frame in (None, 0)]
            for key, item in zip(kinds, sample, strict=False):
                frames = item if isinstance(item, (list, tuple)) else [item]
                out[b][key] = [np.asarray(f.convert("RGB") if hasattr(f, "convert") else f) for f in frames]
    return out


def _norm(processor: Any) -> tuple[Any, Any]:
    ip = getattr(processor, "image_processor", None)
    return getattr(ip, "image_mean", None), getattr(ip, "image_std", None)


def panel_picture(
    pictures: dict[tuple[str, int], list[np.ndarray]], panels: Sequence[Panel], p: Panel
) -> np.ndarray | None:
    """The picture under one panel's token grid (of `panel_pictures`' result for its sample), or None.

    A video's panels (Qwen: one per temporal patch) share its frames evenly."""
    frames = pictures.get((p.kind, p.index))
    if not frames:
        return None
    if p.frame is None:
        return frames[0]
    count = sum(1 for q in panels if q.kind == p.kind and q.index == p.index)
    per = max(1, len(frames) // max(1, count))  # Qwen: 2 frames per temporal patch
    return frames[min(p.frame * per, len(frames) - 1)]
