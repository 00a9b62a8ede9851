"""FlowCut (Tong et al., NeurIPS 2025, arXiv 2505.19536): information-flow-aware pruning in the vision tower.

A token's importance in one layer is a noisy reading of the information that flows through it, so
FlowCut prunes progressively inside the vision encoder, ranking by a score accumulated across
layers (paper Sec. 4). We follow the official LLaVA code (TungChintao/FlowCut,
`flowcut/modeling_clip_flowcut.py` and `utils_flowcut.py`, `flowcut(model, target_num)`):

- At every vision layer i before the projected feature layer f (rpl = f - i - 1 >= 0), while more
  than `keep` patches remain, score each patch from that layer's attention:
      s = (a / sum a + m / sum m) * ||v_bar||_1
  a: the [CLS] query's attention (softmax of q k^T * scale), averaged over heads;
  m: softmax over all tokens of the [CLS] value with every value (v_cls . v_j, unscaled), per head,
     averaged over heads ("semantic" attention); v_bar: the values averaged over heads.
  The cumulative score is s at the first scored layer, then 0.5 * previous + 0.5 * s.
- At layers where rpl is even, drop the lowest-cumulative patches: with rpl > 0, as many as
  round((N - keep) / sqrt(rpl) * (1 - (H(a) / log N)^2)) (entropy-adaptive, N the patches left;
  the maximum over the images of one tower call), never below `keep`; with rpl = 0, down to `keep`.
  The [CLS] token always stays. The feature layer then runs on the `keep` survivors, whose
  output LLaVA projects.

The rows are dropped inside the tower with `fastv.core.vision_taps.EncoderCut`; the language model
then keeps the surviving patches' positions at layer 0 (their original positions, as fastv does
everywhere; the official code renumbers them). As in the official code, one tower call prunes
every image by the same counts, so the intermediate counts (not the final `keep`) depend on which
images share the call. The official code builds the projected feature layer in as `len(layers) - 2`
(LLaVA's -2); we read it from `vision_feature_layer`.

LLaVA-1.5 only (a CLIP-like tower, [CLS] cropped); drop and mask modes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fastv.core.errors import FastVError
from fastv.core.hf import attention_tap
from fastv.core.hf.attention_tap import query_attention
from fastv.core.hf.families import Adapter
from fastv.core.stages import Stage, StageContext
from fastv.core.vision_taps import EncoderCut, feature_layer
from fastv.methods.base import Method
from fastv.methods.grid import ImageRun, fixed_sizes
from fastv.methods.per_image import Choice, PerImageStage

if TYPE_CHECKING:
    from fastv.core.engine import PruneHandle

KEY = "flowcut_kept"


def flow_score(cls_attention: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per-patch score (n, T-1) from [CLS] attention over patches (n, T-1) and values (n, T, heads, d)."""
    semantic = torch.softmax(torch.einsum("nhd,nthd->nht", values[:, 0], values), dim=-1).mean(1)[:, 1:]
    v_bar = values.mean(2)[:, 1:]
    relation = cls_attention / cls_attention.sum(-1, keepdim=True)
    semantic = semantic / semantic.sum(-1, keepdim=True)
    return (relation + semantic) * v_bar.abs().sum(-1)


def adaptive_prune_count(cls_attention: torch.Tensor, rpl: int, target: int) -> int:
    """Patches to drop at a layer with `rpl` layers left: more when the [CLS] attention is peaked."""
    n = cls_attention.shape[-1]
    p = cls_attention / cls_attention.sum(-1, keepdim=True)
    ratio = -(p * p.log()).sum(-1) / math.log(n)
    r = (n - target) / rpl**0.5 * (1 - ratio**2)
    return int(r.max().round())


@dataclass(kw_only=True)
class FlowCut(Method):
    """Keep `keep` patches per image, pruned progressively inside the vision tower (LLaVA-1.5)."""

    name = "flowcut"

    def stages(self, adapter: Adapter) -> list[Stage]:
        _, index, _ = feature_layer(adapter, self.name)
        if index == 0:
            raise FastVError(
                "flowcut prunes between the vision layers before the projected one, and this tower projects "
                "its first layer's output: use a model whose vision_feature_layer leaves a layer before it"
            )
        for size, _ in fixed_sizes(adapter).values():
            k = self.keep_count(size)
            if not 1 <= k <= size:
                raise FastVError(f"flowcut: keep={k} must be in 1..{size}, the patches of an image")
        return [PerImageStage(self.name, self.choose).stage(0)]

    def prepare(self, handle: PruneHandle) -> list[Callable[[], None]]:
        layers, index, _ = feature_layer(handle.adapter, self.name)
        seen: dict[str, torch.Tensor | None] = {"cumulative": None}

        def on_attention(module, query, key, mask, kwargs) -> None:
            seen["cls"] = query_attention(module, query, key, mask, kwargs, rows=0).mean(1)[:, 0, 1:]

        def on_values(module, args, output) -> None:
            seen["values"] = output.detach().view(*output.shape[:2], -1, module_heads[id(module)])

        module_heads = {id(layer.self_attn.v_proj): layer.self_attn.head_dim for layer in layers[:index]}

        def decide(i: int, hidden: torch.Tensor) -> torch.Tensor | None:
            if i == 0:  # a new tower call: every row is still there ([CLS] + patches)
                seen["cumulative"], seen["target"] = None, self.keep_count(hidden.shape[1] - 1)
            rpl, target = index - i - 1, seen["target"]
            if rpl < 0 or hidden.shape[1] <= target + 1:
                return None
            cls, values = seen.pop("cls"), seen.pop("values")
            scores = flow_score(cls.float(), values.float())
            cumulative = seen["cumulative"]
            cumulative = scores if cumulative is None else 0.5 * cumulative + 0.5 * scores
            seen["cumulative"] = cumulative
            if rpl % 2:
                return None
            drop = adaptive_prune_count(cls.float(), rpl, target) if rpl else hidden.shape[1]
            count = max(hidden.shape[1] - drop, target + 1) - 1
            keep = cumulative.topk(count, dim=1).indices.sort(dim=1).values
            seen["cumulative"] = cumulative.gather(1, keep)
            cls_row = keep.new_zeros(keep.shape[0], 1)
            return torch.cat([cls_row, keep + 1], dim=1)

        cut = EncoderCut(handle, KEY, self.name, decide)
        undo = [
            attention_tap.install(
                handle.model, "vision_config", [layer.self_attn for layer in layers[:index]], on_attention
            )
        ]
        undo += [layer.self_attn.v_proj.register_forward_hook(on_values).remove for layer in layers[:index]]
        return undo + cut.install()

    def choose(self, ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
        kept = ctx.extra.get(KEY)
        if kept is None or run.number >= kept.shape[0]:
            raise FastVError(
                f"flowcut: the prompt holds more images than the vision tower encoded "
                f"({0 if kept is None else kept.shape[0]}); pass pixel_values for every image"
            )
        return Choice(run.positions[kept[run.number].to(run.positions.device)])
