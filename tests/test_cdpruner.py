"""CDPruner against a transcription of the official kernel and the DPP greedy MAP by determinants."""

from __future__ import annotations

import pytest
import torch
from tiny_families import BUILDERS
from tiny_llava import GRID, IMAGE_TOKEN, batch, prompt, run_method, tiny_llava

from fastv import FastVError
from fastv.methods import make
from fastv.methods.accounting import visual_tokens_per_layer
from fastv.methods.cdpruner import greedy_map

N = GRID * GRID
PROMPTS = [prompt(5, 7, images=2, seed=1), prompt(3, 4, images=1, seed=2)]


def greedy_by_determinants(kernel: torch.Tensor, k: int) -> list[int]:
    """The DPP greedy MAP by its definition: add the item that maximizes det(L_Y) (float64)."""
    kernel = kernel.double()
    chosen: list[int] = []
    for _ in range(k):
        best = max(
            (j for j in range(kernel.shape[0]) if j not in chosen),
            key=lambda j: torch.linalg.det(kernel[chosen + [j]][:, chosen + [j]]).item(),
        )
        chosen.append(best)
    return chosen


def official_kernel(image_features: torch.Tensor, text_embeds: torch.Tensor, negate: bool) -> torch.Tensor:
    """Theia-4869/CDPruner `encode_images` (batch 1), with our text embeddings in place of CLIP's."""
    image_normalized = image_features / image_features.norm(dim=-1, keepdim=True)
    similarity = image_normalized.float() @ image_normalized.float().T
    text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    relevance = image_normalized @ text_embeds.T
    relevance = (-relevance if negate else relevance).mean(dim=-1)
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
    return relevance[:, None] * similarity * relevance[None, :]


def test_greedy_map_is_the_determinant_greedy():
    g = torch.Generator().manual_seed(0)
    for n, rank, k in [(8, 8, 5), (12, 6, 6), (20, 16, 10)]:
        x = torch.randn(n, rank, generator=g)
        r = torch.rand(n, generator=g) + 0.1
        kernel = r[:, None] * (x @ x.T) * r[None, :]
        assert greedy_map(kernel, k).tolist() == greedy_by_determinants(kernel, k)


@pytest.mark.parametrize("negate", [False, True])
@pytest.mark.parametrize("keep", [4, 7])
def test_cdpruner_matches_official_rule(negate, keep):
    model = tiny_llava(layers=4)
    ids = prompt(6, 5, images=1, seed=4)
    inputs = batch([ids])
    seen = {}

    def capture(module, args, kwargs):
        seen["h"] = (args[0] if args else kwargs["hidden_states"]).detach()

    hook = model.model.language_model.layers[0].register_forward_pre_hook(capture, with_kwargs=True)
    with torch.no_grad():
        model(**inputs)
    hook.remove()
    start = ids.index(IMAGE_TOKEN)
    visual = seen["h"][0, start : start + N]
    text = model.get_input_embeddings()(torch.tensor(ids[start + N :])).detach()
    kernel = official_kernel(visual, text, negate)
    expected = sorted(start + j for j in greedy_by_determinants(kernel, keep))
    with make("cdpruner", keep=keep, negate_relevance=negate).apply(model) as handle:
        model(**inputs)
    assert handle.stats.kept_positions[0].tolist() == expected


@pytest.mark.parametrize("budget", [dict(keep=6), dict(ratio=0.75)])
def test_cdpruner_budget_and_accounting(budget):
    model = tiny_llava(layers=4)
    method = make("cdpruner", **budget)
    with method.apply(model) as handle:
        model(**batch(PROMPTS))
    per_image = budget.get("keep", 4)
    assert handle.stats.num_kept == [2 * per_image, per_image]
    with method.apply(model) as handle:
        model(**batch([PROMPTS[0]]))
    text = len(PROMPTS[0]) - 2 * N
    assert handle.stats.layer_seq_lens == [text + 2 * v for v in visual_tokens_per_layer(method, 4, N)]
    assert visual_tokens_per_layer(method, 4, N) == [per_image] * 4


@pytest.mark.parametrize("family", ["llava", "qwen2_vl", "gemma3"])
def test_cdpruner_drop_equals_mask(family):
    model, inputs = (tiny_llava(layers=4), batch(PROMPTS)) if family == "llava" else BUILDERS[family]("sdpa")
    ld, sd, _, stats = run_method(model, make("cdpruner", ratio=0.5), inputs)
    lm, sm, _, stats_m = run_method(model, make("cdpruner", ratio=0.5, mode="mask"), inputs)
    assert [p.tolist() for p in stats.kept_positions] == [p.tolist() for p in stats_m.kept_positions]
    assert (ld - lm).abs().max() < 1e-4 and torch.equal(sd, sm)


def test_cdpruner_refusals():
    model = tiny_llava(layers=4)
    with pytest.raises(FastVError, match="cannot keep 17"):
        with make("cdpruner", keep=17).apply(model):
            model(**batch([PROMPTS[1]]))
    with pytest.raises(FastVError, match="has no setting k"):
        make("cdpruner", keep=4, k=2)
    qwen3, _ = BUILDERS["qwen3_vl"]("sdpa")
    with pytest.raises(FastVError, match="deepstack"):
        make("cdpruner", keep=4).apply(qwen3)
