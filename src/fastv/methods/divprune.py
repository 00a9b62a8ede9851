"""DivPrune (Alvar et al., CVPR 2025, arXiv 2503.02175): keep a maximally diverse subset.

Pruning by importance keeps many near-duplicate tokens; DivPrune instead solves a max-min
diversity problem on the visual features, greedily, as the official code (vbdi/divprune,
`LlavaMetaForCausalLM.DivPrune`) does: distance is cosine distance, 1 - cos(x_i, x_j), on the
projected visual features entering the language model (layer 0 hidden states); the first pick
maximises each token's second-smallest distance (its column's smallest is its distance to itself,
so this is its nearest neighbour's distance); each next pick maximises the distance to its nearest
picked token. Ties go to the lowest index (torch.argmax). The official loop does not exclude picked
tokens, so when every unpicked token duplicates a picked one it can pick a token twice; fastv then
takes the first unpicked token instead (the same choice whenever the official one is not a repeat).
Text-agnostic and before the language model, so it also shrinks layer 0's cost and the whole KV
cache. The official code rebuilds the sequence, so positions default to "contiguous"; "original"
is fastv's variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastv.core.hf.families import Adapter
from fastv.core.stages import Stage, StageContext
from fastv.methods.base import Method
from fastv.methods.grid import ImageRun
from fastv.methods.per_image import Choice, PerImageStage, alive_features, image_budget


def max_min_diverse(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (in pick order) of a greedy max-min-diverse subset of k rows, by cosine distance."""
    n = features.shape[0]
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    x = torch.nn.functional.normalize(features.float(), dim=-1)
    dist = 1.0 - x @ x.T
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    nearest = dist.topk(2, dim=0, largest=False).values[1]  # second-smallest of each column (official)
    picked = [int(nearest.argmax())]
    to_set = dist[picked[0]].clone()
    taken = torch.zeros(n, dtype=torch.bool, device=dist.device)
    taken[picked[0]] = True
    for _ in range(k - 1):
        nxt = int(to_set.masked_fill(taken, float("-inf")).argmax())
        picked.append(nxt)
        taken[nxt] = True
        to_set = torch.minimum(to_set, dist[nxt])
    return torch.tensor(picked)


@dataclass(kw_only=True)
class DivPrune(Method):
    """Keep `keep` visual tokens per image that are maximally diverse (max-min cosine distance).

    Runs before the language model (a stage at layer 0); any family (an image = a run of visual
    tokens, see `fastv.methods.grid`). positions: "contiguous" (official, default) or "original".
    """

    name = "divprune"
    default_positions = "contiguous"

    def stages(self, adapter: Adapter) -> list[Stage]:
        return [PerImageStage(self.name, self.choose).stage(0)]

    def choose(self, ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
        k = image_budget(self.name, self.keep_count(run.size), run, alive)
        picked = max_min_diverse(alive_features(ctx, run, alive), k).to(alive.device)
        return Choice(alive[picked].sort().values)
