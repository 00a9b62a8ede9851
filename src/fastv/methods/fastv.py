"""FastV (Chen et al., ECCV 2024, arXiv 2403.06764): one cut at layer K, ranked by attention at K-1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from fastv.core.errors import FastVError
from fastv.core.hf.families import Adapter
from fastv.core.stages import Stage, StageContext
from fastv.methods.base import Method


def last_token_attention(ctx: StageContext) -> torch.Tensor:
    """The paper's score: the last prompt token's attention, averaged over heads."""
    return ctx.absolute(ctx.attention[:, -1])


def mean_text_attention(ctx: StageContext) -> torch.Tensor:
    """The paper text's variant: attention averaged over the text tokens after the image."""
    w = ctx.query_valid.float()
    mean = (ctx.attention * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp(min=1)
    return ctx.absolute(mean)


def random_scores(ctx: StageContext) -> torch.Tensor:
    """Seeded uniform scores: the paper's random-pruning baseline."""
    return torch.rand(ctx.visual.shape, generator=ctx.generator).to(ctx.visual.device)


@dataclass(kw_only=True)
class FastV(Method):
    """FastV. k: the layer where pruning starts (layers 0..k-1 see every token).

    scorer: "last_token" (the paper) or "random" (seeded baseline; allows k=0).
    """

    k: int = 2
    scorer: Literal["last_token", "random"] = "last_token"

    name = "fastv"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 0:
            raise FastVError(f"k={self.k} must be >= 0")
        if self.scorer not in ("last_token", "random"):
            raise FastVError(f"scorer={self.scorer!r}: choose 'last_token' or 'random'")
        if self.k == 0 and self.scorer == "last_token":
            raise FastVError("k=0 leaves no layer to score attention at: use k >= 1, or scorer='random'")

    def stages(self, adapter: Adapter) -> list[Stage]:
        if self.scorer == "random":
            return [Stage(self.k, self.keep_count, random_scores)]
        return [Stage(self.k, self.keep_count, last_token_attention, attention_rows="last")]


@dataclass(kw_only=True)
class FastVMean(FastV):
    """FastV ranked by the attention of all text tokens after the image (the paper's Sec. 4 wording)."""

    name = "fastv_mean"

    def stages(self, adapter: Adapter) -> list[Stage]:
        if self.scorer == "random":
            return super().stages(adapter)
        return [Stage(self.k, self.keep_count, mean_text_attention, attention_rows="text_after_visual")]
