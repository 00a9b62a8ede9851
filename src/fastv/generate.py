"""One answer from a model under any method (or none), and the notes the CLI and the demo print with it."""

from __future__ import annotations

from typing import Any

import torch

from fastv.core.stats import PruneStats
from fastv.methods import Method
from fastv.run import Answer, generate

__all__ = ["Answer", "answer", "context_note", "kept_note"]


def answer(
    model: torch.nn.Module,
    processor: Any,
    inputs: dict[str, Any],
    pruner: Method | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
) -> Answer:
    """Generate for a batch of one under any method; `pruner=None` runs the full model (`fastv.run.generate`)."""
    return generate(model, processor, inputs, pruner, max_new_tokens=max_new_tokens, do_sample=do_sample)


def context_note(model: torch.nn.Module, inputs: dict[str, Any], max_new_tokens: int = 0) -> str | None:
    """A note when the prompt (plus the answer) runs past the model's context window: the model then
    answers, but from positions it never saw in training, so the answer is garbage."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    window = getattr(text, "max_position_embeddings", None)
    if not isinstance(window, int) or "input_ids" not in inputs:
        return None
    n = int(inputs["input_ids"].shape[1])
    if n + max_new_tokens <= window:
        return None
    return (
        f"the prompt has {n} tokens (+{max_new_tokens} to generate) but the model's context window is {window}: "
        "expect a meaningless answer; shorten the prompt or use fewer/smaller images"
    )


def kept_note(stats: PruneStats | None) -> str | None:
    """A note when pruning left no visual token: the answer then never saw the image."""
    if stats is None or not sum(stats.num_visual) or sum(stats.num_kept):
        return None
    return (
        f"the pruning kept 0 of {sum(stats.num_visual)} visual tokens: the answer never saw the image; "
        "use a smaller --ratio or --keep N"
    )
