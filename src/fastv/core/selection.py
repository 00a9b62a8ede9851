"""Turn per-token scores into the set of sequence positions that the next layers keep.

Text tokens (and the last prompt token, whose logits generation needs) are always kept; visual
tokens compete on score within their own sample. Samples of one batch may keep different
numbers of tokens (different visual-token counts); the batch stays rectangular by topping short
samples up with "filler" slots taken from tokens they drop, masked out of attention.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fastv.core.errors import FastVError


@dataclass
class Selection:
    index: torch.Tensor  # (B, L') sorted sequence positions the next layers compute
    valid: torch.Tensor | None  # (B, L') False on filler slots; None when there are none
    keep_mask: torch.Tensor  # (B, L) True where a position is kept (fillers excluded)
    kept_visual: list[torch.Tensor]  # per sample, sorted positions of the kept visual tokens
    num_visual: list[int]  # visual tokens that competed (alive before this stage)
    num_kept: list[int]


def select(
    scores: torch.Tensor,
    candidates: torch.Tensor,
    keep_count: Callable[[int], int] | Sequence[int],
    present: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> Selection:
    """Keep the `keep_count(n)` best-scoring of each sample's n candidate (visual) positions.

    keep_count may instead be a count per sample (methods that budget per image decide it).

    scores, candidates: (B, L) over original positions. present: positions still computed before
    this stage (default all); rows: (B, Lc) the rows computed now, from which fillers are taken.
    """
    batch, length = candidates.shape
    keep_mask = torch.ones_like(candidates) if present is None else present.clone()
    kept_visual, num_visual, num_kept = [], [], []
    for b in range(batch):
        vis = candidates[b].nonzero().squeeze(1)
        n = vis.numel()
        k = keep_count[b] if isinstance(keep_count, Sequence) else keep_count(n)
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
    if rows is None:
        rows = torch.arange(length, device=candidates.device).expand(batch, -1)
    index, valid = [], []
    for b in range(batch):
        spare = rows[b][~keep_mask[b, rows[b]]]  # computed now but dropped by this stage
        slot = keep_mask[b].clone()
        slot[spare[: width - int(counts[b])]] = True
        index.append(slot.nonzero().squeeze(1))
        valid.append(keep_mask[b][index[-1]])
    return Selection(torch.stack(index), torch.stack(valid), keep_mask, kept_visual, num_visual, num_kept)
