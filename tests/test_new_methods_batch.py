"""The new methods choose per sample: a padded batch keeps what each sample alone keeps, with the same logits.

Position ids count from each sample's first real token (as `generate` does): DART ranks by the L1
norm of post-RoPE keys, which, unlike attention, depends on absolute positions.
"""

from __future__ import annotations

import pytest
import torch
from tiny_llava import IMAGE_TOKEN, batch, prompt, tiny_llava

from fastv.methods import make

PROMPTS = [prompt(5, 7, images=2, seed=1), prompt(3, 4, images=1, seed=2)]
SETTINGS = {
    "dart": dict(keep=6),
    "cdpruner": dict(keep=6),
    "holov": dict(keep=6, regions=4),
    "sparsevlm": dict(layers=(1, 3), schedule=(288, 144)),
}


def _positions(inputs: dict) -> dict:
    inputs["position_ids"] = (inputs["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return inputs


@pytest.mark.parametrize("name", list(SETTINGS))
def test_padded_batch_equals_batch_of_one(name):
    model, inputs = tiny_llava(layers=4), _positions(batch(PROMPTS))
    with make(name, **SETTINGS[name]).apply(model) as handle:
        logits = model(**inputs).logits[:, -1]
        both = handle.stats.kept_positions
        width = inputs["input_ids"].shape[1]
        first = 0
        for b, p in enumerate(PROMPTS):
            images = p.count(IMAGE_TOKEN) // 16
            single = _positions(batch([p]))
            single["pixel_values"] = inputs["pixel_values"][first : first + images]
            first += images
            one = model(**single).logits[:, -1]
            assert torch.allclose(one[0], logits[b], atol=1e-4)
            assert (handle.stats.kept_positions[0] + width - len(p)).tolist() == both[b].tolist()
