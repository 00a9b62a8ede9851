"""One answer from a model, with or without FastV: the path the CLI and the demo share."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from fastv.engine import FastV
from fastv.stats import PruneStats


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    stats: PruneStats | None  # None when run without FastV
    seconds: float


@torch.inference_mode()
def answer(
    model: torch.nn.Module,
    processor: Any,
    inputs: dict[str, Any],
    pruner: FastV | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
) -> Answer:
    """Generate for a batch of one; `pruner=None` runs the full model for comparison."""
    start = time.perf_counter()
    if pruner is None:
        out, stats = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample), None
    else:
        with pruner.apply(model) as handle:
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample)
            stats = handle.stats
    seconds = time.perf_counter() - start
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    tokenizer = getattr(processor, "tokenizer", processor)
    text = tokenizer.decode(new, skip_special_tokens=True).strip()
    return Answer(text, new, stats, seconds)
