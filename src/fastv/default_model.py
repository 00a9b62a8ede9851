"""fastv's default model: a small LLaVA trained on the shapes world, shipped inside the package.

No pretrained LVLM can be downloaded on machines without a hub, so fastv ships its own (trained by
``training/train_default.py``). It has exactly the LLaVA-1.5 architecture (CLIP-style tower, two-layer
MLP projector, Llama text model), 144 visual tokens, and answers questions about
`fastv.datasets.shapes` scenes. Loading is offline: the files sit in ``DEFAULT_MODEL_DIR``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from fastv.loading import chat_text, to_model

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"
WEIGHTS_FILE = "model.safetensors"


def has_default_weights(path: str | Path = DEFAULT_MODEL_DIR) -> bool:
    """True when the trained weights and configs are present (they are written by training)."""
    path = Path(path)
    return (path / WEIGHTS_FILE).is_file() and (path / "config.json").is_file()


def load_default(dtype: torch.dtype = torch.float32, path: str | Path = DEFAULT_MODEL_DIR):
    """Load the shipped default model and its processor, offline. Returns ``(model, processor)``."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    path = Path(path)
    if not has_default_weights(path):
        raise FileNotFoundError(f"no default model in {path}; train it with `python training/train_default.py`")
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True)
    model.eval()
    return model, processor


@torch.inference_mode()
def answer(
    model, processor, images: Sequence[Image.Image], questions: Sequence[str], max_new_tokens: int = 6
) -> list[str]:
    """Greedy answers to one question per image, batched (left padding), the way a user runs it.

    Six new tokens cover the longest answer of the shapes world (five colours and </s>).
    """
    prompts = [chat_text(processor, q, n_images=1, video=False) for q in questions]
    inputs = processor(images=list(images), text=prompts, return_tensors="pt", padding=True)
    inputs = to_model(inputs, model)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :]
    return [t.strip() for t in processor.tokenizer.batch_decode(new, skip_special_tokens=True)]


def exact_match(model, processor, samples, batch_size: int = 64, progress: bool = False) -> dict:
    """Exact-match accuracy over `fastv.datasets.shapes.Sample`s, overall and per question kind."""
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
