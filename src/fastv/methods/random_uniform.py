"""The two content-blind baselines: a seeded random subset and a spatially even subset.

The benchmark papers (EffiVLM-Bench, arXiv 2506.00479; UniPruneBench, arXiv 2511.02650) found random
pruning a strong baseline, and VTC-Bench (arXiv 2510.07143) found plain spatial downsampling beats
many published methods; any method worth its cost must beat these at the same budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastv.core.errors import FastVError
from fastv.core.hf.families import Adapter
from fastv.core.stages import Stage, StageContext
from fastv.methods.base import Method
from fastv.methods.grid import ImageRun, factor_grid, require_grid, run_subgrid
from fastv.methods.per_image import Choice, PerImageStage, top


@dataclass(kw_only=True)
class _LayerChoice(Method):
    """k: the decoder layer whose input is cut (0: before the language model, the usual setting)."""

    k: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 0:
            raise FastVError(f"k={self.k} must be >= 0")

    def choose(self, ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
        raise NotImplementedError

    def stages(self, adapter: Adapter) -> list[Stage]:
        return [PerImageStage(self.name, self.choose).stage(self.k)]


@dataclass(kw_only=True)
class RandomPrune(_LayerChoice):
    """A seeded random subset of each image's visual tokens (the benchmarks' random baseline).

    Image j of a prompt draws `torch.rand(n)` from a generator seeded with `seed * 65537 + j` and
    keeps its top `keep`: the subset depends only on the seed and the image's place in its prompt,
    never on the batch (a padded batch keeps what batch 1 keeps). Vary `seed` to average over draws.
    """

    name = "random"

    def choose(self, ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
        g = torch.Generator().manual_seed(self.seed * 65537 + run.index)
        u = torch.rand(run.size, generator=g)[ctx.alive[run.sample, run.positions].cpu()]
        return Choice(top(u.to(alive.device), alive, self.keep_count(run.size), self.name))


def even_cells(rows: int, cols: int, grid: tuple[int, int]) -> torch.Tensor:
    """Row-major indices of the centre token of each cell of a rows x cols partition of `grid`."""
    h, w = grid
    r = ((torch.arange(rows) + 0.5) * h / rows).floor().long()
    c = ((torch.arange(cols) + 0.5) * w / cols).floor().long()
    return (r[:, None] * w + c[None, :]).flatten()


@dataclass(kw_only=True)
class Uniform(_LayerChoice):
    """A spatially even subset: the centre token of each cell of a rows x cols partition of the grid.

    `keep` = rows * cols with the factor pair closest to the grid's shape (24x24: 144 -> 12x12,
    192 -> 16x12, 128 -> 16x8, 64 -> 8x8); a budget with no such pair is refused. Needs a known
    grid (see `fastv.methods.grid`): LLaVA-1.5 and Video-LLaVA images.
    """

    name = "uniform"

    def stages(self, adapter: Adapter) -> list[Stage]:
        grid = require_grid(adapter, self.name)
        factor_grid(self.keep_count(grid[0] * grid[1]), grid, self.name)  # refuse bad budgets up front
        return super().stages(adapter)

    def choose(self, ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
        k = self.keep_count(run.size)
        if k == 0:
            return Choice(alive[:0])
        rows, cols = run_subgrid(run, k, self.name)
        return Choice(run.positions[even_cells(rows, cols, run.grid).to(run.positions.device)])
