"""Density-peaks clustering with k nearest neighbours (DPC-kNN), shared by the merging methods.

SparseVLM recycles pruned tokens into cluster means and HoliTom merges a segment's static tokens
around cluster centres; both official codes pick the centres the same way (Du et al. 2016,
"Study on density peaks clustering based on k-nearest neighbors and principal component analysis"):
a token's density is exp(-mean squared distance to its k nearest), its separation the distance to
the nearest denser token (the largest distance for the densest), and the centres are the tokens of
largest density x separation. Distances are Euclidean / sqrt(dim), as in both codes.
"""

from __future__ import annotations

import torch


def density_peaks(x: torch.Tensor, clusters: int, knn: int, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(centre indices ranked by density x separation, the (n, n) distances) of the rows of x (n, H).

    noise (n,): the tie-breaker both official codes add to the density (1e-6 x uniform); passing it
    in keeps the choice reproducible and lets tests feed the same draw to a transcription.
    """
    x = x.float()
    dist = torch.cdist(x[None], x[None])[0] / x.shape[-1] ** 0.5
    nearest = dist.topk(knn, dim=-1, largest=False).values
    density = (-(nearest**2).mean(-1)).exp() + noise.to(dist.device)
    denser = density[None, :] > density[:, None]
    separation = torch.where(denser, dist, dist.max()).min(-1).values
    return (separation * density).topk(clusters).indices, dist
