"""What the engine knows about one top-level forward call: prefill or decode, and where the image is.

A prefill's facts (which tokens are visual, which text follows the image, the prompt's length) are
worked out once at the model's forward pre-hook and read by every layer hook of that call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fastv.core.errors import FastVError


def visual_mask(input_ids: torch.Tensor, visual_ids: list[int] | tuple[int, ...]) -> torch.Tensor:
    """(B, L) True where a token is one of the model's image/video token ids."""
    return torch.isin(input_ids, torch.tensor(visual_ids, device=input_ids.device))


@dataclass
class Call:
    """State of one top-level forward call (prefill or decode step)."""

    prefill: bool
    active: bool
    prompt_len: int
    past_len: int  # cache entries before this call, counted as if nothing had been pruned
    input_ids: torch.Tensor | None = None
    visual: torch.Tensor | None = None
    text_after: torch.Tensor | None = None  # (B, L) non-pad text after each sample's last visual token
    attention: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=dict)

    @classmethod
    def prefill_of(
        cls,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        visual_ids: list[int] | tuple[int, ...],
    ) -> Call:
        """A prefill call: find its visual tokens (never the last one) and the text after the image.

        Refuses what would make the last column not the prompt's last token (right padding) and
        calls without input_ids (visual tokens are found by their token ids).
        """
        if input_ids is None:
            raise FastVError("fastv finds visual tokens from input_ids: call the model with input_ids")
        if attention_mask is not None and attention_mask.ndim == 2 and not bool(attention_mask[:, -1].all()):
            raise FastVError(
                "right padding: the last prompt token must sit in the last column; "
                "set processor.tokenizer.padding_side = 'left'"
            )
        visual = visual_mask(input_ids, visual_ids)
        visual[:, -1] = False  # the token whose logits generation reads is never dropped
        length = input_ids.shape[1]
        pos = torch.arange(length, device=input_ids.device)
        last_visual = torch.where(visual, pos, -1).max(dim=1, keepdim=True).values
        text_after = pos > last_visual
        if attention_mask is not None and attention_mask.ndim == 2:
            text_after &= attention_mask.bool()
        return cls(True, bool(visual.any()), length, 0, input_ids, visual, text_after)
