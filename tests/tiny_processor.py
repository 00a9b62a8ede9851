"""An offline LlavaProcessor that matches `tiny_llava` (image token 250, 28 px images, 4x4 grid).

The tokenizer is word-level, trained on nothing: a fixed vocabulary of placeholder words, so any
prompt made of known words (or `<unk>`) tokenizes without a download. `save_tiny_llava` writes a
model + processor folder that `AutoModelForImageTextToText` / `AutoProcessor` load like a hub model.
"""

from __future__ import annotations

from pathlib import Path

from tiny_llava import GRID, IMAGE_TOKEN, PAD, VOCAB, tiny_llava
from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

from fastv.zoo.word_tokenizer import word_level_tokenizer

SPECIALS = {"<pad>": PAD, "<s>": 1, "</s>": 2, "<unk>": 3, "<image>": IMAGE_TOKEN}
WORDS = (
    "system: user: assistant: you are a helpful vision assistant . what is in the image ? describe "
    "colour shape red green blue yellow circle square triangle left right top bottom centre how many"
).split()
IMAGE_SIZE = GRID * 7  # patch 7 in tiny_llava's vision tower

CHAT_TEMPLATE = (
    "{{ bos_token }}system: you are a helpful vision assistant ."
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    " {{ message['role'] }}:"
    "{% for part in parts %}"
    "{% if part['type'] == 'image' %} <image>"
    "{% elif part['type'] == 'text' %} {{ part['text'] | trim }}{% endif %}"
    "{% endfor %}"
    "{% endfor %}"
    "{% if add_generation_prompt %} assistant:{% endif %}"
)


def _vocab() -> dict[str, int]:
    vocab = dict(SPECIALS)
    free = (i for i in range(VOCAB) if i not in vocab.values())
    for word in WORDS:
        vocab[word] = next(free)
    for i in free:  # fill the rest so every id decodes to something
        vocab[f"w{i}"] = i
    return vocab


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return word_level_tokenizer(_vocab(), CHAT_TEMPLATE)


def tiny_processor() -> LlavaProcessor:
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(),
        patch_size=7,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )


def save_tiny_llava(path: str | Path, layers: int = 4, seed: int = 0) -> Path:
    """Save a tiny random LLaVA and its processor to `path` (a hub-style folder)."""
    path = Path(path)
    model = tiny_llava(layers=layers, seed=seed)
    processor = tiny_processor()
    model.generation_config.eos_token_id = SPECIALS["</s>"]
    model.generation_config.bos_token_id = SPECIALS["<s>"]
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
