"""What one pruned prefill did, reported per sample so users can audit and plot it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class PruneStats:
    kept_positions: list[torch.Tensor]  # per sample: kept visual tokens, as indices into its input_ids row
    num_visual: list[int]
    num_kept: list[int]
    layer_seq_lens: list[int]  # sequence length each decoder layer ran with during the prefill
    prompt_len: int
    kept_sequence_index: torch.Tensor | None = None  # (B, L') positions of the rows layers >= K computed
    scores: torch.Tensor | None = None  # (B, L) scores the selection ranked (attention or random)
    stage_kept: list[list[int]] = field(default_factory=list)  # per cut, per sample: visual tokens kept
    flops: dict[str, float] = field(default_factory=dict)  # filled by fastv.flops when available

    @property
    def keep_fraction(self) -> float:
        total = sum(self.num_visual)
        return sum(self.num_kept) / total if total else 1.0
