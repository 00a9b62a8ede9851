"""HoloV (Zou et al., NeurIPS 2025, arXiv 2510.02912): holistic budgets across an image's regions.

Attention-first pruning spends the whole budget on a few salient regions and keeps near-duplicates
there. HoloV first splits the image's tokens into regions, scores every region, shares the budget
among regions in proportion to their scores, and only then keeps each region's most attended
tokens (paper Sec. 3, "holistic" budget allocation).

We follow the official LLaVA code that produced the paper's LLaVA-1.5 numbers (`HoloV` in
obananas/HoloV, `llava/model/utils.py`, called with `num_patches=16`; `alpha = 0.09`):

- Signals: a = the vision tower's [CLS] attention to each patch token at the projected feature
  layer, averaged over heads (`attentions[select_layer][:, :, 0, 1:]`); x = the projected features.
- Regions: the image's N tokens in raster order cut into 16 contiguous runs (sizes N // 16, the
  first N % 16 one longer); the code's "patches" are these runs, not 2-D crops.
- Region score: mean over its n tokens of  1e3 * a_i + alpha * c * var_i,  where var_i is the
  variance-like spread of token i's cosine similarities to the others (the diagonal of the
  zero-diagonal similarity matrix counts in the sum, both sums divide by n - 1, as in the code) and
  c = mean|1e3 a| / (mean|var| + 1e-6) puts the two terms on one scale. A region of <= 1 token
  scores its mean attention.
  Because c is computed per region, mean(alpha * c * var) = alpha * mean(a): a region's score is
  (1 + alpha) * its mean attention whenever some var > 0, so the similarity term, which the paper
  motivates as holistic context, does not change the official code's selection (checked in
  tests/test_holov.py). We keep the formula as written rather than simplify it.
- Budget: w = scores / (sum + 1e-6), floor(w * keep) per region, the remainder one each to the
  regions of largest w; inside a region, the tokens of highest attention a.

Differences from the official code, forced by fastv's conventions:

- A region allotted more than it holds keeps all its tokens; the official code then loses the
  excess and pads the image with all-zero feature vectors up to `keep`. We give the excess to the
  regions with room, in order of decreasing w, so exactly `keep` real tokens stay.
- Kept tokens keep their original positions and order; the official code emits each region's
  tokens in decreasing attention order and renumbers positions.

Before the language model (a stage at layer 0), per image; LLaVA-1.5 only (the [CLS] attention of
a CLIP-like tower, see `fastv.core.vision_taps`); drop and mask modes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fastv.core.errors import FastVError
from fastv.core.hf.families import Adapter
from fastv.core.stages import Stage, StageContext
from fastv.core.vision_taps import feature_attention_layer, images_attention, record_cls_attention
from fastv.methods.base import Method
from fastv.methods.grid import ImageRun
from fastv.methods.per_image import Choice, PerImageStage, alive_features, image_budget

if TYPE_CHECKING:
    from fastv.core.engine import PruneHandle

KEY = "holov_cls"
EPS = 1e-6


def split_regions(n: int, count: int) -> list[range]:
    """The official split of n raster-ordered tokens into `count` contiguous runs (empty runs dropped)."""
    size, extra = divmod(n, count)
    out, start = [], 0
    for p in range(count):
        end = start + size + (p < extra)
        if end > start:
            out.append(range(start, end))
        start = end
    return out


def region_score(features: torch.Tensor, attention: torch.Tensor, alpha: float) -> torch.Tensor:
    """One region's score from its tokens' features (n, H) and [CLS] attention (n,)."""
    n = features.shape[0]
    if n <= 1:
        return attention.float().mean() if n else attention.new_zeros(())
    x = features.float()
    x = x / (x.norm(dim=1, keepdim=True) + EPS)
    sim = (x @ x.T) * (1 - torch.eye(n, device=x.device))
    mean = sim.sum(1) / (n - 1)
    var = ((sim - mean[:, None]) ** 2).sum(1) / (n - 1)
    a = attention.float() * 1e3
    scale = a.abs().mean() / (var.abs().mean() + EPS)
    return (a + alpha * var * scale).mean()


def allocate(scores: torch.Tensor, sizes: list[int], keep: int) -> list[int]:
    """Tokens kept per region: the official proportional split, then any excess moved to regions with room."""
    w = scores / (scores.sum() + EPS)
    alloc = (w * keep).floor().long()
    remaining = keep - int(alloc.sum())
    if remaining > 0:
        alloc[w.topk(min(remaining, w.numel())).indices] += 1
    counts = [min(int(a), s) for a, s in zip(alloc, sizes, strict=True)]
    excess = keep - sum(counts)
    for r in w.argsort(descending=True, stable=True).tolist():
        if excess <= 0:
            break
        add = min(excess, sizes[r] - counts[r])
        counts[r] += add
        excess -= add
    return counts


@dataclass(kw_only=True)
class HoloV(Method):
    """Keep `keep` tokens per image, shared among `regions` runs by holistic scores (official defaults)."""

    regions: int = 16
    alpha: float = 0.09

    name = "holov"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.regions < 1:
            raise FastVError(f"holov: regions={self.regions} must be >= 1")

    def stages(self, adapter: Adapter) -> list[Stage]:
        feature_attention_layer(adapter, self.name)
        return [PerImageStage(self.name, self.choose).stage(0)]

    def prepare(self, handle: PruneHandle) -> list[Callable[[], None]]:
        return [record_cls_attention(handle, KEY, self.name)]

    def choose(self, ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
        k = image_budget(self.name, self.keep_count(run.size), run, alive)
        if alive.numel() != run.size:
            raise FastVError("holov cuts before the language model: it must be the first stage")
        attention = images_attention(ctx.extra, KEY, run.number, run.size, self.name).to(alive.device)
        features = alive_features(ctx, run, alive)
        parts = split_regions(run.size, self.regions)
        scores = torch.stack(
            [region_score(features[r.start : r.stop], attention[r.start : r.stop], self.alpha) for r in parts]
        )
        counts = allocate(scores, [len(r) for r in parts], k)
        kept = [
            r.start + attention[r.start : r.stop].float().topk(c).indices for r, c in zip(parts, counts, strict=True)
        ]
        return Choice(alive[torch.cat(kept)].sort().values)
