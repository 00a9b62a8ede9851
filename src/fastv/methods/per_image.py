"""Per-image budgets on the engine's per-sample selection, shared by the reduction methods.

The engine keeps `keep(n)` of a sample's n alive visual tokens, ranked by the stage's scores. Our
methods choose per image instead (the field's "192 tokens per image"), so a `PerImageStage`
chooses inside each image, marks the chosen tokens with score 1 (the rest 0) and returns each
sample's total with the scores. Merging methods also give new features for some kept positions;
`merge` writes them into the kept rows (drop mode only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastv.core.errors import FastVError
from fastv.core.selection import Selection
from fastv.core.stages import ScoredAt, Stage, StageContext
from fastv.methods.grid import ImageRun, image_runs


@dataclass
class Choice:
    """What a method keeps of one image: positions, and new features for some of them (merges)."""

    keep: torch.Tensor  # (k,) original positions kept
    replace: torch.Tensor | None = None  # (c,) positions among `keep` whose rows get new features
    features: torch.Tensor | None = None  # (c, H)


def alive_features(ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> torch.Tensor:
    """The hidden states entering the stage of one image's alive positions, (len(alive), H)."""
    return ctx.hidden[run.sample, torch.searchsorted(ctx.rows[run.sample].contiguous(), alive.contiguous())]


def image_budget(name: str, k: int, run: ImageRun, alive: torch.Tensor) -> int:
    """k, the method's budget for this image, refused when the image has fewer tokens left."""
    if k > alive.numel():
        raise _too_many(name, k, run, alive)
    return k


def _too_many(name: str, k: int, run: ImageRun, alive: torch.Tensor) -> FastVError:
    return FastVError(
        f"{name}: cannot keep {k} visual tokens of image {run.index} in sample {run.sample}: "
        f"it has {alive.numel()} left; lower `keep`"
    )


Choose = Callable[[StageContext, ImageRun, torch.Tensor], Choice]  # (ctx, image, its alive positions)


class PerImageStage:
    """Build with a `choose` function; `.stage(layer)` gives the engine's Stage."""

    def __init__(self, name: str, choose: Choose) -> None:
        self.name, self.choose = name, choose
        self._replace: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def stage(self, layer: int, attention_rows=None, merging: bool = False, scored_at: ScoredAt = "previous") -> Stage:
        return Stage(layer, None, self.score, attention_rows, self.merge if merging else None, scored_at)

    def score(self, ctx: StageContext) -> tuple[torch.Tensor, list[int]]:
        out = torch.zeros(ctx.visual.shape, device=ctx.visual.device)
        totals: list[int] = []
        self._replace = []
        for b, runs in enumerate(image_runs(ctx.input_ids, ctx.visual, ctx.adapter)):
            total = 0
            for run in runs:
                alive = run.positions[ctx.alive[b, run.positions]]
                choice = self.choose(ctx, run, alive)
                k = int(choice.keep.numel())
                if k > alive.numel() or not bool(torch.isin(choice.keep, alive).all()):
                    raise _too_many(self.name, k, run, alive)
                out[b, choice.keep] = 1.0
                total += k
                if choice.replace is not None and choice.replace.numel():
                    self._replace.append((b, choice.replace, choice.features))
            totals.append(total)
        return out, totals

    def merge(self, ctx: StageContext, sel: Selection) -> torch.Tensor:
        hidden = ctx.hidden
        if self._replace:
            hidden = hidden.clone()
            for b, pos, feats in self._replace:
                rel = torch.searchsorted(ctx.rows[b].contiguous(), pos.contiguous())
                hidden[b, rel] = feats.to(hidden.dtype)
        rel = torch.searchsorted(ctx.rows.contiguous(), sel.index.contiguous())
        return hidden.gather(1, rel[..., None].expand(-1, -1, hidden.shape[-1]))


def top(scores: torch.Tensor, positions: torch.Tensor, k: int, name: str) -> torch.Tensor:
    """The k highest-scoring of `positions` (`scores` aligned with them), sorted by position."""
    if not 0 <= k <= positions.numel():
        raise FastVError(f"{name}: cannot keep {k} visual tokens of an image that has {positions.numel()}; lower keep")
    return positions[scores.float().topk(k).indices].sort().values
