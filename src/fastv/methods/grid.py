"""Where each image's visual tokens sit in a prompt, and their grid when the family has a fixed one.

Budgets of the reduction methods are per image (the field's 192/128/64 convention), so every method
first splits a sample's visual tokens into images. An "image" is a maximal run of consecutive
visual tokens with one token id; in families where every image (or video frame) has a fixed token
count, a run is further cut into chunks of that count (two LLaVA images with no text between them,
or the frames of a Video-LLaVA video). Elsewhere a run is one image, or one whole video
(Qwen-VL), or one tile (Idefics3/SmolVLM separate tiles by text).

Grid-needing methods (`pool`, `uniform`) need the raster layout of a run. Only the square grids
of LLaVA-1.5 images and Video-LLaVA images with `vision_feature_select_strategy="default"` are
known (side = image_size // patch_size, tokens in row-major order); every other case is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastv.core.errors import FastVError, UnsupportedModelError
from fastv.core.hf.families import Adapter

GRID_SUPPORT = (
    "LLaVA-1.5 (llava) images and Video-LLaVA (video_llava) images with "
    "vision_feature_select_strategy='default' (square side x side grids)"
)


@dataclass(frozen=True)
class ImageRun:
    """One image (or frame, tile, video) in one sample of a batch."""

    sample: int
    index: int  # order within its sample
    number: int  # order within the whole batch (sample-major): the vision tower's image order
    positions: torch.Tensor  # (n,) sorted original sequence positions of its visual tokens
    grid: tuple[int, int] | None  # (rows, cols) of a row-major raster, when known

    @property
    def size(self) -> int:
        return int(self.positions.numel())


def fixed_sizes(adapter: Adapter) -> dict[int, tuple[int, tuple[int, int] | None]]:
    """token id -> (tokens per image or frame, grid or None), for families with fixed counts."""
    config = adapter.model.config
    if config.model_type not in ("llava", "video_llava"):
        return {}
    vc = config.vision_config
    side = vc.image_size // vc.patch_size
    default = getattr(config, "vision_feature_select_strategy", "default") == "default"
    out = {config.image_token_id: (side * side, (side, side)) if default else (side * side + 1, None)}
    if config.model_type == "video_llava":
        out[config.video_token_id] = (side * side + 1, None)  # every frame keeps its CLS token
    return out


def require_grid(adapter: Adapter, method: str) -> tuple[int, int]:
    """The image grid of a model whose images have one (refuse the rest, naming what works)."""
    sizes = fixed_sizes(adapter)
    grid = sizes.get(getattr(adapter.model.config, "image_token_id", None), (0, None))[1]
    if grid is None:
        raise UnsupportedModelError(
            f"{method} needs the visual tokens' grid, which fastv knows only for {GRID_SUPPORT}; "
            f"{adapter.family.name} (strategy {getattr(adapter.model.config, 'vision_feature_select_strategy', '-')!r}) "
            "is not supported"
        )
    return grid


def image_runs(input_ids: torch.Tensor, visual: torch.Tensor, adapter: Adapter) -> list[list[ImageRun]]:
    """Per sample, its images in prompt order (see the module docstring for what an image is)."""
    sizes = fixed_sizes(adapter)
    out: list[list[ImageRun]] = []
    number = 0
    for b in range(input_ids.shape[0]):
        pos = visual[b].nonzero().squeeze(1)
        runs: list[ImageRun] = []
        if pos.numel():
            ids = input_ids[b, pos]
            breaks = ((pos[1:] - pos[:-1]) != 1) | (ids[1:] != ids[:-1])
            starts = [0, *(breaks.nonzero().squeeze(1) + 1).tolist(), pos.numel()]
            for s, e in zip(starts[:-1], starts[1:], strict=True):
                token = int(ids[s])
                size, grid = sizes.get(token, (e - s, None))
                if (e - s) % size:
                    raise FastVError(
                        f"sample {b}: a run of {e - s} visual tokens (id {token}) is not a whole number of "
                        f"{size}-token images (does the prompt end on a visual token?)"
                    )
                for c in range(s, e, size):
                    runs.append(ImageRun(b, len(runs), number, pos[c : c + size], grid))
                    number += 1
        out.append(runs)
    return out


def factor_grid(keep: int, grid: tuple[int, int], method: str) -> tuple[int, int]:
    """The (rows, cols) sub-grid with rows*cols == keep closest to the grid's aspect (ties: more rows).

    E.g. 24x24: 144 -> 12x12, 64 -> 8x8, 192 -> 16x12, 128 -> 16x8.
    """
    h, w = grid
    pairs = [(r, keep // r) for r in range(1, h + 1) if keep % r == 0 and keep // r <= w]
    if not pairs:
        raise FastVError(
            f"{method}: keep={keep} cannot be laid out as a rows x cols sub-grid of the {h}x{w} token grid "
            f"(needs a factor pair with rows <= {h}, cols <= {w}); choose e.g. a square or {h}*c"
        )
    target = math.log(h / w)
    return min(pairs, key=lambda p: (abs(math.log(p[0] / p[1]) - target), -p[0]))


def run_subgrid(run: ImageRun, keep: int, method: str) -> tuple[int, int]:
    """The rows x cols sub-grid a grid method lays `keep` tokens of one image out on."""
    if run.grid is None:
        raise UnsupportedModelError(
            f"{method}: image {run.index} of sample {run.sample} has no known grid (video frames keep a "
            f"CLS token); supported: {GRID_SUPPORT}"
        )
    return factor_grid(keep, run.grid, method)
