"""The models and inputs the benchmark times: a local checkpoint, or a random-weight model of a named real shape.

The shape keeps the real width and visual-token count (a tiny vision tower emits the real number of
tokens) while the depth is truncated, so a CPU can hold and run it; `BenchConfig` names one run and
`SUITES` the README's runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fastv import run
from fastv.core.errors import FastVError
from fastv.flops.shapes import KNOWN_SHAPES
from fastv.methods import FastV, Method

TEXT_ID_RANGE = (100, 1000)  # plain word ids in every supported vocabulary (no special tokens)


@dataclass
class BenchConfig:
    """One benchmark run. `model` is a known shape name (random weights) or a checkpoint folder."""

    model: str = "llava-1.5-7b"
    layers: int | None = 4  # truncate the language model to this many layers (None: keep all)
    ks: tuple[int, ...] = (1, 2, 3)
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    overhead_k: int = 2  # FastV at ratio 0 with this K measures the pure overhead
    n_text: int = 40
    frames: int | None = None  # a video of this many frames (video models)
    vision_layers: int = 1  # tiny LLaVA towers; methods need 3 (attention at layer -2, FlowCut's layer before it)
    repeats: int = 5
    warmup: int = 1
    new_tokens: int = 3
    dtype: str = "bfloat16"
    threads: int | None = 1  # one thread: stable timings on a CPU shared with other jobs
    seed: int = 0
    methods: tuple[str, ...] = ()  # any methods instead of FastV's (K, R) grid, e.g. ("fastv", "pdrop")
    keeps: tuple[int, ...] = ()  # their budgets in visual tokens kept (else `ratios`)
    method_k: int | None = None  # the layer of the methods that have one (None: each method's default)

    def settings(self) -> list[tuple]:
        """(k, ratio) per FastV setting, the R=0 overhead first; or (method, "keep"|"ratio", value)."""
        if self.methods:
            budgets = [("keep", n) for n in self.keeps] or [("ratio", r) for r in self.ratios]
            return [(m, kind, value) for m in self.methods for kind, value in budgets]
        grid = [(k, r) for k in self.ks for r in self.ratios]
        return [(self.overhead_k, 0.0)] + [s for s in grid if s != (self.overhead_k, 0.0)]

    def method(self, setting: tuple) -> Method:
        """The method one setting runs (`fastv.run.method_from_options`: it checks its own settings)."""
        if isinstance(setting[0], str):
            name, kind, value = setting
            return run.method_from_options(name, k=self.method_k, **{kind: value})
        k, ratio = setting
        return FastV(k=k, ratio=ratio)


# --------------------------------------------------------------------------- building the model


def _tiny_vision(model_type: str, frames: int | None) -> dict[str, Any]:
    """A one-layer vision tower giving the real visual-token count (576 per image, 256 per frame)."""
    if model_type in ("llava", "llava_next"):
        return dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                    image_size=48, patch_size=2)  # fmt: skip
    if model_type == "video_llava":
        return dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                    image_size=32, patch_size=2)  # fmt: skip
    if model_type == "qwen2_vl":
        return dict(depth=1, embed_dim=64, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2)
    if model_type == "qwen2_5_vl":
        return dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=14,
                    spatial_merge_size=2, window_size=112, fullatt_block_indexes=[0])  # fmt: skip
    raise FastVError(f"no benchmark inputs for model_type {model_type!r}")


def build_model(cfg: BenchConfig) -> tuple[torch.nn.Module, str]:
    """The model to time and a one-line description of what it is."""
    dtype = getattr(torch, cfg.dtype)
    name = cfg.model.lower()
    if name in KNOWN_SHAPES:
        from transformers import AutoModelForImageTextToText

        from fastv.flops.shapes import build_config

        shape = KNOWN_SHAPES[name]
        text = dict(shape.text)
        full_layers = text["num_hidden_layers"]
        if cfg.layers:
            text["num_hidden_layers"] = min(cfg.layers, full_layers)
        if shape.model_type.startswith("qwen"):
            head_dim = text["hidden_size"] // text["num_attention_heads"]
            text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": _mrope(head_dim)}
        vision = {**_tiny_vision(shape.model_type, cfg.frames), **_qwen_out(shape)}
        if shape.model_type in ("llava", "llava_next", "video_llava"):
            vision["num_hidden_layers"] = cfg.vision_layers
        vision_layers = vision.get("num_hidden_layers", vision.get("depth"))
        config = build_config(shape.model_type, text, vision, shape.extra)
        torch.manual_seed(cfg.seed)
        with _default_dtype(dtype):
            model = AutoModelForImageTextToText.from_config(config, attn_implementation="sdpa")
        depth = text["num_hidden_layers"]
        what = (
            f"random-weight {shape.name} shape ({shape.hf_id}): language model at full width, "
            f"{depth} of {full_layers} layers"
            + (" (depth truncated)" if depth < full_layers else "")
            + f"; {vision_layers}-layer tiny vision tower with the real visual-token count"
        )
    else:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=dtype, local_files_only=True)
        what = f"checkpoint {cfg.model}"
    model = model.to(dtype).eval()
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or 0
    return model, what


def _mrope(head_dim: int) -> list[int]:
    """M-RoPE sections (text, height, width) summing to head_dim/2, in Qwen's 2:3:3 proportion."""
    half = head_dim // 2
    a = half // 4
    b = (half - a) // 2
    return [a, b, half - a - b]


def _qwen_out(shape) -> dict[str, Any]:
    if shape.model_type == "qwen2_vl":
        return {"hidden_size": shape.text["hidden_size"]}
    if shape.model_type == "qwen2_5_vl":
        return {"out_hidden_size": shape.text["hidden_size"]}
    return {}


class _default_dtype:
    """Create parameters directly in the benchmark dtype (halves peak memory while building)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype, self.old = dtype, torch.get_default_dtype()

    def __enter__(self) -> None:
        if self.dtype.is_floating_point:
            torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc: object) -> None:
        torch.set_default_dtype(self.old)


def build_inputs(model: torch.nn.Module, cfg: BenchConfig) -> tuple[dict[str, torch.Tensor], int]:
    """Prompt ids with the model's visual tokens plus `n_text` text tokens, and pixel values."""
    config = model.config
    kind = config.model_type
    dtype = next(model.parameters()).dtype
    g = torch.Generator().manual_seed(cfg.seed)
    text = torch.randint(*TEXT_ID_RANGE, (cfg.n_text,), generator=g)
    pre, post = text[:4], text[4:]
    vc = config.vision_config
    if kind in ("llava", "video_llava"):
        side = vc.image_size
        patches = (side // vc.patch_size) ** 2
        if kind == "video_llava" or cfg.frames:
            frames = cfg.frames or 8
            n_visual = frames * (patches + 1)
            visual = torch.full((n_visual,), config.video_token_id)
            pixels = {"pixel_values_videos": torch.randn(1, frames, 3, side, side, generator=g, dtype=dtype)}
        else:
            n_visual = patches
            visual = torch.full((n_visual,), config.image_token_id)
            pixels = {"pixel_values": torch.randn(1, 3, side, side, generator=g, dtype=dtype)}
        ids = torch.cat([pre, visual, post])[None]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), **pixels}, n_visual
    if kind == "llava_next":
        # anyres at the largest square grid: a (2s x 2s) image -> base crop + 2x2 tiles of the tower's
        # s px, unpadded feature grid with a newline per row: 576 + 48 * 49 = 2928 tokens at s=336.
        side_px = vc.image_size
        pin = [2 * side_px, 2 * side_px]
        if [list(p) for p in config.image_grid_pinpoints].count(pin) == 0:
            raise FastVError(f"llava_next inputs need image_grid_pinpoints to contain {pin} (a 2x2 grid of the tower)")
        side = side_px // vc.patch_size
        n_visual = side * side + (2 * side) * (2 * side + 1)
        ids = torch.cat([pre, torch.full((n_visual,), config.image_token_id), post])[None]
        pixels = torch.randn(1, 5, 3, side_px, side_px, generator=g, dtype=dtype)
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "pixel_values": pixels,
            "image_sizes": torch.tensor([pin]),
        }, n_visual
    if kind in ("qwen2_vl", "qwen2_5_vl"):
        t, h, w = 1, 48, 48  # one 672x672 image -> 576 visual tokens
        if cfg.frames:
            t = max(1, cfg.frames // vc.temporal_patch_size)
            h = w = 32  # 16x16 = 256 merged tokens per temporal group
        n_visual = t * h * w // vc.spatial_merge_size**2
        token = config.video_token_id if cfg.frames else config.image_token_id
        ids = torch.cat([pre, torch.tensor([config.vision_start_token_id]), torch.full((n_visual,), token), post])
        ids = ids[None]
        patch = 3 * vc.temporal_patch_size * vc.patch_size**2
        pix = torch.randn(t * h * w, patch, generator=g, dtype=dtype)
        grid = torch.tensor([[t, h, w]])
        mm = (ids == token).long() * (2 if cfg.frames else 1)
        extra = (
            {"pixel_values_videos": pix, "video_grid_thw": grid}
            if cfg.frames
            else {"pixel_values": pix, "image_grid_thw": grid}
        )
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": mm, **extra}, n_visual
    raise FastVError(f"no benchmark inputs for model_type {kind!r}")


SUITES: dict[str, BenchConfig] = {
    # LLaVA-1.5-7B width, 576 image tokens + 40 text tokens; several K for the plot.
    "image": BenchConfig(model="llava-1.5-7b", layers=4, ks=(1, 2, 3), ratios=(0.25, 0.5, 0.75), repeats=5),
    # Video-LLaVA-7B width, 8 frames x 257 tokens (2056 visual tokens).
    "video": BenchConfig(model="video-llava-7b", layers=4, ks=(2,), ratios=(0.5, 0.75), frames=8, repeats=5),
}
