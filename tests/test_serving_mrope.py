"""A served Qwen2.5-VL prompt with pruned images gets the full prompt's M-RoPE positions of what it kept.

The reference is transformers' own `get_rope_index` on the full prompt (the positions fastv keeps in
transformers): `fastv.serving.mrope.prompt_positions`, which vLLM's pruned Qwen2.5-VL class returns for
the shorter prompt, must equal them at the kept tokens, and the decode positions must continue where
the full prompt's would.
"""

from __future__ import annotations

import pytest
import torch
from tiny_families import IMAGE, qwen2_5_vl

from fastv.serving.mrope import prompt_positions

MERGE = 2
# patch grids (t, h, w): merged 6x4 (taller than wide: the text after it resumes at 6, not at the width),
# 2x5 (wider than tall), 3x3
GRIDS = [(1, 12, 8), (1, 4, 10), (1, 6, 6)]
TEXT = [5, 3, 1, 4]  # text runs before, between and after the images


@pytest.fixture(scope="module")
def model():
    return qwen2_5_vl()[0]


def _full_prompt() -> tuple[torch.Tensor, list[int]]:
    g = torch.Generator().manual_seed(0)
    ids: list[int] = []
    offsets = []
    for i, text in enumerate(TEXT):
        ids += torch.randint(1, 240, (text,), generator=g).tolist()
        if i < len(GRIDS):
            offsets.append(len(ids))
            t, h, w = GRIDS[i]
            ids += [IMAGE] * (t * h * w // MERGE**2)
    return torch.tensor(ids), offsets


@pytest.mark.parametrize("keep", [[7, 4, 0], [24, 10, 9], [1, 1, 1]])
def test_kept_tokens_keep_the_full_prompts_positions(model, keep):
    ids, offsets = _full_prompt()
    full, _ = model.model.get_rope_index(ids[None], (ids == IMAGE).int()[None], torch.tensor(GRIDS))
    full = full[:, 0]  # (3, L)
    g = torch.Generator().manual_seed(sum(keep))
    mask = torch.ones(len(ids), dtype=torch.bool)
    images = []
    for offset, (_, h, w), k in zip(offsets, GRIDS, keep, strict=True):
        rows, cols = h // MERGE, w // MERGE
        kept = torch.randperm(rows * cols, generator=g)[:k].sort().values
        dropped = torch.ones(rows * cols, dtype=torch.bool)
        dropped[kept] = False
        mask[offset : offset + rows * cols] = ~dropped
        short_offset = int(mask[:offset].sum())
        images.append((short_offset, kept, (rows, cols)))

    positions, delta = prompt_positions(int(mask.sum()), images)

    assert torch.equal(positions, full[:, mask])
    assert int(mask.sum()) + delta == int(full.max()) + 1  # the first generated token's position


def test_renumbered_or_width_based_positions_would_differ(model):
    """Negative controls: vLLM's plain numbering of the shorter prompt, and resuming the text after an
    image at its grid width (what vLLM's video pruning, EVS, writes), both give other positions."""
    ids, offsets = _full_prompt()
    full, _ = model.model.get_rope_index(ids[None], (ids == IMAGE).int()[None], torch.tensor(GRIDS))
    full = full[:, 0]
    images = [(o, torch.arange((h // MERGE) * (w // MERGE)), (h // MERGE, w // MERGE)) for o, (_, h, w) in
              zip(offsets, GRIDS, strict=True)]  # fmt: skip
    positions, _ = prompt_positions(len(ids), images)
    assert torch.equal(positions, full)  # nothing dropped: exactly transformers' positions
    after_first = offsets[0] + 6 * 4
    assert int(full[0, after_first]) - int(full[0, offsets[0]]) == 6  # max(rows, cols), not cols = 4
    pruned = torch.ones(len(ids), dtype=torch.bool)
    pruned[offsets[0] + 1 : offsets[0] + 24] = False
    renumbered = torch.arange(int(pruned.sum()))
    assert not torch.equal(renumbered.expand(3, -1), full[:, pruned])
