"""Model families fastv supports, and the one place each family's quirks are written down.

Every supported model merges its visual features at the positions of its own image/video token
ids and runs a decoder-only language model whose layers take `hidden_states` first. What differs
is where the language model sits, which token ids mark visual content, and a minimum pruning
layer (Qwen3-VL adds "deepstack" visual features after its first layers, on full-length hidden
states, so pruning may only start after them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PretrainedConfig

from fastv.core.errors import UnsupportedModelError
from fastv.core.hf import compat


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    grid: str  # how visual tokens are laid out, for analysis/plots
    min_k: int = 0
    video: bool = False
    notes: str = ""


def _deepstack_depth(config: PretrainedConfig) -> int:
    return len(getattr(config.vision_config, "deepstack_visual_indexes", ()) or ())


FAMILIES: tuple[Family, ...] = (
    Family("LLaVA-1.5", ("llava",), "square grid per image (24x24 = 576 for LLaVA-1.5)"),
    Family("LLaVA-NeXT", ("llava_next",), "any-resolution tiles + newline tokens"),
    Family("LLaVA-NeXT-Video", ("llava_next_video",), "tiles per image, pooled grid per frame", video=True),
    Family("Video-LLaVA", ("video_llava",), "square grid per image or frame", video=True),
    Family("LLaVA-OneVision", ("llava_onevision",), "any-resolution tiles, pooled frames", video=True),
    Family("Qwen2-VL", ("qwen2_vl",), "merged 2x2 patch grid, M-RoPE positions", video=True),
    Family("Qwen2.5-VL", ("qwen2_5_vl",), "merged 2x2 patch grid, M-RoPE positions", video=True),
    Family(
        "Qwen3-VL",
        ("qwen3_vl",),
        "merged patch grid, M-RoPE; deepstack",
        video=True,
        notes="K must be >= the deepstack depth",
    ),
    Family("InternVL", ("internvl",), "pixel-shuffled tiles"),
    Family(
        "Gemma3",
        ("gemma3",),
        "pooled square grid (256 per image)",
        notes="sliding-window layers: the prompt must fit the window",
    ),
    Family("Idefics3", ("idefics3",), "pixel-shuffled tiles"),
    Family("SmolVLM", ("smolvlm",), "pixel-shuffled tiles"),
)

MIN_K = {"qwen3_vl": _deepstack_depth}
TEXT_MODEL_PATHS = ("model.language_model", "language_model", "model.text_model", "text_model")


def supported_names() -> str:
    return ", ".join(f.name for f in FAMILIES)


@dataclass
class Adapter:
    """What the engine needs to know about one loaded model."""

    family: Family
    model: torch.nn.Module
    text_model: torch.nn.Module
    layers: torch.nn.ModuleList
    visual_token_ids: tuple[int, ...]
    text_config_key: str
    min_k: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def text_config(self) -> PretrainedConfig:
        return self.text_model.config

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def _find(model: torch.nn.Module, path: str) -> torch.nn.Module | None:
    obj = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def resolve(model: torch.nn.Module) -> Adapter:
    """Identify a loaded model's family and locate its language model, or say why we cannot."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    family = next((f for f in FAMILIES if model_type in f.model_types), None)
    if family is None:
        raise UnsupportedModelError(
            f"fastv does not support model type {model_type!r} ({type(model).__name__}). "
            f"Supported families: {supported_names()}. Pass the whole vision-language model "
            "(e.g. LlavaForConditionalGeneration), not its language model alone."
        )
    text_model = next((m for p in TEXT_MODEL_PATHS if (m := _find(model, p)) is not None), None)
    if text_model is None or not hasattr(text_model, "layers"):
        raise UnsupportedModelError(f"could not find the language model's decoder layers in {type(model).__name__}")
    ids = tuple(
        int(v) for name in ("image_token_id", "video_token_id") if (v := getattr(config, name, None)) is not None
    )
    if not ids:
        raise UnsupportedModelError(f"{type(model).__name__} config names no image/video token id")
    key = compat.sub_config_key(config, text_model.config)
    if key is None:
        raise UnsupportedModelError(f"could not match {type(text_model).__name__}'s config to a sub-config")
    min_k = MIN_K.get(model_type, lambda c: 0)(config)
    return Adapter(family, model, text_model, text_model.layers, tuple(dict.fromkeys(ids)), key, min_k)
