"""Average pooling of each image's projected visual features before the language model.

VTC-Bench (arXiv 2510.07143) found that plain downsampling of the image tokens beats many published
token-reduction methods; this is that baseline on our engine. The projected features of an
image's h x w grid are average-pooled to rows x cols (`torch.nn.functional.adaptive_avg_pool2d`:
window i spans [floor(i*h/rows), ceil((i+1)*h/rows)), e.g. 24x24 -> 12x12 = 2x2 windows for 144),
and the language model sees only the pooled tokens.

Positions: each pooled token sits at the original position (and RoPE angle) of the top-left token
of its window; kept rows stay in raster order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fastv.core.hf.families import Adapter
from fastv.core.stages import Stage, StageContext
from fastv.methods.base import Method
from fastv.methods.grid import ImageRun, factor_grid, require_grid, run_subgrid
from fastv.methods.per_image import Choice, PerImageStage


def window_starts(rows: int, cols: int, grid: tuple[int, int]) -> torch.Tensor:
    """Row-major indices of the top-left token of each adaptive-pooling window."""
    h, w = grid
    r = torch.arange(rows) * h // rows
    c = torch.arange(cols) * w // cols
    return (r[:, None] * w + c[None, :]).flatten()


@dataclass(kw_only=True)
class Pool(Method):
    """Average-pool each image's token grid to `keep` = rows x cols tokens before the language model.

    rows x cols is the factor pair of `keep` closest to the grid's shape (24x24: 144 -> 12x12,
    64 -> 8x8, 192 -> 16x12, 128 -> 16x8). Needs a known grid: LLaVA-1.5 and Video-LLaVA images.
    Merges features, so only mode="drop".
    """

    name = "pool"

    def stages(self, adapter: Adapter) -> list[Stage]:
        grid = require_grid(adapter, self.name)
        factor_grid(self.keep_count(grid[0] * grid[1]), grid, self.name)
        return [PerImageStage(self.name, self.choose).stage(0, merging=True)]

    def choose(self, ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
        k = self.keep_count(run.size)
        if k == 0:
            return Choice(alive[:0])
        rows, cols = run_subgrid(run, k, self.name)
        h, w = run.grid
        rel = torch.searchsorted(ctx.rows[run.sample].contiguous(), run.positions.contiguous())
        feats = ctx.hidden[run.sample, rel]  # (h*w, H), row-major
        pooled = F.adaptive_avg_pool2d(feats.T.reshape(1, -1, h, w), (rows, cols))
        reps = run.positions[window_starts(rows, cols, run.grid).to(run.positions.device)]
        return Choice(reps, reps, pooled.reshape(feats.shape[1], -1).T)
