"""What the demo shows for one request: both answers, the FLOPs and timings, and the pictures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from fastv.core.cost import TextShape, format_flops
from fastv.core.stats import PruneStats
from fastv.flops.llm import theory_layer_flops
from fastv.flops.vision import vision_flops
from fastv.generate import Answer


@dataclass
class FullRun:
    """The full model on one (image, prompt): cached, since no slider changes it."""

    answer: Answer
    allocation: Path | None  # per-layer attention allocation chart (PNG)
    note: str = ""


@dataclass
class Flops:
    """Prefill FLOPs, full vs pruned: exact for the language model, the paper's formula, the vision side."""

    llm_full: int
    llm_fastv: int
    theory_full: float  # the paper's 4nd^2 + 2n^2d + 2ndm per layer (multiply-accumulates)
    theory_fastv: float
    vision: int | None  # tower + projector: identical with and without FastV

    @staticmethod
    def reduction(full: float, pruned: float) -> float:
        return 1 - pruned / full if full else 0.0


@dataclass
class Comparison:
    """Everything the page shows for one request."""

    full_answer: str
    fastv_answer: str
    kept: int
    total: int
    flops: Flops
    prefill_full_s: float
    prefill_fastv_s: float
    masked: Image.Image  # the processed image, pruned patches greyed out
    allocation: Path | None
    full_cached: bool  # the full model's result came from the cache (only the pruned model ran)
    timing_repeats: int = 5  # prefill times are the best of this many runs
    notes: list[str] = field(default_factory=list)
    method: str = "FastV"  # the pruned run's label (`Settings.label`)

    def flops_markdown(self) -> str:
        """A small table: FLOPs and measured prefill time, full vs the method."""
        f = self.flops
        rows = [
            ("LLM prefill, exact", format_flops(f.llm_full), format_flops(f.llm_fastv), f.llm_full, f.llm_fastv),
            (
                "LLM prefill, paper formula (MACs)",
                _si(f.theory_full),
                _si(f.theory_fastv),
                f.theory_full,
                f.theory_fastv,
            ),
        ]
        if f.vision is not None:
            full, fast = f.vision + f.llm_full, f.vision + f.llm_fastv
            rows.append(("whole prefill incl. vision tower", format_flops(full), format_flops(fast), full, fast))
        rows.append(
            (
                f"measured prefill time (best of {self.timing_repeats})",
                f"{self.prefill_full_s * 1000:.1f} ms",
                f"{self.prefill_fastv_s * 1000:.1f} ms",
                self.prefill_full_s,
                self.prefill_fastv_s,
            )
        )
        lines = [f"| | full model | {self.method} | change |", "|---|---:|---:|---:|"]
        for name, a, b, x, y in rows:
            lines.append(f"| {name} | {a} | {b} | {-Flops.reduction(x, y):+.1%} |")
        return "\n".join(lines)


def _si(value: float) -> str:
    return format_flops(value).replace("FLOPs", "MACs")


def flops_of(config: Any, stats: PruneStats) -> Flops:
    """Prefill FLOPs of one pruned run (its stats) beside the full model's, from the model's config."""
    shape = TextShape.from_config(config)
    n, layers = stats.prompt_len, shape.num_layers

    def theory(tokens: int) -> float:
        return theory_layer_flops(tokens, shape.hidden, shape.intermediate)

    try:
        v = vision_flops(config, sum(stats.num_visual))
        vision = (v.tower + v.projector) or None
    except Exception:  # an unusual vision config: show the language model only
        vision = None
    return Flops(
        llm_full=stats.flops["full"],  # the engine's exact count of this very prefill
        llm_fastv=stats.flops["pruned"],
        theory_full=layers * theory(n),
        theory_fastv=sum(theory(m) for m in stats.layer_seq_lens),  # per layer, as the method ran
        vision=vision,
    )
