"""`fastv analyze`: attention shares per token group, visual-token layouts, plots, loading and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tiny_families
import torch
from PIL import Image
from tiny_llava import GRID, IMAGE_TOKEN, batch, prompt, tiny_llava

from fastv import FastV
from fastv.analysis.attention import analyze, analyze_batch
from fastv.analysis.layout import GROUPS, token_groups, visual_layout
from fastv.analysis.result import aggregate
from fastv.core.errors import FastVError

N = GRID * GRID
G = {g: i for i, g in enumerate(GROUPS)}


@pytest.fixture(scope="module")
def llava():
    return tiny_llava(layers=4)


@pytest.fixture(scope="module")
def padded():
    """Sample 0: two images with text between; sample 1: one image, shorter, so left-padded."""
    return batch([prompt(5, 7, images=2, between=3), prompt(3, 4, images=1, seed=1)])


def test_groups_with_padding_and_several_images(padded):
    labels = token_groups(padded["input_ids"], [IMAGE_TOKEN], padded["attention_mask"])
    width = padded["input_ids"].shape[1]
    expect0 = [G["system"]] * 5 + [G["visual"]] * N + [G["interleaved"]] * 3 + [G["visual"]] * N
    expect0 += [G["instruction"]] * 7
    assert labels[0].tolist() == expect0
    pad = width - (3 + N + 4)
    expect1 = [-1] * pad + [G["system"]] * 3 + [G["visual"]] * N + [G["instruction"]] * 4
    assert labels[1].tolist() == expect1
    # columns >= prompt_len are output
    out = token_groups(padded["input_ids"], [IMAGE_TOKEN], padded["attention_mask"], prompt_len=width - 2)
    assert out[0, -2:].tolist() == [G["output"]] * 2


@pytest.mark.parametrize("query, new", [("last", 0), ("instruction", 0), ("output", 3), ("last", 3)])
def test_shares_sum_to_one_per_layer(llava, padded, query, new):
    results = analyze_batch(llava, padded, query=query, max_new_tokens=new)
    for r in results:
        assert torch.allclose(r.share.sum(1), torch.ones(len(r.layers)), atol=1e-5)
        assert r.counts["output"] == new
        assert r.share.shape == (4, len(GROUPS))
    assert results[1].counts == {"system": 3, "visual": N, "interleaved": 0, "instruction": 4, "output": new}
    assert results[0].counts["visual"] == 2 * N and results[0].counts["interleaved"] == 3


def test_shares_match_eager_attention(padded):
    """Same numbers as eager `output_attentions` (last row, mean over heads, summed per group)."""
    sdpa, eager = tiny_llava(attn="sdpa"), tiny_llava(attn="eager")
    results = analyze_batch(sdpa, padded, layers=[0, 2, -1])
    with torch.no_grad():
        attn = eager(**padded, output_attentions=True).attentions
    labels = token_groups(padded["input_ids"], [IMAGE_TOKEN], padded["attention_mask"])
    for b, r in enumerate(results):
        assert r.layers == [0, 2, 3]
        for row, layer in enumerate(r.layers):
            probs = attn[layer][b, :, -1].mean(0)
            expect = torch.stack([probs[labels[b] == g].sum() for g in range(len(GROUPS))])
            torch.testing.assert_close(r.share[row], expect, atol=1e-5, rtol=1e-4)


def test_kept_tokens_match_the_engine(llava, padded):
    results = analyze_batch(llava, padded, k=2, ratio=0.75)
    with FastV(k=2, ratio=0.75).apply(llava) as handle:
        llava(**padded)
        kept = handle.stats.kept_positions
    pads = (padded["attention_mask"] == 0).sum(1)
    for b, r in enumerate(results):
        assert r.kept == (kept[b] - pads[b]).tolist()
        assert len(r.kept) == r.counts["visual"] // 4


@pytest.mark.parametrize(
    "name,settings",
    [("pool", {"keep": 4}), ("divprune", {"keep": 6}), ("visionzip+fastv", {"keep": 3}), ("fastv", {"k": 1})],
)
def test_kept_tokens_of_any_method_match_the_engine(llava, padded, name, settings):
    """analyze(method=...) outlines exactly what that method keeps when it prunes."""
    from fastv import make

    method = make(name, **settings)
    results = analyze_batch(llava, padded, method=method)
    with make(name, **settings).apply(llava) as handle:
        llava(**padded)
    pads = (padded["attention_mask"] == 0).sum(1)
    for b, r in enumerate(results):
        assert r.kept == (handle.stats.kept_positions[b] - pads[b]).tolist()
        assert r.method.startswith(name) and r.k == getattr(method, "k", None)


def test_llava15_grid_is_24x24_per_image():
    """LLaVA-1.5's 336 px / patch 14 tower: 576 tokens per image on a 24x24 grid, in sequence order."""
    model = tiny_llava()
    model.config.vision_config.image_size, model.config.vision_config.patch_size = 336, 14
    ids = torch.tensor([[1, 2] + [IMAGE_TOKEN] * 576 + [3] + [IMAGE_TOKEN] * 576 + [4]])
    panels = visual_layout(model, ids, {"pixel_values": torch.zeros(2, 3, 336, 336)})[0]
    assert [(p.shape, p.exact) for p in panels] == [((24, 24), True)] * 2
    assert panels[0].positions == list(range(2, 578)) and panels[1].positions[0] == 579


def test_qwen2_vl_merged_grids_images_and_video_frames():
    model, inputs = tiny_families.qwen2_vl()
    results = analyze_batch(model, inputs)
    # sample 0: one 8x8-patch image -> 4x4 merged; sample 1: a 4x4-patch image (2x2) and a 2-frame video
    assert [(p.kind, p.frame, p.shape) for p in results[0].panels] == [("image", None, (4, 4))]
    assert [(p.kind, p.frame, p.shape) for p in results[1].panels] == [
        ("image", None, (2, 2)), ("video", 0, (2, 2)), ("video", 1, (2, 2))
    ]  # fmt: skip
    for r in results:
        assert torch.allclose(r.share.sum(1), torch.ones(len(r.layers)), atol=1e-5)
        ids = torch.tensor(r.input_ids)
        for p in r.panels:  # local positions point at visual tokens
            assert bool(torch.isin(ids[p.positions], torch.tensor([250, 251])).all())


def test_qwen3_vl_frames_split_by_timestamps():
    model, inputs = tiny_families.qwen3_vl()
    r = analyze_batch(model, inputs, k=2)[1]
    assert [(p.kind, p.frame, p.shape) for p in r.panels][1:] == [("video", 0, (2, 2)), ("video", 1, (2, 2))]
    assert r.counts["interleaved"] > 0  # the timestamp text between frames


FAMILIES = ["video_llava", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "internvl", "gemma3"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_with_generated_output(family):
    """Prompt + generated output attributed in one pass (M-RoPE, token types, tiles, frames)."""
    model, inputs = getattr(tiny_families, family)()
    for r in analyze_batch(model, inputs, query="output", max_new_tokens=2):
        assert torch.allclose(r.share.sum(1), torch.ones(len(r.layers)), atol=1e-5)
        assert r.counts["output"] == 2 and r.panels
        assert sum(len(p.positions) for p in r.panels) == r.counts["visual"]


def test_unknown_layout_falls_back_with_a_note():
    model, inputs = tiny_families.internvl()
    r = analyze_batch(model, inputs)[0]
    assert r.panels and not any(p.exact for p in r.panels)
    assert any("not known" in n for n in r.notes)
    assert torch.allclose(r.share.sum(1), torch.ones(len(r.layers)), atol=1e-5)


def test_bad_layer_and_query_are_refused(llava, padded):
    one = {k: v[:1] for k, v in padded.items() if k != "pixel_values"} | {"pixel_values": padded["pixel_values"][:2]}
    with pytest.raises(FastVError, match="out of range"):
        analyze(llava, one, layers=[0, 31])
    with pytest.raises(FastVError, match="no output tokens"):
        analyze(llava, one, query="output")


def test_json_and_aggregate(llava, padded):
    results = analyze_batch(llava, padded, matrix_layer=2)
    data = json.loads(json.dumps(results[0].to_json()))
    assert [layer["layer"] for layer in data["layers"]] == [0, 1, 2, 3]
    assert abs(sum(v for v in data["layers"][2]["share"].values() if v) - 1) < 1e-5
    assert data["layers"][0]["efficiency"]["output"] is None  # empty group: no NaN in JSON
    assert np.array(data["layers"][0]["visual_attention"][0]).shape == (GRID, GRID)
    assert len(data["kept"]["kept_positions"]) == 2 * N // 2
    assert data["kept"]["method"] == "fastv k=2 r=0.5"
    mean = aggregate([r.light() for r in results])
    torch.testing.assert_close(mean.share, (results[0].share + results[1].share) / 2)
    assert mean.to_json()["n_samples"] == 2


def _check_png(path, min_bytes=5000):
    assert path.is_file() and path.stat().st_size > min_bytes
    with Image.open(path) as im:
        assert im.size[0] > 300 and im.size[1] > 200
        return np.asarray(im.convert("RGB"))


def test_pngs_written(llava, padded, tmp_path):
    from fastv.analysis import plots

    r = analyze_batch(llava, padded, matrix_layer=2, max_new_tokens=2)[0]
    paths = plots.save_all(r, tmp_path, heat_layers=[0, 2])
    assert set(paths) == {"allocation", "heatmap", "matrix"}
    for path in paths.values():
        pixels = _check_png(path)
        assert pixels.std() > 10  # not a blank canvas


# ---- loading + CLI on a saved tiny LLaVA with a real processor ---------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from tiny_processor import save_tiny_llava

    root = tmp_path_factory.mktemp("tiny")
    save_tiny_llava(root / "model")
    g = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / "images").mkdir(exist_ok=True)
        Image.fromarray(g.integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(root / "images" / f"{name}.png")
    return root


def test_load_model_and_build_inputs(saved):
    from fastv.loading import build_inputs, load_model, to_model

    model, processor = load_model(str(saved / "model"))
    assert processor.tokenizer.padding_side == "left"
    images = [saved / "images" / "a.png", saved / "images" / "b.png"]
    inputs = to_model(build_inputs(processor, images, "what is in the image ?"), model)
    ids = inputs["input_ids"][0]
    assert int((ids == IMAGE_TOKEN).sum()) == 2 * N
    assert inputs["pixel_values"].shape == (2, 3, 28, 28)
    r = analyze(model, inputs, processor=processor)
    assert [p.shape for p in r.panels] == [(GRID, GRID)] * 2
    assert r.images[("image", 0)][0].shape == (28, 28, 3)  # what the model saw, under the heat map


def _invoke(args):
    from typer.testing import CliRunner

    from fastv.cli import _register, app

    _register()
    return CliRunner().invoke(app, ["analyze", *args])


def test_cli_one_prompt(saved, tmp_path):
    out = tmp_path / "out"
    res = _invoke([
        "--model", str(saved / "model"), "--image", str(saved / "images" / "a.png"),
        "--prompt", "what is in the image ?", "--layers", "0,1,-1", "--out", str(out), "--max-new-tokens", "2",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "visual" in res.output
    data = json.loads((out / "analysis.json").read_text())
    assert len(data["layers"]) == 4 and data["output_len"] == 2
    for name in ("allocation.png", "heatmap.png", "matrix_layer2.png"):
        _check_png(out / name)


def test_cli_outlines_any_method(saved, tmp_path):
    """--method pool --keep 4: the JSON and the heat map's outline are pool's 4 kept tokens."""
    out = tmp_path / "pool"
    res = _invoke([
        "--model", str(saved / "model"), "--image", str(saved / "images" / "a.png"), "--prompt", "what is it ?",
        "--method", "pool", "--keep", "4", "--out", str(out),
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "pool keep=4 keeps 4 visual tokens" in res.output.replace("\n", " ")
    data = json.loads((out / "analysis.json").read_text())
    assert data["kept"]["method"] == "pool keep=4" and len(data["kept"]["kept_positions"]) == 4
    _check_png(out / "heatmap.png")
    bad = _invoke(["--model", str(saved / "model"), "--image", str(saved / "images" / "a.png"), "--method", "nope"])
    assert bad.exit_code == 2 and "unknown method 'nope'" in bad.output


def test_cli_folder_aggregates(saved, tmp_path):
    out = tmp_path / "agg"
    res = _invoke(["--model", str(saved / "model"), "--image", str(saved / "images"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "aggregate.json").read_text())
    assert data["n_samples"] == 2 and data["samples"] == ["a", "b"]
    _check_png(out / "allocation_mean.png")
    res = _invoke(["--model", str(saved / "model"), "--image", str(saved / "images" / "a.png"), "--layers", "9"])
    assert res.exit_code == 2 and "out of range" in res.output


def test_cli_prompts_file(saved, tmp_path):
    lines = [{"image": "images/a.png", "prompt": "what is in the image ?", "name": "first"},
             {"image": ["images/a.png", "images/b.png"], "prompt": "describe"}]  # fmt: skip
    jsonl = saved / "prompts.jsonl"
    jsonl.write_text("\n".join(json.dumps(x) for x in lines))
    res = _invoke(["--model", str(saved / "model"), "--prompts", str(jsonl), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "aggregate.json").read_text())
    assert data["samples"] == ["first", "00001"]
    assert data["mean_group_counts"]["visual"] == 1.5 * N


def test_default_model_goes_through_load_default(monkeypatch):
    import fastv.zoo.default_model
    from fastv import loading

    class Tok:
        padding_side = "right"

    class Proc:
        tokenizer = Tok()

    model = tiny_llava()
    monkeypatch.setattr(fastv.zoo.default_model, "load_default", lambda dtype: (model, Proc()))
    got, proc = loading.load_model("default", attn="eager")
    assert got is model and proc.tokenizer.padding_side == "left"
    assert model.config.text_config._attn_implementation == "eager"
