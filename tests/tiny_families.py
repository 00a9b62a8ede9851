"""Tiny random-weight models of every supported family, with left-padded 2-prompt batches.

Each builder returns `(model, inputs)`: fp32, eval mode, the requested attention implementation,
and inputs built directly (no processors, no downloads) with real pixel tensors and every extra
argument the family's forward needs. The two prompts hold different numbers of visual tokens
wherever the family allows it (one image vs two, different image sizes, image vs video), so the
engine's per-sample selection and batch padding are exercised on every family.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import transformers as tf
from tiny_llava import left_pad

VOCAB = 256
PAD = 0
IMAGE = 250
VIDEO = 251
TEXT_HI = 240  # ordinary text ids are drawn from [1, TEXT_HI)

Segment = int | tuple[int, int]  # n text tokens, or (token id, run length)
Built = tuple[torch.nn.Module, dict[str, torch.Tensor]]


def _llama(**kw: Any) -> dict[str, Any]:
    """Text-model settings shared by the Llama/Qwen2-shaped language models (4 layers, K=2 fits)."""
    base = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=PAD, bos_token_id=None, eos_token_id=None,
        tie_word_embeddings=False,
    )  # fmt: skip
    base.update(kw)
    return base


def _finish(model: torch.nn.Module, attn: str) -> torch.nn.Module:
    model = model.float().eval()
    model.set_attn_implementation(attn)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = None  # always generate the full number of new tokens
    return model


def _ids(segments: list[Segment], g: torch.Generator) -> list[int]:
    out: list[int] = []
    for seg in segments:
        if isinstance(seg, int):
            out += torch.randint(1, TEXT_HI, (seg,), generator=g).tolist()
        else:
            out += [seg[0]] * seg[1]
    return out


def _prompts(per_sample: list[list[Segment]], seed: int) -> dict[str, torch.Tensor]:
    """Text before, between and after the visual runs; the last token is always text."""
    g = torch.Generator().manual_seed(seed)
    return left_pad([_ids(segs, g) for segs in per_sample])


def _randn(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- LLaVA family ---------------------------------------------------------------------------------
def _clip(image_size: int = 28, patch: int = 7) -> tf.CLIPVisionConfig:
    return tf.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch, projection_dim=32,
    )  # fmt: skip


def _siglip(image_size: int = 28, patch: int = 7) -> tf.SiglipVisionConfig:
    return tf.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=patch,
    )  # fmt: skip


def llava_next(attn: str = "sdpa", seed: int = 0) -> Built:
    """Any-resolution tiles + newline tokens: a 28x28 image and a 28x56 one give different counts."""
    torch.manual_seed(seed)
    config = tf.LlavaNextConfig(
        vision_config=_clip(), text_config=_llama(), image_token_id=IMAGE, vision_feature_layer=-1,
        vision_feature_select_strategy="default", image_grid_pinpoints=[[28, 28], [28, 56], [56, 28]],
    )  # fmt: skip
    model = _finish(tf.LlavaNextForConditionalGeneration(config), attn)
    image_sizes = torch.tensor([[28, 28], [28, 56]])
    # 1 base tile + 1 grid tile for 28x28, 1 base + 2 grid tiles for 28x56; pad to 3 tiles.
    pixels = _randn(2, 3, 3, 28, 28, seed=seed + 1)
    with torch.no_grad():
        feats = model.model.get_image_features(pixels, image_sizes).pooler_output
    n0, n1 = (int(f.shape[0]) for f in feats)
    inputs = _prompts([[5, (IMAGE, n0), 6], [3, (IMAGE, n1), 4]], seed)
    return model, {**inputs, "pixel_values": pixels, "image_sizes": image_sizes}


def _video_tokens(features, frames: int = 2, newline: bool = False) -> int:
    """Visual tokens of the first video, across releases: before 5.20 some families return a tuple of
    per-video tensors, and before 5.19 LLaVA-OneVision's features leave out the newline token that
    its forward appends after the frames (`newline=True`: a count divisible by `frames` lacks it)."""
    pooled = features.pooler_output
    n = int(pooled[0].shape[:-1].numel()) if isinstance(pooled, (tuple, list)) else int(pooled.shape[1])
    return n + 1 if newline and n % frames == 0 else n


def llava_next_video(attn: str = "sdpa", seed: int = 0) -> Built:
    """LLaVA-NeXT any-resolution image in sample 0; a stride-2 pooled 2-frame video + image in sample 1."""
    torch.manual_seed(seed)
    config = tf.LlavaNextVideoConfig(
        vision_config=_clip(), text_config=_llama(), image_token_id=IMAGE, video_token_id=VIDEO,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        image_grid_pinpoints=[[28, 28], [28, 56], [56, 28]], spatial_pool_stride=2,
    )  # fmt: skip
    model = _finish(tf.LlavaNextVideoForConditionalGeneration(config), attn)
    image_sizes = torch.tensor([[28, 56], [28, 28]])
    pixels = _randn(2, 3, 3, 28, 28, seed=seed + 1)
    videos = _randn(1, 2, 3, 28, 28, seed=seed + 2)
    with torch.no_grad():
        n0, n1 = (int(f.shape[0]) for f in model.model.get_image_features(pixels, image_sizes).pooler_output)
        n_vid = _video_tokens(model.model.get_video_features(videos))
    inputs = _prompts([[5, (IMAGE, n0), 6], [3, (VIDEO, n_vid), 2, (IMAGE, n1), 4]], seed)
    return model, {
        **inputs, "pixel_values": pixels, "image_sizes": image_sizes, "pixel_values_videos": videos,
    }  # fmt: skip


def video_llava(attn: str = "sdpa", seed: int = 0) -> Built:
    """Sample 0 holds an image (CLS dropped: 16 tokens), sample 1 a 2-frame video (17 per frame)."""
    torch.manual_seed(seed)
    config = tf.VideoLlavaConfig(
        vision_config=_clip(), text_config=_llama(), image_token_id=IMAGE, video_token_id=VIDEO,
        vision_feature_layer=-1, vision_feature_select_strategy="default",
    )  # fmt: skip
    model = _finish(tf.VideoLlavaForConditionalGeneration(config), attn)
    frames = 2
    inputs = _prompts([[5, (IMAGE, 16), 6], [3, (VIDEO, frames * 17), 4, (IMAGE, 16), 2]], seed)
    return model, {
        **inputs,
        "pixel_values_images": _randn(2, 3, 28, 28, seed=seed + 1),
        "pixel_values_videos": _randn(1, frames, 3, 28, 28, seed=seed + 2),
    }


def llava_onevision(attn: str = "sdpa", seed: int = 0) -> Built:
    """SigLIP any-resolution images (different sizes) in sample 0, a pooled 2-frame video in sample 1."""
    torch.manual_seed(seed)
    config = tf.LlavaOnevisionConfig(
        vision_config=_siglip(), text_config=_llama(), image_token_id=IMAGE, video_token_id=VIDEO,
        vision_feature_layer=-1, vision_feature_select_strategy="full",
        image_grid_pinpoints=[[28, 28], [28, 56], [56, 28]],
    )  # fmt: skip
    model = _finish(tf.LlavaOnevisionForConditionalGeneration(config), attn)
    image_sizes = torch.tensor([[28, 56], [28, 28]])
    pixels = _randn(2, 3, 3, 28, 28, seed=seed + 1)
    videos = _randn(1, 2, 3, 28, 28, seed=seed + 2)
    with torch.no_grad():
        feats = model.model.get_image_features(pixels, image_sizes, batch_num_images=torch.tensor([1, 1]))
        n_vid = _video_tokens(model.model.get_video_features(videos), newline=True)  # frames + 1 newline
    n0, n1 = (int(f.shape[0]) for f in feats.pooler_output)
    inputs = _prompts([[5, (IMAGE, n0), 6], [3, (IMAGE, n1), 2, (VIDEO, n_vid), 4]], seed)
    return model, {
        **inputs, "pixel_values": pixels, "image_sizes": image_sizes, "pixel_values_videos": videos,
    }  # fmt: skip


# ---- Qwen-VL family (M-RoPE) ----------------------------------------------------------------------
def _qwen_inputs(
    per_sample: list[list[Segment]], grids: list[tuple[int, int, int]], kinds: list[int], patch_dim: int, seed: int
) -> dict[str, torch.Tensor]:
    """Flattened patches + grid_thw per image/video, and `mm_token_type_ids` (0 text, 1 image, 2 video)."""
    inputs = _prompts(per_sample, seed)
    ids = inputs["input_ids"]
    inputs["mm_token_type_ids"] = (ids == IMAGE).long() + 2 * (ids == VIDEO).long()
    out: dict[str, torch.Tensor] = {}
    for kind, pix_key, grid_key in (
        (1, "pixel_values", "image_grid_thw"),
        (2, "pixel_values_videos", "video_grid_thw"),
    ):
        g = [grid for grid, k in zip(grids, kinds, strict=True) if k == kind]
        if g:
            n = sum(t * h * w for t, h, w in g)
            out[pix_key] = _randn(n, patch_dim, seed=seed + kind)
            out[grid_key] = torch.tensor(g)
    return {**inputs, **out}


def _qwen_segments(
    grids: list[tuple[int, int, int]], kinds: list[int], merge: int = 2, split_frames: bool = False
) -> list[list[Segment]]:
    """Sample 0 holds visual input 0; sample 1 holds inputs 1.. (so counts differ).

    Qwen3-VL prompts give every video frame its own run, separated by timestamp text.
    """
    runs: list[list[Segment]] = []
    for (t, h, w), k in zip(grids, kinds, strict=True):
        if k == 2 and split_frames:
            runs.append([x for _ in range(t) for x in (1, (VIDEO, h * w // merge**2))])
        else:
            runs.append([((IMAGE if k == 1 else VIDEO), t * h * w // merge**2)])
    return [[5, *runs[0], 6], [3] + [x for r in runs[1:] for x in (*r, 2)] + [4]]


def _qwen_text(**kw: Any) -> dict[str, Any]:
    # head_dim 16 -> 8 rotary frequencies split over (t, h, w)
    return _llama(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}, **kw)


def qwen2_vl(attn: str = "sdpa", seed: int = 0) -> Built:
    """One 8x8-patch image (16 tokens) vs a 4x4-patch image (4) plus a 2-frame 4x4 video (8)."""
    torch.manual_seed(seed)
    vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, patch_size=4, spatial_merge_size=2)
    config = tf.Qwen2VLConfig(
        text_config=_qwen_text(), vision_config=vision, image_token_id=IMAGE, video_token_id=VIDEO,
        vision_start_token_id=252, vision_end_token_id=253,
    )  # fmt: skip
    model = _finish(tf.Qwen2VLForConditionalGeneration(config), attn)
    grids, kinds = [(1, 8, 8), (1, 4, 4), (2, 4, 4)], [1, 1, 2]
    return model, _qwen_inputs(_qwen_segments(grids, kinds), grids, kinds, 3 * 2 * 4 * 4, seed)


def qwen2_5_vl(attn: str = "sdpa", seed: int = 0) -> Built:
    """As Qwen2-VL, with the 2.5 vision tower (window attention) and time-scaled video positions."""
    torch.manual_seed(seed)
    vision = dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
        spatial_merge_size=2, window_size=16, fullatt_block_indexes=[1],
    )  # fmt: skip
    config = tf.Qwen2_5_VLConfig(
        text_config=_qwen_text(), vision_config=vision, image_token_id=IMAGE, video_token_id=VIDEO,
        vision_start_token_id=252, vision_end_token_id=253,
    )  # fmt: skip
    model = _finish(tf.Qwen2_5_VLForConditionalGeneration(config), attn)
    grids, kinds = [(1, 8, 8), (1, 4, 4), (2, 4, 4)], [1, 1, 2]
    inputs = _qwen_inputs(_qwen_segments(grids, kinds), grids, kinds, 3 * 2 * 4 * 4, seed)
    inputs["second_per_grid_ts"] = torch.tensor([1.0])
    return model, inputs


def qwen3_vl(attn: str = "sdpa", seed: int = 0, deepstack: tuple[int, ...] = (0, 1)) -> Built:
    """Qwen3-VL: deepstack adds visual features after text layers 0..len(deepstack)-1 (so K >= 2)."""
    torch.manual_seed(seed)
    vision = dict(
        depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
        spatial_merge_size=2, num_position_embeddings=64, deepstack_visual_indexes=list(deepstack),
    )  # fmt: skip
    text = _llama(
        head_dim=16,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                         "mrope_interleaved": True},
    )  # fmt: skip
    config = tf.Qwen3VLConfig(
        text_config=text, vision_config=vision, image_token_id=IMAGE, video_token_id=VIDEO,
        vision_start_token_id=252, vision_end_token_id=253,
    )  # fmt: skip
    model = _finish(tf.Qwen3VLForConditionalGeneration(config), attn)
    grids, kinds = [(1, 8, 8), (1, 4, 4), (2, 4, 4)], [1, 1, 2]
    segments = _qwen_segments(grids, kinds, split_frames=True)
    return model, _qwen_inputs(segments, grids, kinds, 3 * 2 * 4 * 4, seed)


# ---- others ---------------------------------------------------------------------------------------
def internvl(attn: str = "sdpa", seed: int = 0) -> Built:
    """Pixel-shuffled 32 px tiles (16 tokens each): one tile vs three tiles."""
    torch.manual_seed(seed)
    vision = tf.InternVLVisionConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=[32, 32], patch_size=[4, 4],
    )  # fmt: skip
    config = tf.InternVLConfig(
        vision_config=vision, text_config=tf.Qwen2Config(**_llama()), image_token_id=IMAGE,
        image_seq_length=16, downsample_ratio=0.5,
    )  # fmt: skip
    model = _finish(tf.InternVLForConditionalGeneration(config), attn)
    inputs = _prompts([[5, (IMAGE, 16), 6], [3, (IMAGE, 48), 4]], seed)
    return model, {**inputs, "pixel_values": _randn(4, 3, 32, 32, seed=seed + 1)}


def gemma3(attn: str = "sdpa", seed: int = 0) -> Built:
    """Sliding + full layers after K, 16 pooled tokens per image with bidirectional image attention."""
    torch.manual_seed(seed)
    text = tf.Gemma3TextConfig(
        **_llama(head_dim=16, query_pre_attn_scalar=16, sliding_window=128, tie_word_embeddings=True),
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    )  # fmt: skip
    config = tf.Gemma3Config(
        text_config=text, vision_config=_siglip(image_size=32, patch=4), mm_tokens_per_image=16,
        image_token_index=IMAGE, boi_token_index=252, eoi_token_index=253,
    )  # fmt: skip
    model = _finish(tf.Gemma3ForConditionalGeneration(config), attn)
    img = [(252, 1), (IMAGE, 16), (253, 1)]
    inputs = _prompts([[5, *img, 6], [3, *img, 2, *img, 4]], seed)
    inputs["token_type_ids"] = (inputs["input_ids"] == IMAGE).long()
    return model, {**inputs, "pixel_values": _randn(3, 3, 32, 32, seed=seed + 1)}


def _idefics_like(cls: type, config_cls: type, vision_cls: type, attn: str, seed: int) -> Built:
    torch.manual_seed(seed)
    vision = vision_cls(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        image_size=32, patch_size=4)  # fmt: skip
    config = config_cls(vision_config=vision, text_config=_llama(), image_token_id=IMAGE, scale_factor=2)
    model = _finish(cls(config), attn)
    inputs = _prompts([[5, (IMAGE, 16), 6], [3, (IMAGE, 16), 2, (IMAGE, 16), 4]], seed)
    pixels = _randn(2, 2, 3, 32, 32, seed=seed + 1)
    pixels[0, 1] = 0.0  # sample 0 has one image: the all-zero slot is padding, as the processor makes it
    mask = torch.ones(2, 2, 32, 32, dtype=torch.bool)
    mask[0, 1] = False
    return model, {**inputs, "pixel_values": pixels, "pixel_attention_mask": mask}


def idefics3(attn: str = "sdpa", seed: int = 0) -> Built:
    """Pixel-shuffled 32 px images (16 tokens each): one image vs two (zero-padded image slot)."""
    return _idefics_like(tf.Idefics3ForConditionalGeneration, tf.Idefics3Config, tf.Idefics3VisionConfig, attn, seed)


def smolvlm(attn: str = "sdpa", seed: int = 0) -> Built:
    """As Idefics3, SmolVLM's own classes."""
    return _idefics_like(tf.SmolVLMForConditionalGeneration, tf.SmolVLMConfig, tf.SmolVLMVisionConfig, attn, seed)


BUILDERS: dict[str, Callable[..., Built]] = {
    "llava_next": llava_next,
    "llava_next_video": llava_next_video,
    "video_llava": video_llava,
    "llava_onevision": llava_onevision,
    "qwen2_vl": qwen2_vl,
    "qwen2_5_vl": qwen2_5_vl,
    "qwen3_vl": qwen3_vl,
    "internvl": internvl,
    "gemma3": gemma3,
    "idefics3": idefics3,
    "smolvlm": smolvlm,
}
