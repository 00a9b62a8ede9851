"""DART (Wen et al., arXiv 2502.11494): keep the visual tokens least duplicated with a few pivots.

The paper argues that importance scores keep near-duplicate tokens and proposes "duplication-aware
reduction of tokens" (paper Sec. 3): pick a few pivot tokens, then keep, for each pivot, the
visual tokens least similar to it; duplication is the cosine similarity of hidden states.

We follow the official code that produced the paper's tables (`get_retained_image_token` in
ZichenWen1/DART, `llava/model/language_model/modeling_llama_self.py`; the Qwen2-VL version is the
same rule), with its LLaVA-1.5 defaults (`--pruned_layer 2 --pivot_image_token 4
--pivot_text_token 4`):

1. The cut is at layer k = 2, ranked by what layer k-1 computed.
2. Pivots: the `pivot_image` visual tokens and the `pivot_text` tokens after the image with the
   largest L1 norm of their layer k-1 keys (post-RoPE, all heads concatenated).
3. Duplication: cosine similarity of layer k-1's output hidden states after the language model's
   final norm (`self.norm(layer_outputs[0])` in the official code).
4. Each pivot in turn takes the t visual tokens least similar to it among those not yet taken
   (image pivots are never candidates). Kept: image pivots + every taken token; text pivots are
   only used to choose.

Differences from the official code, all forced by fastv's conventions, none by the rule itself:

- Budget. The official code keeps `pivot_image + (pivot_image + pivot_text) * floor(M / P)` tokens
  for a budget M (P pivots): 132 for "128", 68 for "64". fastv keeps exactly `keep` per image: the
  `keep - pivot_image` taken tokens are split over the P pivots as evenly as possible (the first
  `(keep - pivot_image) % P` pivots, in the order below, take one more). When `keep - pivot_image`
  is a multiple of P, the result is the official one.
- Pivot order. The official code visits pivots in CPython `set` iteration order (positions modulo
  the hash table size), an accident of the implementation; we visit them by ascending position.
- Images. The official code is batch-1, single image span. Here each image (see
  `fastv.methods.grid`) gets its own image pivots and budget; the text pivots come from the text
  after the sample's last visual token (the instruction), shared by the sample's images. Fewer
  text tokens than `pivot_text` use what there is.

The L1 norm of post-RoPE keys depends on absolute positions (unlike attention): for padded
batches pass position ids counted from each sample's first real token (`generate` does), or a
padded sample may pick other pivots than it would alone.

Any family (Qwen3-VL: k >= its deepstack depth, which the engine enforces); drop and mask modes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fastv.core.errors import FastVError
from fastv.core.hf.families import Adapter
from fastv.core.layer_taps import record_keys
from fastv.core.stages import Stage, StageContext
from fastv.methods.base import Method
from fastv.methods.grid import ImageRun
from fastv.methods.per_image import Choice, PerImageStage, image_budget

if TYPE_CHECKING:
    from fastv.core.engine import PruneHandle

KEY = "dart_keys"


def least_duplicated(hidden: torch.Tensor, pivots: list[int], candidates: list[int], takes: list[int]) -> list[int]:
    """Rows taken by each pivot in turn: its `takes[i]` least cosine-similar rows of `candidates` not yet taken.

    hidden: (R, H) normalized hidden states of the rows involved; pivots, candidates: row indices.
    """
    x = torch.nn.functional.normalize(hidden.float(), dim=-1)
    free = torch.tensor(candidates, dtype=torch.long)
    taken: list[int] = []
    for pivot, t in zip(pivots, takes, strict=True):
        t = min(t, free.numel())
        if t == 0:
            continue
        sim = x[free] @ x[pivot]
        pick = (-sim).topk(t).indices
        taken += free[pick].tolist()
        keep = torch.ones(free.numel(), dtype=torch.bool)
        keep[pick] = False
        free = free[keep]
    return taken


@dataclass(kw_only=True)
class DART(Method):
    """DART: cut at layer `k`, keeping pivots and the tokens least duplicated with them (per image).

    pivot_image / pivot_text: pivot tokens chosen by key L1 norm among the image's visual tokens /
    the text after the image (the paper's 4 + 4).
    """

    k: int = 2
    pivot_image: int = 4
    pivot_text: int = 4

    name = "dart"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1:
            raise FastVError(f"dart: k={self.k} must be >= 1: it ranks by the keys of layer k-1")
        if self.pivot_image < 0 or self.pivot_text < 0 or self.pivot_image + self.pivot_text == 0:
            raise FastVError(
                f"dart: pivot_image={self.pivot_image}, pivot_text={self.pivot_text}: "
                "give counts >= 0, at least one pivot"
            )

    def stages(self, adapter: Adapter) -> list[Stage]:
        if getattr(adapter.text_model, "norm", None) is None:
            raise FastVError(
                f"dart: the {adapter.family.name} language model has no final `norm`, which DART applies "
                "to hidden states before comparing them"
            )
        return [PerImageStage(self.name, self.choose).stage(self.k)]

    def prepare(self, handle: PruneHandle) -> list[Callable[[], None]]:
        return [record_keys(handle, self.k - 1, KEY)]

    def choose(self, ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
        keys = ctx.extra.get(KEY)
        if keys is None or keys.shape[-2] != ctx.rows.shape[1]:
            raise FastVError(f"dart: no keys of layer {self.k - 1} were recorded for this prefill")
        b = run.sample
        rows = ctx.rows[b].contiguous()
        k = image_budget(self.name, self.keep_count(run.size), run, alive)
        norms = keys[b].float().abs().sum(dim=(0, 2))  # (Lc,) L1 norm over all heads
        last_visual = int(ctx.visual[b].nonzero().max())
        text = rows[rows > last_visual]
        vis_rel = torch.searchsorted(rows, alive.contiguous())
        text_rel = torch.searchsorted(rows, text)
        n_img = min(self.pivot_image, k)
        img_piv = alive[norms[vis_rel].topk(n_img).indices]
        txt_piv = text[norms[text_rel].topk(min(self.pivot_text, text.numel())).indices]
        pivots = torch.cat([img_piv, txt_piv]).sort().values
        rest = k - n_img
        share, extra = divmod(rest, pivots.numel())
        takes = [share + (i < extra) for i in range(pivots.numel())]
        candidates = alive[~torch.isin(alive, img_piv)]
        involved = torch.cat([pivots, candidates])
        rel = torch.searchsorted(rows, involved)
        with torch.no_grad():
            hidden = ctx.adapter.text_model.norm(ctx.hidden[b, rel])
        n_piv = pivots.numel()
        taken = least_duplicated(hidden, list(range(n_piv)), list(range(n_piv, n_piv + candidates.numel())), takes)
        chosen = torch.cat([img_piv, involved[torch.tensor(taken, dtype=torch.long, device=involved.device)]])
        return Choice(chosen.sort().values)
