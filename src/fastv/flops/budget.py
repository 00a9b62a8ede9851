"""Whole-model estimates for a named checkpoint, and the budget that reaches a FLOPs target."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from transformers import PretrainedConfig

from fastv.core.cost import TextShape, prefill_flops
from fastv.core.errors import FastVError
from fastv.flops.llm import fastv_layer_seq_lens, kept_count, theory_reduction
from fastv.flops.shapes import KNOWN_SHAPES, load_config
from fastv.flops.vision import vision_flops

__all__ = ["FlopsReport", "estimate", "solve_budget"]


# --------------------------------------------------------------------------- whole-model estimate


@dataclass
class FlopsReport:
    """One (K, R) setting of one model: vision, projector and LLM FLOPs, full vs FastV."""

    model: str
    k: int
    ratio: float
    n_visual: int
    n_text: int
    kept: int
    batch_size: int
    vision_tower: int
    projector: int
    llm_full: int
    llm_fastv: int
    layer_seq_lens: list[int] = field(default_factory=list)
    theory_reduction: float = 0.0
    vision_note: str = ""

    @property
    def total_full(self) -> int:
        return self.vision_tower + self.projector + self.llm_full

    @property
    def total_fastv(self) -> int:
        return self.vision_tower + self.projector + self.llm_fastv

    @property
    def llm_reduction(self) -> float:
        return 1 - self.llm_fastv / self.llm_full

    @property
    def total_reduction(self) -> float:
        return 1 - self.total_fastv / self.total_full

    @property
    def speedup(self) -> float:
        """Prefill speed-up the FLOPs predict (whole model)."""
        return self.total_full / self.total_fastv

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("total_full", "total_fastv", "llm_reduction", "total_reduction", "speedup"):
            d[name] = getattr(self, name)
        return d


def estimate(
    model: str | PretrainedConfig,
    k: int = 2,
    ratio: float = 0.5,
    n_visual: int | None = None,
    n_text: int = 40,
    frames: int | None = None,
    batch_size: int = 1,
    kept: int | None = None,
) -> FlopsReport:
    """Prefill FLOPs of a model (known name, config path or config) with and without FastV(K, R)."""
    name = model if isinstance(model, str) else getattr(model, "_name_or_path", "") or model.model_type
    config = load_config(model) if isinstance(model, str) else model
    if frames is None and isinstance(model, str) and model.lower() in KNOWN_SHAPES:
        known = KNOWN_SHAPES[model.lower()]
        frames = known.default_frames if known.default_visual == "video" and n_visual is None else None
    vision = vision_flops(config, n_visual, frames, batch_size)
    n_vis = vision.visual_tokens
    shape = TextShape.from_config(config)
    kept = kept_count(n_vis, ratio) if kept is None else kept
    n = n_vis + n_text
    lens = fastv_layer_seq_lens(shape.num_layers, n, n_vis, k, kept)
    return FlopsReport(
        model=name,
        k=k,
        ratio=1 - kept / n_vis if n_vis else 0.0,
        n_visual=n_vis,
        n_text=n_text,
        kept=kept,
        batch_size=batch_size,
        vision_tower=vision.tower,
        projector=vision.projector,
        llm_full=prefill_flops(shape, [n] * shape.num_layers, batch_size),
        llm_fastv=prefill_flops(shape, lens, batch_size),
        layer_seq_lens=lens,
        theory_reduction=theory_reduction(
            shape.hidden, shape.intermediate, shape.num_layers, k, 1 - kept / n_vis if n_vis else 0.0, n_vis, n_text
        ),
        vision_note=vision.note,
    )


def solve_budget(
    model: str | PretrainedConfig,
    budget: float,
    ks: Iterable[int] = (1, 2, 3, 4, 6, 8, 12, 16),
    scope: str = "total",
    **kwargs,
) -> list[FlopsReport]:
    """For each K, the mildest FastV setting (most tokens kept) whose FLOPs fit `budget`.

    `budget` is absolute FLOPs; `scope` is "total" (vision + projector + LLM) or "llm". K values
    deeper than the model are skipped; a K that cannot meet the budget even at R=1 is left out.
    """
    if scope not in ("total", "llm"):
        raise FastVError("scope must be 'total' or 'llm'")
    base = estimate(model, k=1, ratio=0.0, **kwargs)
    config = load_config(model) if isinstance(model, str) else model
    num_layers = TextShape.from_config(config).num_layers
    out: list[FlopsReport] = []

    def cost(r: FlopsReport) -> int:
        return r.total_fastv if scope == "total" else r.llm_fastv

    for k in ks:
        if not 1 <= k <= num_layers:
            continue
        lo, hi = 0, base.n_visual  # FLOPs grow with the kept count: find the largest that fits
        if cost(estimate(config, k=k, kept=0, **kwargs)) > budget:
            continue
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if cost(estimate(config, k=k, kept=mid, **kwargs)) <= budget:
                lo = mid
            else:
                hi = mid - 1
        rep = estimate(config, k=k, kept=lo, **kwargs)
        rep.model = base.model
        out.append(rep)
    return out
