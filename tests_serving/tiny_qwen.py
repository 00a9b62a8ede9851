"""A tiny random-weight Qwen2.5-VL checkpoint that vLLM and transformers both load (no hub).

The tokenizer is built offline (`tokenizers` word level) with Qwen's special tokens and a Qwen-style
chat template; the image processor is Qwen2-VL's with 8-pixel patches, so a 64x96 image is a 4x6
grid of merged tokens (24 visual tokens). Weights are drawn with a wide initializer so that the
next-token distribution is peaked and depends on the image: a comparison of log-probabilities can
then tell a wrong kept set or wrong positions from float noise.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
SPECIAL += ["<|image_pad|>", "<|video_pad|>", "<unk>"]
WORDS = "user assistant system what color shape is the a of left right top bottom red green blue yellow".split()
WORDS += "circle square big small where how many one two three four yes no and image in on at".split()
PATCH = 8
MERGE = 2

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %} {{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|> {% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
)


def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL[1:7],
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build(out: Path, seed: int = 0) -> Path:
    """Save the checkpoint (config, weights, tokenizer, processor, chat template) to `out`."""
    tok = tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL}
    text = dict(
        vocab_size=len(SPECIAL) + len(WORDS), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-6,
        initializer_range=0.3, tie_word_embeddings=False, pad_token_id=ids["<|endoftext|>"],
        bos_token_id=None, eos_token_id=ids["<|im_end|>"],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]},
    )  # fmt: skip
    vision = dict(
        depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128, patch_size=PATCH,
        spatial_merge_size=MERGE, temporal_patch_size=2, window_size=2 * PATCH * MERGE, fullatt_block_indexes=[1],
        tokens_per_second=2, initializer_range=0.3,
    )  # fmt: skip
    config = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).float().eval()
    model.generation_config.eos_token_id = None  # always the full number of new tokens
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    images = Qwen2VLImageProcessor(
        patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2,
        size={"shortest_edge": 4 * (PATCH * MERGE) ** 2, "longest_edge": 64 * (PATCH * MERGE) ** 2},
    )  # fmt: skip
    videos = Qwen2VLVideoProcessor(
        patch_size=PATCH, merge_size=MERGE, temporal_patch_size=2,
        size={"shortest_edge": 4 * (PATCH * MERGE) ** 2, "longest_edge": 16 * (PATCH * MERGE) ** 2},
    )  # fmt: skip
    processor = Qwen2_5_VLProcessor(images, tok, videos, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    return out


if __name__ == "__main__":
    import sys

    print(build(Path(sys.argv[1])))
