"""`fastv.serving.pruning` keeps exactly what the engine keeps: same tokens, same (merged) features.

A server runs a pre-LM method on one image's projected features (no decoder hooks); the engine runs
it on the hidden states entering layer 0. For every pre-LM method, both must keep the same positions
and feed the language model the same rows. The vLLM side of serving is tested against a real server
in tests_serving/ (its own environment: `make test-serving`).
"""

from __future__ import annotations

import pytest
import torch
from tiny_llava import GRID, IMAGE_TOKEN, batch, prompt, tiny_llava

from fastv import FastVError, make
from fastv.core.hf import attention_tap
from fastv.core.hf.attention_tap import query_attention
from fastv.serving.pruning import (
    INSTRUCTION_CONDITIONED,
    PRE_LM_METHODS,
    ImagePruner,
    adapter_for,
    check_budget,
    kept_per_image,
    pre_lm_method,
)
from fastv.serving.settings import instruction_ids
from fastv.serving.tower_attention import TowerView, tower_extra

N = GRID * GRID
SETTINGS = {
    "random": dict(keep=5, seed=3),
    "uniform": dict(keep=8),
    "pool": dict(keep=4),
    "visionzip": dict(keep=6),
    "divprune": dict(keep=5),
    "holov": dict(keep=6, regions=4),
    "cdpruner": dict(keep=5),
}


@pytest.fixture(scope="module")
def model():
    return tiny_llava(layers=3)


@pytest.fixture(scope="module")
def inputs():
    return batch([prompt(4, 6, images=1, seed=5)])


def _layer0(model, inputs, method=None):
    """(engine stats or None, hidden rows entering decoder layer 0, the image's `TowerView`).

    The view is what a server observes of the vision tower ([CLS] attention and keys at the projected
    layer, the projector's input and output), taken here from the transformers tower on the same pass.
    """
    seen: dict = {}

    def hook(module, args, kwargs):
        seen.setdefault("h", (args[0] if args else kwargs["hidden_states"]).clone())

    def on_attention(module, query, key, mask, kwargs):
        seen["cls"] = query_attention(module, query, key, mask, kwargs, rows=0).mean(1)[0, 0]
        seen["keys"] = key.float().mean(1)[0]

    def on_projector(module, args, output):
        seen["features"], seen["projected"] = args[0][0], output[0]

    layer0 = model.model.language_model.layers[0]
    if method is None:
        handle = layer0.register_forward_pre_hook(hook, with_kwargs=True)
        model(**inputs)
        handle.remove()
        return None, seen["h"][0], None
    tower = model.model.vision_tower.encoder.layers[-1].self_attn  # the projected layer (feature layer -1)
    with method.apply(model) as pruned:
        undo = attention_tap.install(model, "vision_config", [tower], on_attention)
        hooks = [
            layer0.register_forward_pre_hook(hook, with_kwargs=True),  # after the engine's: sees pruned rows
            model.model.multi_modal_projector.register_forward_hook(on_projector),
        ]
        try:
            model(**inputs)
        finally:
            undo()
            for h in hooks:
                h.remove()
    view = TowerView(seen["cls"], seen["keys"], seen["features"], seen["projected"], model.model.multi_modal_projector)
    return pruned.stats, seen["h"][0], view


@pytest.mark.parametrize("name", PRE_LM_METHODS)
def test_image_pruner_equals_engine(model, inputs, name):
    ids = inputs["input_ids"][0]
    image = (ids == IMAGE_TOKEN).nonzero().squeeze(1)
    _, full, _ = _layer0(model, inputs)
    method = pre_lm_method({"method": name, **SETTINGS[name]})  # as a server builds it: original positions
    stats, pruned, view = _layer0(model, inputs, method)
    extra = tower_extra(method, view)  # what a server's model class hands the method (None: it reads nothing)
    assert (extra is not None) == (name in ("visionzip", "holov"))
    text = None
    if name in INSTRUCTION_CONDITIONED:  # the prompt's text after its image, embedded by the model's own table
        text = model.get_input_embeddings()(torch.tensor(instruction_ids(ids.tolist(), {IMAGE_TOKEN})))

    index, features = ImagePruner(method, adapter_for(model)).prune(full[image], extra, text)

    assert image[index].tolist() == stats.kept_positions[0].tolist()
    assert len(index) == kept_per_image(method, N)
    rows = torch.searchsorted(stats.kept_sequence_index[0], image[index])
    torch.testing.assert_close(features, pruned[rows], rtol=0, atol=0)


def test_cdpruner_reads_the_instruction(model, inputs):
    """Negative control: another instruction (or none) keeps other tokens, so the test above sees the text."""
    ids = inputs["input_ids"][0]
    image = (ids == IMAGE_TOKEN).nonzero().squeeze(1)
    _, full, _ = _layer0(model, inputs)
    pruner = ImagePruner(pre_lm_method({"method": "cdpruner", "keep": 5}), adapter_for(model))
    kept = {
        str(text): pruner.prune(full[image], None, None if text is None else model.get_input_embeddings()(text))[0]
        for text in (None, ids[image[-1] + 1 :], torch.tensor([7, 99, 180]), torch.tensor([31, 64]))
    }
    assert len({tuple(k.tolist()) for k in kept.values()}) > 1


def test_instruction_ids_are_the_text_after_the_last_image():
    one, expanded = [1, 2, IMAGE_TOKEN, 3, IMAGE_TOKEN, 4, 5], [1, IMAGE_TOKEN, IMAGE_TOKEN, 4, 5]
    assert instruction_ids(one, {IMAGE_TOKEN}) == [4, 5]
    assert instruction_ids(expanded, {IMAGE_TOKEN}) == [4, 5]
    assert instruction_ids([1, 2, IMAGE_TOKEN], {IMAGE_TOKEN}) == []
    assert instruction_ids([1, 2], {IMAGE_TOKEN}) == []


def test_merging_methods_change_features(model, inputs):
    """Negative control: pool's rows differ from the plain kept rows (the test above can see merges)."""
    image = (inputs["input_ids"][0] == IMAGE_TOKEN).nonzero().squeeze(1)
    _, full, _ = _layer0(model, inputs)
    index, features = ImagePruner(make("pool", keep=4), adapter_for(model)).prune(full[image])
    assert not torch.allclose(features, full[image][index])


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"method": "fastv", "keep": 8}, "inside the language model"),
        ({"method": "pdrop", "keep": 8}, "inside the language model"),
        ({"method": "random", "keep": 8, "k": 2}, "k=0 only"),
        ({"method": "nope"}, "unknown method"),
        ({"keep": 8}, 'need a "method"'),
        ({"method": "pool", "keep": 8, "size": 3}, "no setting size"),
    ],
)
def test_refuses_what_a_server_cannot_run(settings, problem):
    with pytest.raises(FastVError, match=problem):
        pre_lm_method(settings)


def test_refuses_budgets_larger_than_an_image(model):
    with pytest.raises(FastVError, match="cannot keep 20"):
        kept_per_image(pre_lm_method({"method": "divprune", "keep": 20}), N)
    with pytest.raises(FastVError, match="does not cut once before"):
        ImagePruner(make("fastv", keep=8), adapter_for(model))


def test_ratio_budgets_round_like_the_engine():
    assert kept_per_image(pre_lm_method({"method": "random", "ratio": 2 / 3}), 144) == 48
    assert kept_per_image(pre_lm_method({"method": "divprune", "ratio": 0.75}), 576) == 144


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"method": "pool", "keep": 7}, "rows x cols"),  # 7 has no factor pair within the 4x4 grid
        ({"method": "uniform", "keep": 5}, "rows x cols"),
        ({"method": "visionzip", "keep": 4, "contextual": 6}, "contextual"),
        ({"method": "divprune", "keep": 17}, "cannot keep 17"),
        ({"method": "holov", "keep": 17}, "cannot keep 17"),
        ({"method": "holov", "keep": 4, "regions": 0}, "regions=0 must be >= 1"),
    ],
)
def test_check_budget_refuses_from_the_config_alone(model, settings, problem):
    """What a server's API process checks before a request reaches the engine (it has no model)."""
    with pytest.raises(FastVError, match=problem):
        check_budget(pre_lm_method(settings), model.config, N)


def test_check_budget_returns_the_placeholder_count(model):
    assert check_budget(pre_lm_method({"method": "pool", "keep": 4}), model.config, N) == 4
    assert check_budget(pre_lm_method({"method": "visionzip", "ratio": 0.5}), model.config, N) == 8
    assert check_budget(pre_lm_method({"method": "holov", "keep": 6}), model.config, N) == 6


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"method": "pool", "keep": 4}, "needs the visual tokens' grid"),
        ({"method": "uniform", "keep": 4}, "needs the visual tokens' grid"),
        ({"method": "visionzip", "keep": 4}, "supports LLaVA-1.5"),
        ({"method": "holov", "keep": 4}, "supports LLaVA-1.5"),
    ],
)
def test_check_budget_refuses_methods_qwen2_5_vl_cannot_run(settings, problem):
    """Qwen2.5-VL images differ in size (n unknown up front): what cannot apply is still refused up front."""
    from tiny_families import qwen2_5_vl

    config = qwen2_5_vl()[0].config
    with pytest.raises(FastVError, match=problem):
        check_budget(pre_lm_method(settings), config, None)
    assert check_budget(pre_lm_method({"method": "divprune", "keep": 4}), config, None) is None
    assert check_budget(pre_lm_method({"method": "random", "ratio": 0.5}), config, None) is None
