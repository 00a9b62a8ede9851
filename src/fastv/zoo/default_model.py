"""fastv's default model: a small LLaVA trained on the shapes world, shipped inside the package.

No pretrained LVLM can be downloaded on machines without a hub, so fastv ships its own (trained by
``training/train_default_v2.py``, grown from the first default model of ``training/train_default.py``).
It has exactly the LLaVA-1.5 architecture (CLIP-style tower, two-layer MLP projector, Llama text
model), LLaVA-1.5's system prompt and chat template, 144 visual tokens, and answers questions about
`fastv.zoo.datasets.shapes` scenes, asked tersely or the LLaVA way. Loading is offline: the files sit in ``DEFAULT_MODEL_DIR``.
"""

from __future__ import annotations

from pathlib import Path

import torch

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "models" / "default"
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"  # the README's example scenes and prompts
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
        raise FileNotFoundError(
            f"no default model in {path}; train it with `python training/train_default_v2.py` and install its "
            "final folder with `python training/export_checkpoint.py --ckpt OUT/last.pt`"
        )
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype, local_files_only=True)
    model.eval()
    return model, processor
