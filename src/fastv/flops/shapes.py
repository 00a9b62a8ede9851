"""Shapes of well-known vision-language models, as config facts only (no weights, no hub).

FLOPs depend on nothing but widths, depths and token counts, so a transformers config object built
from these facts lets `fastv flops` answer offline for the models the FastV paper talks about. A
local `config.json` (or a checkpoint folder) works the same way through `load_config`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoConfig, PretrainedConfig

from fastv.core.errors import FastVError

# CLIP ViT-L/14 at 336 px (LLaVA-1.5, LLaVA-NeXT) and at 224 px (LanguageBind, Video-LLaVA).
_CLIP_L = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14)
_VICUNA_7B = dict(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
)  # fmt: skip
_VICUNA_13B = dict(
    hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
    num_key_value_heads=40, vocab_size=32064, max_position_embeddings=4096,
)  # fmt: skip
_QWEN2_VIT = dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4, patch_size=14, spatial_merge_size=2)
_QWEN25_VIT = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, spatial_merge_size=2,
    window_size=112, fullatt_block_indexes=[7, 15, 23, 31],
)  # fmt: skip


def _qwen_text(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int) -> dict[str, int]:
    """A Qwen2 text config's widths and depths (the rest keeps transformers' defaults)."""
    return dict(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
    )  # fmt: skip


@dataclass(frozen=True)
class KnownShape:
    """One named model: the config facts and the visual input it usually sees."""

    name: str
    hf_id: str
    model_type: str  # transformers model_type of the whole VLM
    text: dict[str, Any]
    vision: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    default_visual: str = "image"  # "image" or "video"
    default_frames: int = 1
    note: str = ""

    def config(self) -> PretrainedConfig:
        """A transformers config of the whole model, built offline."""
        return build_config(self.model_type, self.text, self.vision, self.extra)


KNOWN_SHAPES: dict[str, KnownShape] = {
    s.name: s
    for s in [
        KnownShape(
            "llava-1.5-7b",
            "llava-hf/llava-1.5-7b-hf",
            "llava",
            _VICUNA_7B,
            {**_CLIP_L, "image_size": 336},
            note="CLIP ViT-L/14-336 + Vicuna-7B; 576 visual tokens per image",
        ),
        KnownShape(
            "llava-1.5-13b",
            "llava-hf/llava-1.5-13b-hf",
            "llava",
            _VICUNA_13B,
            {**_CLIP_L, "image_size": 336},
            note="CLIP ViT-L/14-336 + Vicuna-13B; 576 visual tokens per image",
        ),
        KnownShape(
            "llava-next-7b",
            "llava-hf/llava-v1.6-vicuna-7b-hf",
            "llava_next",
            _VICUNA_7B,
            {**_CLIP_L, "image_size": 336},
            note="anyres: a 672x672 image = 5 crops of 336 px -> 2928 visual tokens (2x2 grid + newlines + base)",
        ),
        KnownShape(
            "video-llava-7b",
            "LanguageBind/Video-LLaVA-7B-hf",
            "video_llava",
            _VICUNA_7B,
            {**_CLIP_L, "image_size": 224},
            default_visual="video",
            default_frames=8,
            note="LanguageBind ViT-L/14-224 + Vicuna-7B; a video = 8 frames x 257 tokens",
        ),
        KnownShape(
            "qwen2-vl-2b",
            "Qwen/Qwen2-VL-2B-Instruct",
            "qwen2_vl",
            _qwen_text(hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, vocab=151936),
            {**_QWEN2_VIT, "hidden_size": 1536},
            extra={"tie_word_embeddings": True},
            note="dynamic resolution; default a 672x672 image -> 576 visual tokens",
        ),  # fmt: skip
        KnownShape(
            "qwen2-vl-7b",
            "Qwen/Qwen2-VL-7B-Instruct",
            "qwen2_vl",
            _qwen_text(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152064),
            {**_QWEN2_VIT, "hidden_size": 3584},
            note="dynamic resolution; default a 672x672 image -> 576 visual tokens",
        ),  # fmt: skip
        KnownShape(
            "qwen2.5-vl-3b",
            "Qwen/Qwen2.5-VL-3B-Instruct",
            "qwen2_5_vl",
            _qwen_text(hidden=2048, intermediate=11008, layers=36, heads=16, kv_heads=2, vocab=151936),
            {**_QWEN25_VIT, "out_hidden_size": 2048},
            extra={"tie_word_embeddings": True},
            note="dynamic resolution, windowed ViT; default a 672x672 image -> 576 visual tokens",
        ),  # fmt: skip
        KnownShape(
            "qwen2.5-vl-7b",
            "Qwen/Qwen2.5-VL-7B-Instruct",
            "qwen2_5_vl",
            _qwen_text(hidden=3584, intermediate=18944, layers=28, heads=28, kv_heads=4, vocab=152064),
            {**_QWEN25_VIT, "out_hidden_size": 3584},
            note="dynamic resolution, windowed ViT; default a 672x672 image -> 576 visual tokens",
        ),  # fmt: skip
    ]
}


def build_config(
    model_type: str, text: dict[str, Any], vision: dict[str, Any], extra: dict[str, Any] | None = None
) -> PretrainedConfig:
    """Build the transformers config of a VLM family from plain dicts (also used for tiny test models)."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaNextConfig,
        Qwen2_5_VLConfig,
        Qwen2VLConfig,
        VideoLlavaConfig,
    )

    extra = dict(extra or {})
    if model_type in ("llava", "llava_next", "video_llava"):
        cls = {"llava": LlavaConfig, "llava_next": LlavaNextConfig, "video_llava": VideoLlavaConfig}[model_type]
        return cls(vision_config=CLIPVisionConfig(**vision), text_config=LlamaConfig(**text), **extra)
    if model_type == "qwen2_vl":
        return Qwen2VLConfig(text_config=dict(text), vision_config=dict(vision), **extra)
    if model_type == "qwen2_5_vl":
        return Qwen2_5_VLConfig(text_config=dict(text), vision_config=dict(vision), **extra)
    raise FastVError(f"no config builder for model_type {model_type!r}")


def load_config(name_or_path: str) -> PretrainedConfig:
    """A known shape by name (case-insensitive), or a local `config.json` / checkpoint folder."""
    key = name_or_path.lower()
    if key in KNOWN_SHAPES:
        return KNOWN_SHAPES[key].config()
    path = Path(name_or_path)
    if path.is_file():
        data = json.loads(path.read_text())
        return AutoConfig.for_model(**data)
    if path.is_dir():
        return AutoConfig.from_pretrained(path, local_files_only=True)
    known = ", ".join(KNOWN_SHAPES)
    raise FastVError(f"unknown model {name_or_path!r}: give a config.json path, a folder, or one of {known}")
