"""What the engine runs: a `Stage` (where to cut, how many to keep, how to rank) and what it ranks by.

The engine knows stages, not methods: `fastv.methods` turns a method's settings into stages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import torch

from fastv.core.selection import Selection

if TYPE_CHECKING:
    from fastv.core.hf.families import Adapter


Mode = Literal["drop", "mask"]
Rows = Literal["last", "text_after_visual"]
ScoredAt = Literal["previous", "own"]
Positions = Literal["original", "contiguous"]


@dataclass
class StageContext:
    """Everything a stage may rank by. Positions are original sequence positions."""

    input_ids: torch.Tensor  # (B, L)
    visual: torch.Tensor  # (B, L) every visual position
    alive: torch.Tensor  # (B, L) visual positions still computed before this stage
    hidden: torch.Tensor  # (B, Lc, H) hidden states entering the stage's layer
    rows: torch.Tensor  # (B, Lc) original positions of those rows
    generator: torch.Generator  # seeded per prefill
    adapter: Adapter
    attention: torch.Tensor | None = None  # (B, r, Lc) head-averaged probs of the tapped query rows
    query_rows: torch.Tensor | None = None  # (B, r) original positions of those query rows
    query_valid: torch.Tensor | None = None  # (B, r) which tapped rows count for each sample
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific (e.g. vision attention)

    def absolute(self, current: torch.Tensor, fill: float = float("-inf")) -> torch.Tensor:
        """Scores over the current rows (B, Lc) -> over original positions (B, L)."""
        out = torch.full(self.visual.shape, fill, dtype=current.dtype, device=current.device)
        return out.scatter(1, self.rows, current)


@dataclass
class Stage:
    layer: int  # pruning happens as this decoder layer starts (0: before the language model)
    # Visual tokens alive -> visual tokens kept (per sample); None when `score` returns the counts.
    keep: Callable[[int], int] | None
    # (B, L) over original positions, higher is kept; or, with keep=None, (scores, kept count per
    # sample) for methods whose budget is not a function of the sample's visual-token count (per image)
    score: Callable[[StageContext], torch.Tensor | tuple[torch.Tensor, list[int]]]
    attention_rows: Rows | None = None  # query rows whose attention the score needs
    merge: Callable[[StageContext, Selection], torch.Tensor] | None = None  # new hidden rows (B, L', H)
    # Where those rows' attention comes from: "previous" records what layer-1 computed (FastV);
    # "own" computes this layer's attention on its input before the cut, with its own norm, q/k and
    # RoPE (PDrop's official rule; see fastv.core.layer_scoring).
    scored_at: ScoredAt = "previous"
    # Positions of the kept tokens from this layer on: "original" keeps the positions they had;
    # "contiguous" renumbers them as if the dropped tokens had never been in the prompt.
    positions: Positions = "original"


class StagePlan(Protocol):
    """What the engine asks of a method (`fastv.methods.Method` is one): its stages and a few settings.

    A protocol, so that the engine depends on this contract and not on the methods package above it.
    """

    name: str
    mode: Mode
    seed: int
    require_visual: bool

    def build(self, adapter: Adapter) -> list[Stage]: ...

    def prepare(self, handle: Any) -> list[Callable[[], None]]: ...  # handle: the engine's PruneHandle
