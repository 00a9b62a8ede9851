"""Accuracy of the shipped default model on the shapes world, the way a user runs it.

Training (`training/train_default.py`, `training/train_default_v2.py`), the default model's tests and the vLLM serving tests score
the model with these; they live in the eval layer because they generate through `fastv.run`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from PIL import Image

from fastv.core.hf.chat import chat_text
from fastv.loading import to_model
from fastv.run import generate


def answer(
    model, processor, images: Sequence[Image.Image], questions: Sequence[str], max_new_tokens: int = 6
) -> list[str]:
    """Greedy answers to one question per image, batched (left padding), the way a user runs it.

    Six new tokens cover the longest answer of the shapes world (five colours and </s>).
    """
    prompts = [chat_text(processor, q, n_images=1, video=False) for q in questions]
    inputs = processor(images=list(images), text=prompts, return_tensors="pt", padding=True)
    inputs = to_model(inputs, model)
    return generate(model, processor, inputs, None, max_new_tokens=max_new_tokens).texts


def exact_match(model, processor, samples, batch_size: int = 64, progress: bool = False) -> dict:
    """Exact-match accuracy over `fastv.zoo.datasets.shapes.Sample`s, overall and per question kind."""
    hits: dict[str, list[int]] = defaultdict(list)
    batches = range(0, len(samples), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="eval", unit="batch")
    for start in batches:
        chunk = samples[start : start + batch_size]
        preds = answer(model, processor, [s.image() for s in chunk], [s.question for s in chunk])
        for s, p in zip(chunk, preds, strict=True):
            hits[s.kind].append(int(p == s.answer))
    per_kind = {k: sum(v) / len(v) for k, v in sorted(hits.items())}
    total = sum(sum(v) for v in hits.values())
    n = sum(len(v) for v in hits.values())
    return {"overall": total / max(n, 1), "per_kind": per_kind, "n": n}
