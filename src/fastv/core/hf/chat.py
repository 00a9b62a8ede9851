"""A prompt with its image/video placeholders, the way the model's processor wants it."""

from __future__ import annotations

from typing import Any


def chat_text(processor: Any, prompt: str, n_images: int, video: bool) -> str:
    """The prompt with image/video placeholders, through the processor's chat template when it has one."""
    content = [{"type": "image"} for _ in range(n_images)]
    if video:
        content.append({"type": "video"})
    content.append({"type": "text", "text": prompt})
    if getattr(processor, "chat_template", None):
        messages = [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, add_generation_prompt=True)
    marks = [getattr(processor, "image_token", "<image>")] * n_images
    if video:
        marks.append(getattr(processor, "video_token", "<video>"))
    return " ".join([*marks, prompt])
