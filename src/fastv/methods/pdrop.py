"""PDrop (Xing et al., CVPR 2025, arXiv 2410.17247): pyramid visual-token dropping.

Visual tokens are cut at several layers, each cut keeping a share lambda of those still alive,
ranked, as in the official code (Cooperx521/PyramidDrop, `pdrop_rank_drop`), by the attention the
last instruction token pays them at the cut layer itself: layer c's input layernorm, q/k projections
and RoPE applied to the hidden states entering layer c, softmax, mean over heads, top-k per image
(`fastv.core.layer_scoring`; FastV instead reads the attention layer c-1 computed). The official code
then rebuilds the sequence with contiguous position ids, so `positions` defaults to "contiguous";
"original" is fastv's variant. The paper's LLaVA-1.5-7B setting cuts at layers 8, 16, 24 of 32 with
lambda = 0.5, i.e. 576 -> 288 -> 144 -> 72 visual tokens, 270 per layer on average.

Budget: `keep` (or `ratio`) is the average number of visual tokens per decoder layer, per image,
over all L layers. With cuts at c_1 < ... < c_m, spans w_0 = c_1, w_i = c_{i+1} - c_i, w_m = L - c_m,
and n visual tokens in the image, the layer-average is

    avg(lambda) = (w_0 * n + sum_{i=1..m} w_i * n_i) / L,   n_i = round(n * lambda^i).

We solve avg(lambda) = keep for lambda by bisection, then take the integers n >= n_1 >= ... >=
n_m >= 0 nearest n * lambda^i with sum_i w_i n_i = keep * L - w_0 * n exactly, so the per-layer
average is exactly `keep`. Only when no integers reach it (the spans share a factor g that does
not divide the total) does it miss, by less than g / L tokens per layer; `schedule()` shows it. A budget is feasible iff n * c_1 / L <= keep <= n: the layers before the
first cut always see every token, so low budgets need an early first cut (e.g. layers=(2, 6, 12)).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import product

import torch

from fastv.core.errors import FastVError
from fastv.core.hf.families import Adapter
from fastv.core.stages import Stage, StageContext
from fastv.methods.base import Method, increasing_layers
from fastv.methods.fastv import last_token_attention
from fastv.methods.grid import ImageRun, fixed_sizes
from fastv.methods.per_image import Choice, PerImageStage, top


def pyramid(n: int, avg: int, cuts: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """Visual tokens kept after each cut so that the per-layer average is `avg` (see module doc)."""
    spans = [b - a for a, b in zip(cuts, (*cuts[1:], num_layers), strict=True)]
    need = avg * num_layers - cuts[0] * n  # sum_i w_i n_i
    if not 0 <= need <= n * sum(spans):
        lowest = -(-n * cuts[0] // num_layers)
        raise FastVError(
            f"pdrop: an average of {avg} visual tokens per layer is out of reach for an image of {n} tokens "
            f"with cuts at {list(cuts)} of {num_layers} layers (feasible: {lowest}..{n}); "
            "cut earlier (layers=...) or raise keep"
        )

    def total(lam: float) -> float:
        return sum(w * n * lam ** (i + 1) for i, w in enumerate(spans))

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) < need else (lo, mid)
    ideal = [n * lo ** (i + 1) for i in range(len(spans))]
    return _integer_schedule(n, need, spans, ideal)


def _integer_schedule(n: int, need: int, spans: list[int], ideal: list[float]) -> tuple[int, ...]:
    """Integers n >= n_1 >= ... >= n_m >= 0 nearest `ideal` with sum w_i n_i == need (else nearest sum).

    The first m-1 counts are searched around their rounded ideal (within the last span); the last
    count then follows from `need`.
    """
    *head, last = spans
    reach = last if len(head) <= 3 else 2
    best: tuple[float, tuple[int, ...]] | None = None
    for moves in product(range(-reach, reach + 1), repeat=len(head)):
        counts = [round(x) + d for x, d in zip(ideal, moves, strict=False)]
        rest = need - sum(w * c for w, c in zip(head, counts, strict=True))
        for tail in {rest // last, -(-rest // last)}:
            full = (*counts, tail)
            if not all(a >= b for a, b in zip((n, *full), (*full, 0), strict=True)):
                continue
            cost = abs(rest - tail * last) * 1e9 + sum(abs(c - x) for c, x in zip(full, ideal, strict=True))
            if best is None or cost < best[0]:
                best = (cost, full)
    return best[1]


@dataclass(kw_only=True)
class PDrop(Method):
    """Pyramid dropping at `layers` (default L/4, L/2, 3L/4), ranked by the last token's attention
    at each cut layer (its own q/k on its input, as the official code does).

    keep/ratio: average visual tokens per layer, per image (see the module doc for the schedule).
    positions: "contiguous" (official, default) or "original" (fastv's variant).
    Any family (an image = a run of visual tokens, see `fastv.methods.grid`); drop and mask modes;
    contiguous positions need 1D RoPE (not Qwen-VL's M-RoPE).
    """

    layers: tuple[int, ...] | None = None

    name = "pdrop"
    default_positions = "contiguous"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.layers = increasing_layers(self.name, self.layers, 0)

    def cuts(self, num_layers: int) -> tuple[int, ...]:
        if self.layers is not None:
            return self.layers
        if num_layers < 4:
            raise FastVError(f"pdrop's default cuts need >= 4 layers, the model has {num_layers}: pass layers=")
        return (num_layers // 4, num_layers // 2, 3 * num_layers // 4)

    def schedule(self, n: int, num_layers: int) -> tuple[int, ...]:
        """Visual tokens of an n-token image kept after each cut."""
        return _pyramid_cached(n, self.keep_count(n), self.cuts(num_layers), num_layers)

    def visual_tokens_per_layer(self, num_layers: int, n: int) -> list[int]:
        """n up to the first cut, then each cut's count of the pyramid."""
        if self.mode == "mask":
            return [n] * num_layers
        cuts, counts = self.cuts(num_layers), self.schedule(n, num_layers)
        out, current = [], n
        for layer in range(num_layers):
            if layer in cuts:
                current = counts[cuts.index(layer)]
            out.append(current)
        return out

    def stages(self, adapter: Adapter) -> list[Stage]:
        cuts, num_layers = self.cuts(adapter.num_layers), adapter.num_layers
        for size, _ in fixed_sizes(adapter).values():  # refuse impossible budgets up front where we can
            self.schedule(size, num_layers)

        def chooser(stage_no: int):
            def choose(ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
                k = self.schedule(run.size, num_layers)[stage_no]
                scores = last_token_attention(ctx)[run.sample, alive]
                return Choice(top(scores, alive, k, self.name))

            return choose

        return [PerImageStage(self.name, chooser(i)).stage(c, "last", scored_at="own") for i, c in enumerate(cuts)]


@lru_cache(maxsize=256)
def _pyramid_cached(n: int, avg: int, cuts: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    return pyramid(n, avg, cuts, num_layers)
