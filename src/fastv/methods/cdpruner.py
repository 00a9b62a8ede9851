"""CDPruner (Zhang et al., NeurIPS 2025, arXiv 2506.10967): instruction-conditioned DPP selection.

Attention-based pruning keeps duplicates; similarity-based pruning ignores the question. CDPruner
keeps the subset that maximizes the determinant of a conditional DPP kernel (paper Sec. 3.3-3.4):

    S_ij = cos(v_i, v_j)                          visual features v entering the language model
    r_i  = minmax_i( mean_t cos(v'_i, u_t) )       relevance of token i to the instruction tokens u_t
    L    = diag(r) S diag(r)
    keep = greedy MAP of det(L_Y) over |Y| = keep  (the fast Cholesky-update greedy of Chen et al. 2018)

as the official code computes it (`encode_images` in Theia-4869/CDPruner, `llava/model/llava_arch.py`):
float32 cosine similarity of the projected features, min-max normalization `(r - min + 1e-6) /
(max - min)`, the greedy picking `argmax d_i^2` for exactly `keep` steps with no early stop, the kept
indices sorted. The paper's optional `theta` reweighting is commented out there and not offered here.

**The relevance signal is a substitute.** The official LLaVA code embeds the raw question with
CLIP's text tower and the visual tokens with CLIP's `post_layernorm` + `visual_projection`. Hugging
Face LLaVA checkpoints carry no CLIP text tower (and other families have no aligned text encoder
at all), so here both sides live in the language model's input-embedding space: v'_i = v_i (the
projected visual features) and u_t = the input embeddings of the text after the sample's last
visual token (the question plus the chat template's trailing tokens). `fastv methods` lists it as
"CDPruner ... relevance in LM embeddings, not CLIP text". The official code also negates the
CLIP similarity before normalizing (`(-relevance).mean(-1)`); the authors report that as a CLIP
property (CDPruner issue #14), so we use the paper's positive cosine by default;
`negate_relevance=True` reproduces the code's sign.

Per image (see `fastv.methods.grid`), before the language model (a stage at layer 0), so every
layer and the KV cache shrink. Any family whose layer 0 may be cut (not Qwen3-VL, whose deepstack
features need the full sequence); drop and mask modes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastv.core.hf.families import Adapter
from fastv.core.stages import Stage, StageContext
from fastv.methods.base import Method
from fastv.methods.grid import ImageRun
from fastv.methods.per_image import Choice, PerImageStage, alive_features, image_budget


def conditional_kernel(visual: torch.Tensor, text: torch.Tensor, negate: bool = False) -> torch.Tensor:
    """L = diag(r) S diag(r) for visual (N, H) and instruction (M, H) features (paper Sec. 3.3)."""
    v = torch.nn.functional.normalize(visual.float(), dim=-1)
    similarity = v @ v.T
    if text.shape[0] == 0:
        relevance = torch.ones(v.shape[0], device=v.device)
    else:
        u = torch.nn.functional.normalize(text.float(), dim=-1)
        rel = (v @ u.T).mean(dim=-1)
        rel = -rel if negate else rel
        span = rel.max() - rel.min()
        relevance = (rel - rel.min() + 1e-6) / span if span > 0 else torch.ones_like(rel)
    return relevance[:, None] * similarity * relevance[None, :]


def greedy_map(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (pick order) of the greedy MAP subset of a DPP with kernel (N, N), exactly k steps.

    Chen et al. (NeurIPS 2018), Alg. 1: keep the Cholesky rows c_i of the chosen set and each item's
    marginal gain d_i^2 = L_ii - |c_i|^2; pick argmax d_i^2, update c and d for everyone.
    """
    n = kernel.shape[0]
    cis = torch.zeros(k, n, dtype=kernel.dtype, device=kernel.device)
    d2 = kernel.diagonal().clone()
    picked = torch.empty(k, dtype=torch.long, device=kernel.device)
    for i in range(k):
        j = int(d2.argmax())
        picked[i] = j
        e = (kernel[j] - cis[:i, j] @ cis[:i]) / d2[j].sqrt()
        cis[i] = e
        d2 -= e.square()
        d2[j] = float("-inf")
    return picked


@dataclass(kw_only=True)
class CDPruner(Method):
    """Keep, per image, the greedy-MAP subset of the instruction-conditioned DPP (before the LM).

    negate_relevance: use the official LLaVA code's negated similarity (see the module doc).
    """

    negate_relevance: bool = False

    name = "cdpruner"

    def stages(self, adapter: Adapter) -> list[Stage]:
        return [PerImageStage(self.name, self.choose).stage(0)]

    def choose(self, ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
        k = image_budget(self.name, self.keep_count(run.size), run, alive)
        b = run.sample
        rows = ctx.rows[b].contiguous()
        last_visual = int(ctx.visual[b].nonzero().max())
        text_rel = (rows > last_visual).nonzero().squeeze(1)
        kernel = conditional_kernel(alive_features(ctx, run, alive), ctx.hidden[b, text_rel], self.negate_relevance)
        return Choice(alive[greedy_map(kernel, k)].sort().values)
