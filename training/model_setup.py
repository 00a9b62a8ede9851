"""Build the default models' tokenizers, processors and (untrained) LLaVA models from scratch.

The tokenizers are word-level over `fastv.zoo.datasets.shapes.WORDS`: every cell, colour and shape name is
one token, which lets a small language model look a cell up in one attention step.

Two recipes share these builders. The first default model (``recipe="v1"``) reads terse prompts with
no template (``<s><image> color b3``). The second (``recipe="v2"``) is prompted the way LLaVA-1.5 is:
LLaVA-1.5's system prompt, then ``USER: <image>\\n<instruction> ASSISTANT:``, with a deeper Llama, so
that the last prompt token has a system prompt to attend to besides the image (the paper's setting).
"""

from __future__ import annotations

from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from fastv.zoo.datasets import shapes
from fastv.zoo.word_tokenizer import word_level_tokenizer

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
NUM_IMAGE_TOKENS = (shapes.IMAGE_SIZE // shapes.PATCH_SIZE) ** 2

# User text is the question; the assistant's answer follows it directly and ends with </s>. The
# generation prompt adds nothing, so the answer is predicted right after the question's key word.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% for part in parts %}"
    "{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %} {{ part['text'] | trim }}{% endif %}"
    "{% endfor %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


# LLaVA-1.5's conversation format ("vicuna_v1"): its system prompt, then USER/ASSISTANT turns, each
# answer closed by </s>. A "system" message replaces the default system prompt.
SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAVA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '" + SYSTEM_PROMPT.replace("'", "\\'") + "' %}{% set turns = messages %}{% endif %}"
    "{{ system }}"
    "{% for message in turns %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'assistant' %} ASSISTANT:"
    "{% for part in parts %}{% if part['type'] == 'text' %} {{ part['text'] | trim }}{% endif %}{% endfor %}"
    "{{ eos_token }}"
    "{% else %} USER:"
    "{% for part in parts %}{% if part['type'] == 'image' %} <image>\n{% endif %}{% endfor %}"
    "{% for part in parts %}{% if part['type'] == 'text' %} {{ part['text'] | trim }}{% endif %}{% endfor %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)
RECIPES = ("v1", "v2")


def build_tokenizer(recipe: str = "v1") -> PreTrainedTokenizerFast:
    if recipe == "v1":
        vocab = {w: i for i, w in enumerate((*SPECIALS, *shapes.WORDS))}
        return word_level_tokenizer(vocab, CHAT_TEMPLATE)
    words = dict.fromkeys((*SPECIALS, *shapes.words_of(SYSTEM_PROMPT + " USER: ASSISTANT:"), *shapes.WORDS))
    return word_level_tokenizer({w: i for i, w in enumerate(words)}, LLAVA_CHAT_TEMPLATE, split_punctuation=True)


def build_processor(recipe: str = "v1") -> LlavaProcessor:
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": shapes.IMAGE_SIZE},
        crop_size={"height": shapes.IMAGE_SIZE, "width": shapes.IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(recipe),
        patch_size=shapes.PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLIP tower's class token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE if recipe == "v1" else LLAVA_CHAT_TEMPLATE,
    )


def build_model(
    tokenizer: PreTrainedTokenizerFast,
    text_layers: int = 6,
    text_hidden: int = 256,
    text_intermediate: int = 768,
    max_positions: int = 512,
) -> LlavaForConditionalGeneration:
    """The LLaVA: a 3-layer CLIP tower (128 wide) and a Llama of `text_layers` x `text_hidden`."""
    vision = CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=shapes.IMAGE_SIZE,
        patch_size=shapes.PATCH_SIZE,
        num_channels=3,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=text_intermediate,
        num_hidden_layers=text_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=NUM_IMAGE_TOKENS,
        tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def build_model_v2(
    tokenizer: PreTrainedTokenizerFast, text_layers: int = 10, text_hidden: int = 256, text_intermediate: int = 768
) -> LlavaForConditionalGeneration:
    """Recipe v2's LLaVA: a deeper Llama, and room for a system prompt and several long turns per image."""
    return build_model(tokenizer, text_layers, text_hidden, text_intermediate, max_positions=1024)
