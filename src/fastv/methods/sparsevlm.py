"""SparseVLM (Zhang et al., ICML 2025, arXiv 2410.04417): text-guided progressive pruning with recycling.

Visual tokens matter only as far as the question needs them, so SparseVLM lets a few "rater" text
tokens rank them, cuts progressively at several layers, and recycles part of what it cuts into a
few merged tokens. We follow the official v1.0 code (Gumpest/SparseVLMs,
`llava/model/language_model/modelling_sparse_llama.py`, `score.py`, `utils.py`; `USE_VERSION=1_0`,
the version behind the 192/128/64 numbers that VisionZip's table reports):

1. Raters (paper Sec. 3.2): on the language model's input embeddings, m_t = mean over visual
   tokens v of softmax_t(v . t) over the text tokens t after the image; the raters are the text
   tokens with m_t above the mean.
2. At the pruning layers (official: after layers 2, 6, 15 of 32), each visual token's score is the
   attention the raters pay it in that layer (head mean, then rater mean); the top c_i stay
   (c_i = min(table, visual tokens - 1)). The cut applies to that layer's output, i.e. it is a
   stage at the next layer ranked by the previous layer's attention, like FastV.
3. Recycling (Sec. 3.4): of the cut tokens, the 30% (+1) with the highest score are clustered by
   density-peaks clustering (k nearest neighbours with k = clusters, `cluster_and_merge`) into
   m // 10 + 1 clusters on the layer's output states, and each cluster's mean joins the kept
   visual tokens; later stages rank the merged tokens like any other.
4. Budget: the official code takes RETAIN_TOKN in {192, 128, 96, 64} and hand-set counts per cut
   (192: 300, 200, 110; 128: 303, 110, 36; 96: 238, 48, 26; 64: 66, 30, 17) for 576-token images.
   Here `keep` must be one of those budgets scaled to the image (keep * 576 / n in the table, e.g.
   48, 32, 24, 16 of 144) or `schedule=` gives the counts; counts scale by n / 576 (rounded).
   The merged tokens come on top, so the tokens a layer computes are c_i + clusters_i
   (`visual_tokens_per_layer` predicts them exactly).

Differences from the official code:
- Positions: merged tokens take the original position of their cluster's density peak, kept
  tokens keep theirs; the official v1.0 code appends the merged tokens after the kept visual
  tokens and renumbers all positions contiguously.
- Layers: cuts at the next layers after round(l * L / 32) for l = 2, 6, 15 (forced increasing),
  the official ones for L = 32; `layers=` sets them (the layers whose input is cut).
- The 1e-6 random tie-breaker in the density is drawn from a generator seeded by (seed, cut, image).
- Per image (see `fastv.methods.grid`); raters from the text after the sample's last visual token.

Any family (Qwen3-VL: first cut >= deepstack depth); drop mode (merging); `recycle=False` keeps
only the ranked tokens and then also runs in mask mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fastv.core.errors import FastVError
from fastv.core.hf import compat
from fastv.core.hf.families import Adapter
from fastv.core.stages import Stage, StageContext
from fastv.methods.base import Method, increasing_layers
from fastv.methods.clustering import density_peaks
from fastv.methods.grid import ImageRun, fixed_sizes
from fastv.methods.per_image import Choice, PerImageStage

if TYPE_CHECKING:
    from fastv.core.engine import PruneHandle

KEY = "sparsevlm_embeds"
TABLE = {192: (300, 200, 110), 128: (303, 110, 36), 96: (238, 48, 26), 64: (66, 30, 17)}
OFFICIAL_AFTER = (2, 6, 15)  # of 32 layers


def raters(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Boolean (T,) over the text tokens: the raters of Sec. 3.2, from embeddings (V, H), (T, H)."""
    m = (visual.float() @ text.float().T).softmax(dim=1).mean(0)
    return m > m.mean()


def recycled_clusters(pruned: int) -> tuple[int, int]:
    """(tokens recycled, clusters) when `pruned` tokens are cut: the top 30% + 1, one cluster per 10 (+1)."""
    if pruned <= 0:
        return 0, 0
    m = int(pruned * 0.3) + 1
    return m, m // 10 + 1


def cluster_and_merge(x: torch.Tensor, clusters: int, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Density-peaks clustering of x (m, C) into `clusters` groups; (centre indices, group means).

    noise (m,): the tie-breaker added to the density (the official code draws 1e-6 * rand). The
    official `cluster_and_merge` takes as many neighbours as clusters for the density.
    """
    m, c = x.shape
    centres, dist = density_peaks(x, clusters, clusters, noise)
    group = dist[centres].argmin(dim=0)
    group[centres] = torch.arange(clusters, device=x.device)
    sums = x.new_zeros(clusters, c, dtype=torch.float).index_add(0, group, x.float())
    counts = torch.zeros(clusters, device=x.device).index_add(0, group, torch.ones(m, device=x.device))
    return centres, (sums / (counts[:, None] + 1e-6)).to(x.dtype)


@dataclass(kw_only=True)
class SparseVLM(Method):
    """Text-rated progressive cuts with recycling. keep: one of the official budgets (x n / 576).

    layers: the layers whose input is cut (default: after official layers 2, 6, 15 scaled to the model);
    schedule: visual tokens kept (before recycling) after each cut, for an image of 576 tokens
    (default: the official table for `keep`); recycle: merge part of the cut tokens (Sec. 3.4).
    """

    layers: tuple[int, ...] | None = None
    schedule: tuple[int, ...] | None = None
    recycle: bool = True

    name = "sparsevlm"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.layers = increasing_layers(self.name, self.layers, 1)
        if self.schedule is not None:
            self.schedule = tuple(int(x) for x in self.schedule)
            if any(c < 1 for c in self.schedule):
                raise FastVError(f"sparsevlm schedule={self.schedule}: counts must be >= 1")

    def cuts(self, num_layers: int) -> tuple[int, ...]:
        if self.layers is not None:
            out = self.layers
        else:
            out, prev = [], 0
            for after in OFFICIAL_AFTER:
                prev = max(prev + 1, round((after + 1) * num_layers / 32))
                out.append(prev)
            out = tuple(out)
        if out[-1] >= num_layers:
            raise FastVError(f"sparsevlm: cuts at layers {list(out)} do not fit {num_layers} layers; pass layers=")
        if self.schedule is not None and len(self.schedule) != len(out):
            raise FastVError(f"sparsevlm: schedule {self.schedule} needs one count per cut {list(out)}")
        return out

    def counts(self, n: int) -> tuple[int, ...]:
        """Visual tokens ranked into each cut's kept set, for an n-token image (before recycling)."""
        base = self.schedule
        if base is None:
            k = self.keep_count(n)
            label = k * 576 / n
            match = next((b for b in TABLE if abs(b - label) < 1e-9), None)
            if match is None:
                fits = ", ".join(str(b * n // 576) for b in TABLE if b * n % 576 == 0) or "none"
                raise FastVError(
                    f"sparsevlm: keep={k} of {n} is not one of the official budgets (192/128/96/64 of 576; "
                    f"for {n} tokens: {fits}); pass schedule= for other budgets"
                )
            base = TABLE[match]
        return tuple(max(1, round(c * n / 576)) for c in base)

    def per_layer(self, num_layers: int, n: int) -> list[int]:
        """Visual tokens of an n-token image that each layer computes (kept + recycled)."""
        cuts, counts = self.cuts(num_layers), self.counts(n)
        out, current = [], n
        for layer in range(num_layers):
            if layer in cuts:
                c = min(counts[cuts.index(layer)], current - 1)
                current = c + (recycled_clusters(current - c)[1] if self.recycle else 0)
            out.append(current)
        return out

    def visual_tokens_per_layer(self, num_layers: int, n: int) -> list[int]:
        if self.mode == "mask":
            return [n] * num_layers
        return self.per_layer(num_layers, n)

    def stages(self, adapter: Adapter) -> list[Stage]:
        cuts = self.cuts(adapter.num_layers)
        for size, _ in fixed_sizes(adapter).values():
            self.counts(size)  # refuse unsupported budgets up front where the image size is known

        def chooser(stage_no: int):
            return lambda ctx, run, alive: self.choose(stage_no, ctx, run, alive)

        return [
            PerImageStage(self.name, chooser(i)).stage(c, "text_after_visual", merging=self.recycle)
            for i, c in enumerate(cuts)
        ]

    def prepare(self, handle: PruneHandle) -> list[Callable[[], None]]:
        def on_layer0(module, args, kwargs) -> None:
            hidden = compat.hidden_states(args, kwargs)
            if hidden.shape[1] > 1:
                handle.extra[KEY] = hidden.detach()

        hook = handle.adapter.layers[0].register_forward_pre_hook(on_layer0, with_kwargs=True)
        return [hook.remove, lambda: handle.extra.pop(KEY, None)]

    def _raters(self, ctx: StageContext, b: int) -> torch.Tensor:
        """Original positions of sample b's rater tokens."""
        embeds = ctx.extra.get(KEY)
        if embeds is None or embeds.shape[1] != ctx.visual.shape[1]:
            raise FastVError("sparsevlm: the language model's input embeddings were not observed for this prefill")
        visual = ctx.visual[b].nonzero().squeeze(1)
        pos = torch.arange(ctx.visual.shape[1], device=visual.device)
        text = pos[pos > visual.max()]
        return text[raters(embeds[b, visual], embeds[b, text])]

    def choose(self, stage_no: int, ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
        b = run.sample
        rater_pos = self._raters(ctx, b)
        rows = ctx.rows[b].contiguous()
        is_rater = torch.isin(ctx.query_rows[b], rater_pos) & ctx.query_valid[b]
        rel = torch.searchsorted(rows, alive.contiguous())
        score = ctx.attention[b][is_rater][:, rel].mean(0)  # (alive,)
        c = min(self.counts(run.size)[stage_no], alive.numel() - 1)
        top = score.topk(c).indices
        kept = alive[top]
        if not self.recycle:
            return Choice(kept.sort().values)
        cut = torch.ones(alive.numel(), dtype=torch.bool, device=alive.device)
        cut[top] = False
        m, clusters = recycled_clusters(int(cut.sum()))
        if m == 0:
            return Choice(kept.sort().values)
        cut_pos = alive[cut]
        recycled = cut_pos[score[cut].topk(m).indices]
        states = ctx.hidden[b, torch.searchsorted(rows, recycled)]
        g = torch.Generator().manual_seed(self.seed * 65537 + 1009 * stage_no + run.index)  # batch-independent
        noise = torch.rand(m, generator=g).to(states.device) * 1e-6
        centres, merged = cluster_and_merge(states, clusters, noise)
        targets = recycled[centres]
        return Choice(torch.cat([kept, targets]).sort().values, targets, merged)
