"""Build the default model's tokenizer, processor and (untrained) LLaVA model from scratch.

The tokenizer is word-level over `fastv.zoo.datasets.shapes.WORDS`: every cell, colour and shape name is
one token, which lets a small language model look a cell up in one attention step.
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


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate((*SPECIALS, *shapes.WORDS))}
    return word_level_tokenizer(vocab, CHAT_TEMPLATE)


def build_processor() -> LlavaProcessor:
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": shapes.IMAGE_SIZE},
        crop_size={"height": shapes.IMAGE_SIZE, "width": shapes.IMAGE_SIZE},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=shapes.PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLIP tower's class token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer: PreTrainedTokenizerFast) -> LlavaForConditionalGeneration:
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
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
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
