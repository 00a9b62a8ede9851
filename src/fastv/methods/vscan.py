"""VScan (Zhang et al., TMLR 2026, arXiv 2505.22654): global + local scans with merging, then a mid-LM cut.

VScan's analysis finds that the vision tower's shallow layers attend locally and its deep layers
globally, and that the language model only needs text relevance in its middle layers. It cuts
twice (paper Sec. 4): (1) while encoding, keep "local" tokens (top [CLS] attention of a shallow
layer inside each window) and "global" tokens (top [CLS] attention of a deep layer), merging every
other token into its most similar kept token; (2) at a middle language-model layer, keep the
visual tokens the last instruction token attends to most.

We follow the official LLaVA code (Tencent/SelfEvolvingAgent, `VScan/llava/model/llava_arch.py`
`encode_images`, `window_cls_selection`, `token_merging`; `modeling_llama_x.py` `layer_prune`) and
its LLaVA-1.5 scripts (`--visual_token_num 96 --layer_list [16] --image_token_list [32]`: 96 tokens
after encoding, 32 from layer 16 of 32, i.e. 64 per layer on average):

- Budget: `keep` is the average number of visual tokens per language-model layer (as the paper's
  "64"). Stage 1 keeps n1 = round(1.5 * keep) (the scripts' 96 for 64), stage 2 at layer c = L / 2
  keeps n2 with (c * n1 + (L - c) * n2) / L = keep (32 for 64).
- Local scan: the shallow layer's [CLS] attention (vision layer 5 of 24, head mean) in a 4 x 4 grid
  of windows (6 x 6 tokens each on a 24 x 24 grid); each window keeps its top
  floor(n1 / 2 / 16) tokens.
- Global scan: the projected layer's [CLS] attention with the local tokens zeroed; its top
  n1 - (local count) tokens.
- Merging: every other token is added to its most cosine-similar kept token (projected features);
  a kept token becomes (itself + its merged tokens) / (1 + their count).
- Stage 2: the last prompt token's attention (head mean) over the visual tokens, per image, from
  layer c's own queries and keys on its input, as the official `layer_prune` computes it (the
  engine's `scored_at="own"`, `fastv.core.layer_scoring`; PDrop's rule too).

Differences from the official code:
- Merging finds each token's most similar kept token by one matmul of unit rows; the official
  broadcast of cosine_similarity over (others x kept x hidden) needs ~4 GB at LLaVA-7B width.
- The official code keeps n1 / 2 global tokens, so when n1 / 2 is not a multiple of 16 it keeps
  fewer than n1 in all (68 for 72); we give the global scan the rest, so exactly n1 stay.
- Grids and layers other than LLaVA-1.5's: the windows are `windows` x `windows` (default 4) of the
  image grid, the shallow layer is round(5 * layers / 24) unless `shallow=` is given, the deep one
  is the projected layer (LLaVA-1.5: -2, the official [-2]).
- Kept tokens keep their original positions; the official code renumbers them.

LLaVA-1.5 only (the [CLS] attention of a CLIP-like tower, a square grid); drop mode (merging).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fastv.core.errors import FastVError
from fastv.core.hf.families import Adapter
from fastv.core.stages import Stage, StageContext
from fastv.core.vision_taps import feature_layer, images_attention, record_cls_attention
from fastv.methods.base import Method
from fastv.methods.fastv import last_token_attention
from fastv.methods.grid import ImageRun, require_grid
from fastv.methods.per_image import Choice, PerImageStage, top

if TYPE_CHECKING:
    from fastv.core.engine import PruneHandle

SHALLOW, DEEP = "vscan_shallow", "vscan_deep"


def window_selection(attention: torch.Tensor, grid: tuple[int, int], windows: int, count: int) -> torch.Tensor:
    """Top `count // windows**2` tokens of each window of a windows x windows split (row-major windows)."""
    h, w = grid
    wh, ww = h // windows, w // windows
    k = count // (windows * windows)
    if k == 0:
        return torch.zeros(0, dtype=torch.long, device=attention.device)
    amap = attention.view(h, w)
    out = []
    for i in range(windows):
        for j in range(windows):
            block = amap[i * wh : (i + 1) * wh, j * ww : (j + 1) * ww].reshape(-1)
            local = block.topk(k).indices
            out.append((i * wh + local // ww) * w + j * ww + local % ww)
    return torch.cat(out)


def merge_into_kept(features: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """(kept tokens + the tokens merged into each) / (1 + count), kept in position order (k, H)."""
    mask = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
    mask[kept] = True
    retained, others = features[mask].float(), features[~mask].float()
    if others.shape[0] == 0:
        return features[mask]
    # cos(o, r) as one matmul of unit rows: the official broadcast (others x kept x H) took ~4 GB at 7B width
    unit = torch.nn.functional.normalize
    nearest = (unit(others, dim=-1) @ unit(retained, dim=-1).T).argmax(1)
    sums = retained.index_add(0, nearest, others)
    counts = torch.ones(retained.shape[0], device=features.device).index_add(
        0, nearest, torch.ones(nearest.shape[0], device=features.device)
    )
    return (sums / counts[:, None]).to(features.dtype)


@dataclass(kw_only=True)
class VScan(Method):
    """Global + local scans with merging before the LM, then a cut at `layer` (default L // 2).

    keep/ratio: average visual tokens per layer, per image (see the module doc for the split).
    """

    layer: int | None = None
    split: float = 1.5
    shallow: int | None = None
    windows: int = 4

    name = "vscan"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layer is not None and self.layer < 1:
            raise FastVError(f"vscan: layer={self.layer} must be >= 1")
        if self.split < 1.0:
            raise FastVError(f"vscan: split={self.split} must be >= 1 (stage 1 keeps split * keep tokens)")
        if self.windows < 1:
            raise FastVError(f"vscan: windows={self.windows} must be >= 1")

    def cut(self, num_layers: int) -> int:
        c = num_layers // 2 if self.layer is None else self.layer
        if not 1 <= c < num_layers:
            raise FastVError(f"vscan: layer={c} is outside 1..{num_layers - 1}")
        return c

    def schedule(self, n: int, num_layers: int) -> tuple[int, int]:
        """(n1, n2): visual tokens of an n-token image kept before the LM and from the second cut on."""
        keep, c = self.keep_count(n), self.cut(num_layers)
        n1 = min(n, round(self.split * keep))
        n2 = round((keep * num_layers - c * n1) / (num_layers - c))
        if not 0 <= n2 <= n1 or n1 < 1:
            raise FastVError(
                f"vscan: an average of {keep} visual tokens per layer of {n} cannot be split as "
                f"{n1} before the LM and the rest after layer {c}; lower split or raise keep"
            )
        return n1, n2

    def visual_tokens_per_layer(self, num_layers: int, n: int) -> list[int]:
        n1, n2 = self.schedule(n, num_layers)
        c = self.cut(num_layers)
        return [n1] * c + [n2] * (num_layers - c)

    def stages(self, adapter: Adapter) -> list[Stage]:
        grid = require_grid(adapter, self.name)
        layers, _, _ = feature_layer(adapter, self.name)
        self._shallow(len(layers))
        if grid[0] % self.windows or grid[1] % self.windows:
            raise FastVError(f"vscan: windows={self.windows} does not divide the {grid[0]}x{grid[1]} grid")
        self.schedule(grid[0] * grid[1], adapter.num_layers)
        c = self.cut(adapter.num_layers)
        return [
            PerImageStage(self.name, self.scan).stage(0, merging=True),
            PerImageStage(self.name, self.rank).stage(c, "last", scored_at="own"),
        ]

    def _shallow(self, tower_layers: int) -> int:
        index = round(5 * tower_layers / 24) if self.shallow is None else self.shallow
        if not 0 <= index < tower_layers:
            raise FastVError(f"vscan: shallow={index} is not a layer of the {tower_layers}-layer vision tower")
        return index

    def prepare(self, handle: PruneHandle) -> list[Callable[[], None]]:
        layers, _, _ = feature_layer(handle.adapter, self.name)
        return [
            record_cls_attention(handle, SHALLOW, self.name, self._shallow(len(layers))),
            record_cls_attention(handle, DEEP, self.name),
        ]

    def scan(self, ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
        n1, _ = self.schedule(run.size, ctx.adapter.num_layers)
        shallow = images_attention(ctx.extra, SHALLOW, run.number, run.size, self.name).to(alive.device)
        deep = images_attention(ctx.extra, DEEP, run.number, run.size, self.name).to(alive.device).clone()
        local = window_selection(shallow.float(), run.grid, self.windows, n1 // 2)
        deep[local] = 0
        chosen = torch.cat([local, deep.float().topk(n1 - local.numel()).indices]).sort().values
        rel = torch.searchsorted(ctx.rows[run.sample].contiguous(), run.positions.contiguous())
        merged = merge_into_kept(ctx.hidden[run.sample, rel], chosen)
        kept = run.positions[chosen]
        return Choice(kept, kept, merged)

    def rank(self, ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
        _, n2 = self.schedule(run.size, ctx.adapter.num_layers)
        scores = last_token_attention(ctx)[run.sample, alive]
        return Choice(top(scores, alive, n2, self.name))
