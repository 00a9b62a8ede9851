"""Show which image patches FastV kept: pruned patches greyed out on the picture the model saw.

A visual token is one patch of the processed image (LLaVA: a square grid per image after the
processor's resize and centre crop, e.g. 96 px / 8 px = 12x12). Drawing on the processed image,
not the upload, keeps every cell exactly under its patch whatever the upload's size or aspect.
Pure functions of tensors and arrays, so the mapping is testable without a model or an app.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from fastv.core.errors import FastVError

GREY = (128, 128, 128)


def kept_grid(positions: Sequence[int], shape: tuple[int, int], kept_positions: Sequence[int]) -> np.ndarray:
    """(rows, cols) bool grid: True where the token at that patch was kept.

    `positions` are the sequence positions of one image's visual tokens in row-major patch order;
    `kept_positions` are the positions FastV kept (`PruneStats.kept_positions`), in the same
    coordinates (indices into the input_ids row). Kept positions of other images are ignored.
    """
    rows, cols = shape
    if len(positions) != rows * cols:
        raise FastVError(f"{len(positions)} token positions cannot fill a {rows}x{cols} grid")
    kept = {int(p) for p in kept_positions}
    return np.array([int(p) in kept for p in positions], dtype=bool).reshape(rows, cols)


def unnormalize(pixels: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None) -> Image.Image:
    """A (3, H, W) normalized pixel tensor back to the RGB picture the vision tower saw."""
    x = pixels.detach().float().cpu().numpy().transpose(1, 2, 0)
    if mean is not None and std is not None:
        x = x * np.asarray(std, dtype=np.float32) + np.asarray(mean, dtype=np.float32)
    else:  # unknown normalisation: stretch to [0, 1] so something recognisable is shown
        x = (x - x.min()) / max(float(x.max() - x.min()), 1e-6)
    return Image.fromarray((np.clip(x, 0, 1) * 255).round().astype(np.uint8))


def grey_out(
    image: Image.Image,
    grid: np.ndarray,
    display: int = 384,
    strength: float = 0.8,
    lines: bool = True,
) -> Image.Image:
    """Blend pruned patches (False in `grid`) towards grey; kept patches stay as they are.

    The picture is upscaled (nearest neighbour, so pixels stay crisp) to about `display` px on its
    longer side, in whole pixels per patch so that patch borders fall on pixel borders.
    """
    rows, cols = grid.shape
    w, h = image.size
    scale = max(1, round(display / max(w, h)))
    cell_h, cell_w = h * scale / rows, w * scale / cols
    big = np.asarray(image.convert("RGB").resize((w * scale, h * scale), Image.NEAREST)).astype(np.float32)
    pruned = ~grid.astype(bool)
    ys = np.minimum((np.arange(h * scale) / cell_h).astype(int), rows - 1)
    xs = np.minimum((np.arange(w * scale) / cell_w).astype(int), cols - 1)
    pixel_pruned = pruned[ys[:, None], xs[None, :]]
    grey = np.asarray(GREY, dtype=np.float32)
    big[pixel_pruned] = big[pixel_pruned] * (1 - strength) + grey * strength
    if lines:  # faint patch borders make the token grid readable
        for r in range(1, rows):
            y = int(round(r * cell_h))
            big[y, :] = big[y, :] * 0.7 + 255 * 0.3
        for c in range(1, cols):
            x = int(round(c * cell_w))
            big[:, x] = big[:, x] * 0.7 + 255 * 0.3
    return Image.fromarray(big.round().astype(np.uint8))


def side_by_side(images: Sequence[Image.Image], gap: int = 8, background: tuple[int, int, int] = (255, 255, 255)):
    """Several panels (images, video frames) in one row, for one picture in the page."""
    if len(images) == 1:
        return images[0]
    height = max(im.height for im in images)
    width = sum(im.width for im in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (width, height), background)
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + gap
    return out
