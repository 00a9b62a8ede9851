"""What one pruned prefill did, reported per sample so users can audit and plot it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PretrainedConfig

from fastv.core.cost import prefill_report
from fastv.core.selection import Selection


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

    @classmethod
    def of_prefill(
        cls,
        cut_layers: list[int],
        done: list[Selection],
        scores: torch.Tensor,
        drop: bool,
        prompt_len: int,
        text_config: PretrainedConfig,
        num_layers: int,
    ) -> PruneStats:
        """The stats of a prefill whose stages at `cut_layers` made the selections `done`, in order.

        In drop mode each layer runs with the width of the last cut at or before it; in mask mode
        every layer runs the whole prompt (the FLOPs say so too).
        """
        lens, width = [], prompt_len
        cuts = dict(zip(cut_layers, done, strict=True))
        for layer in range(num_layers):
            if drop and layer in cuts:
                width = cuts[layer].index.shape[1]
            lens.append(width)
        last, first = done[-1], done[0]
        batch = first.keep_mask.shape[0]
        return cls(
            kept_positions=last.kept_visual,
            num_visual=first.num_visual,
            num_kept=last.num_kept,
            layer_seq_lens=lens,
            prompt_len=prompt_len,
            kept_sequence_index=last.index,
            scores=scores,
            stage_kept=[s.num_kept for s in done],
            flops=prefill_report(text_config, lens, batch, prompt_len).to_dict(),
        )
