"""A tiny random-weight LLaVA-1.5 built from configs, and prompts for it (no downloads)."""

from __future__ import annotations

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from fastv.core.hf import compat

IMAGE_TOKEN = 250
PAD = 0
VOCAB = 256
GRID = 4  # 28 px / patch 7 -> 4x4 = 16 visual tokens per image


def tiny_llava(
    attn: str = "sdpa",
    layers: int = 4,
    seed: int = 0,
    dtype=torch.float32,
    image_size: int = 28,
    vision_layers: int = 2,
    feature_layer: int = -1,
) -> LlavaForConditionalGeneration:
    """Patch 7: image_size 28 -> 16 visual tokens; the vision-side methods' tests use larger towers."""
    torch.manual_seed(seed)
    text = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=PAD,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=7,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=IMAGE_TOKEN,
        vision_feature_layer=feature_layer,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    config._attn_implementation = attn
    model = LlavaForConditionalGeneration(config).to(dtype).eval()
    model.set_attn_implementation(attn)
    model.generation_config.pad_token_id = PAD
    return model


def prompt(pre: int, post: int, images: int = 1, seed: int = 0, between: int = 3) -> list[int]:
    """Text ids, then `images` runs of image tokens separated by text, then more text."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, IMAGE_TOKEN, (pre,), generator=g).tolist()
    for j in range(images):
        if j:
            ids += torch.randint(1, IMAGE_TOKEN, (between,), generator=g).tolist()
        ids += [IMAGE_TOKEN] * (GRID * GRID)
    ids += torch.randint(1, IMAGE_TOKEN, (post,), generator=g).tolist()
    return ids


def left_pad(prompts: list[list[int]]) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask of prompts padded on the left (FastV reads the last column)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    return {"input_ids": ids, "attention_mask": mask}


def batch(prompts: list[list[int]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded batch with pixel values for every image in every prompt."""
    padded = left_pad(prompts)
    ids, mask = padded["input_ids"], padded["attention_mask"]
    n_images = int((ids == IMAGE_TOKEN).sum()) // (GRID * GRID)
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n_images, 3, 28, 28, generator=g)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}


def run_method(model, method, inputs, new: int = 5, **kw):
    """Under `method`: the prefill's last-token logits, greedy tokens, per-layer cache lengths, stats.

    Image-token ids are suppressed, so a random model never "generates" a visual token.
    """
    with method.apply(model) as handle:
        logits = model(**inputs).logits[:, -1]
        out = model.generate(
            **inputs,
            max_new_tokens=new,
            do_sample=False,
            return_dict_in_generate=True,
            suppress_tokens=[IMAGE_TOKEN],
            **kw,
        )
    cache = compat.output_cache(out)
    lens = [layer.get_seq_length() for layer in cache.layers] if cache is not None else None
    return logits, out.sequences, lens, handle.stats


def input_embeds(model, inputs) -> torch.Tensor:
    """The unpruned input embeddings (text embeddings + projected image features), seen by a layer-0
    pre-hook of a plain forward."""
    seen = {}

    def hook(module, args, kwargs):
        seen.setdefault("h", compat.hidden_states(args, kwargs).clone())

    handle = model.model.language_model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(**inputs)
    finally:
        handle.remove()
    return seen["h"]
