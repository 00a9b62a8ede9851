"""Turn per-token scores into the set of sequence positions that layers >= K keep.

Text tokens (and the last prompt token, whose logits generation needs) are always kept; visual
tokens compete on score within their own sample. Samples of one batch may keep different
numbers of tokens (different visual-token counts); the batch stays rectangular by topping short
samples up with "filler" slots taken from their pruned tokens and masked out of attention.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fastv.errors import FastVError


@dataclass
class Selection:
    index: torch.Tensor  # (B, L') sorted sequence positions kept by layers >= K
    valid: torch.Tensor | None  # (B, L') False on filler slots; None when there are none
    keep_mask: torch.Tensor  # (B, L) True where a position is kept (fillers excluded)
    kept_visual: list[torch.Tensor]  # per sample, sorted positions of the kept visual tokens
    num_visual: list[int]
    num_kept: list[int]


def select(scores: torch.Tensor, visual: torch.Tensor, keep_count: Callable[[int], int]) -> Selection:
    """Keep the `keep_count(n)` best-scoring of each sample's n visual tokens."""
    batch, length = visual.shape
    keep_mask = torch.ones_like(visual)
    kept_visual, num_visual, num_kept = [], [], []
    for b in range(batch):
        vis = visual[b].nonzero().squeeze(1)
        n = vis.numel()
        k = keep_count(n)
        if not 0 <= k <= n:
            raise FastVError(f"cannot keep {k} visual tokens: sample {b} has only {n}; lower `keep`")
        top = scores[b, vis].float().topk(k).indices if k else vis[:0]
        chosen = vis[top].sort().values
        keep_mask[b, vis] = False
        keep_mask[b, chosen] = True
        kept_visual.append(chosen)
        num_visual.append(n)
        num_kept.append(k)
    counts = keep_mask.sum(1)
    width = int(counts.max())
    if bool((counts == width).all()):
        index = keep_mask.nonzero()[:, 1].view(batch, width)
        return Selection(index, None, keep_mask, kept_visual, num_visual, num_kept)
    rows, valid = [], []
    for b in range(batch):
        fill = (~keep_mask[b]).nonzero().squeeze(1)[: width - int(counts[b])]
        slot = keep_mask[b].clone()
        slot[fill] = True
        rows.append(slot.nonzero().squeeze(1))
        valid.append(keep_mask[b][rows[-1]])
    return Selection(torch.stack(rows), torch.stack(valid), keep_mask, kept_visual, num_visual, num_kept)
