"""Original M-RoPE positions of a Qwen2.5-VL prompt whose images keep only some of their tokens.

fastv keeps every kept token at its original position: in Qwen2.5-VL a visual token's position is
three numbers (t, h, w), its cell in the image's merged grid offset by the position where the image
starts; text after an image resumes one past the largest position of the whole image (as transformers'
`get_rope_index` numbers the full prompt), whatever was dropped. A server holds only the kept tokens,
so it needs these numbers for the shorter prompt: `prompt_positions`. Nothing here imports vLLM.

Images only (t = 1): Qwen2.5-VL turns an image into one temporal patch.
"""

from __future__ import annotations

import torch


def grid_positions(rows: int, cols: int) -> torch.Tensor:
    """(3, rows*cols) positions (t, h, w) of an image's merged tokens in raster order, from 0."""
    h = torch.arange(rows).repeat_interleave(cols)
    w = torch.arange(cols).repeat(rows)
    return torch.stack([torch.zeros_like(h), h, w])


def span(rows: int, cols: int) -> int:
    """Positions one image takes: the text after it resumes this far past its start."""
    return max(1, rows, cols)


def prompt_positions(length: int, images: list[tuple[int, torch.Tensor, tuple[int, int]]]) -> tuple[torch.Tensor, int]:
    """(3, length) positions of a prompt with pruned images, and vLLM's delta (max position + 1 - length).

    images: in prompt order, (offset of its first placeholder, kept indices into its raster order
    (sorted; one placeholder each), (rows, cols) of its full merged grid).
    """
    out = torch.empty(3, length, dtype=torch.long)
    text_at, next_pos = 0, 0  # where the current text run starts, and its first position
    for offset, kept, (rows, cols) in images:
        n = offset - text_at
        out[:, text_at:offset] = torch.arange(next_pos, next_pos + n)
        start = next_pos + n
        out[:, offset : offset + kept.numel()] = grid_positions(rows, cols)[:, kept.cpu()] + start
        text_at, next_pos = offset + kept.numel(), start + span(rows, cols)
    out[:, text_at:] = torch.arange(next_pos, next_pos + length - text_at)
    delta = int(out.max()) + 1 - length if length else 0
    return out, delta
