"""The one path every tool runs a model through: prefill or generate, under an optional method.

`fastv generate`, the demo, `fastv eval`, `fastv bench`, `fastv analyze`, the lmms-eval plug-in and
the default model's training check all run a model "with this method, or the full model" and read
back the answer and what the method kept. Doing that here, once, means every tool takes any method
(`method_from_options`) and reports the same statistics (`handle.stats`, `PruneStats`) the same way.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from fastv import flops
from fastv.core.stats import PruneStats
from fastv.methods import Method, make, method_class

# Options the tools expose for every method; a method receives those it has (None: its default).
OPTIONS = ("k", "scorer", "keep", "ratio", "mode", "positions")


def method_settings(name: str) -> set[str]:
    """The settings `make(name, ...)` accepts (a registered method or a composition "a+b")."""
    return {f.name for f in fields(method_class(name)) if f.init}


def method_from_options(name: str, **options: Any) -> Method:
    """A method from a tool's options, e.g. method_from_options("pool", k=2, keep=64, scorer="last_token").

    A tool has one `--k` and one `--scorer` for every method: a method without a layer (pool cuts before
    the language model) or without a scorer ignores them; options given as None are left to the
    method. Anything else the method does not have is refused by `fastv.make`, and the method
    validates its budget, layer and scorer now, before any model runs.
    """
    has = method_settings(name)
    given = {key: value for key, value in options.items() if value is not None}
    given = {key: value for key, value in given.items() if key in has or key not in ("k", "scorer")}
    return make(name, **given)


@contextlib.contextmanager
def applied(model: torch.nn.Module, method: Method | None) -> Iterator[Any]:
    """`method` installed on `model` for the block (None: the full model); yields the handle or None."""
    if method is None:
        yield None
        return
    with method.apply(model) as handle:
        yield handle


def _sync(model: torch.nn.Module) -> None:
    """Wait for queued GPU work so that a clock read covers it (a no-op on the CPU)."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device) and device.type == "cuda":
        torch.cuda.synchronize(device)


def decode(processor: Any, sequences: torch.Tensor, prompt_width: int) -> list[str]:
    """The generated part of each row, decoded without special tokens and stripped."""
    tokenizer = getattr(processor, "tokenizer", processor)
    return [t.strip() for t in tokenizer.batch_decode(sequences[:, prompt_width:], skip_special_tokens=True)]


@dataclass
class Answer:
    """One generation: the first sample's answer, every sample's text, what the method kept, the time."""

    text: str
    token_ids: list[int]
    stats: PruneStats | None  # None when run without a method
    seconds: float
    texts: list[str] = field(default_factory=list)  # every sample of the batch
    logprobs: torch.Tensor | None = None  # (vocab,) first generated token's log-probs (sample 0), when asked


@torch.inference_mode()
def generate(
    model: torch.nn.Module,
    processor: Any,
    inputs: dict[str, Any],
    method: Method | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    logprobs: bool = False,
    **generate_kwargs: Any,
) -> Answer:
    """`model.generate` under `method` (None: the full model), decoded.

    `seconds` covers the vision tower, the prefill and every decode step (GPU work synchronised);
    with max_new_tokens=1 it is the time to first token. `logprobs=True` also returns the first
    generated token's whole log-probability vector (for loyalty metrics such as KL to the full model).
    """
    width = int(inputs["input_ids"].shape[1])
    extra = {"output_logits": True, "return_dict_in_generate": True} if logprobs else {}
    _sync(model)
    start = time.perf_counter()
    with applied(model, method) as handle:
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample, **extra, **generate_kwargs)
        stats = getattr(handle, "stats", None)
    _sync(model)
    seconds = time.perf_counter() - start
    sequences = out.sequences if logprobs else out
    first = torch.log_softmax(out.logits[0][0].float(), dim=-1).cpu() if logprobs else None
    texts = decode(processor, sequences, width)
    return Answer(texts[0], sequences[0, width:].tolist(), stats, seconds, texts, first)


@dataclass
class Prefill:
    """One forward pass over the prompt: its output (logits of the last row), stats and time."""

    output: Any
    stats: PruneStats | None
    seconds: float


@torch.inference_mode()
def prefill(
    model: torch.nn.Module, inputs: dict[str, Any], method: Method | None = None, **forward_kwargs: Any
) -> Prefill:
    """One prefill forward under `method` (vision tower included), timed; logits of the last row only."""
    forward_kwargs.setdefault("logits_to_keep", 1)
    _sync(model)
    start = time.perf_counter()
    with applied(model, method) as handle:
        out = model(**inputs, **forward_kwargs)
        stats = getattr(handle, "stats", None)
    _sync(model)
    return Prefill(out, stats, time.perf_counter() - start)


def layer_seq_lens(model: torch.nn.Module, stats: PruneStats | None, prompt_len: int) -> list[int]:
    """The sequence length each decoder layer ran with: the engine's record, or the whole prompt at
    every layer for the full model (and for a method that found no visual token to prune)."""
    if stats is not None and stats.layer_seq_lens:
        return list(stats.layer_seq_lens)
    return [prompt_len] * model.config.get_text_config(decoder=True).num_hidden_layers


def prefill_flops(model: torch.nn.Module, stats: PruneStats | None, prompt_len: int) -> int:
    """The language model's exact prefill FLOPs of one run (batch of one): the engine's own count
    (`PruneStats.flops`) when a method ran, else the same count for the whole prompt at every layer."""
    if stats is not None and stats.layer_seq_lens and "pruned" in stats.flops:
        return int(stats.flops["pruned"])
    return int(flops.prefill_flops(model.config, layer_seq_lens(model, stats, prompt_len)))


def describe(method: Method | None) -> str:
    """A short label for titles and JSON: 'fastv k=2 r=0.5', 'pool keep=64', 'visionzip+fastv k=2 keep=48'."""
    if method is None:
        return "full model"
    k = getattr(method, "k", None)
    budget = f"keep={method.keep}" if method.keep is not None else f"r={method.ratio:g}"
    return " ".join([method.name, *([f"k={k}"] if k is not None else []), budget])
