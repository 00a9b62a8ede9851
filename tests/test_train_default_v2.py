"""The second default model's recipe: its training turns are the chat template's prompts, it fits the
size limit, and a run stopped and resumed ends bit for bit where an uninterrupted run ends."""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import pytest
import torch

from fastv.zoo.datasets import shapes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "training"))

import train_default_v2 as recipe  # noqa: E402
from model_setup import SYSTEM_PROMPT, build_model_v2, build_processor  # noqa: E402


@pytest.fixture(scope="module")
def processor():
    return build_processor("v2")


def test_packed_turns_are_exactly_what_the_chat_template_renders(processor):
    scene = shapes.make_scene(shapes.split_seed("train", 3))
    qas = [shapes.ask(scene, k, random.Random(1), style) for k, style in (("color", "long"), ("colors", "short"))]
    qas.append(shapes.ask(scene, "anyleft", random.Random(2), "long"))
    ids, labels = recipe.Encoder(processor.tokenizer).conversation(qas)
    messages = []
    for i, qa in enumerate(qas):
        image = [{"type": "image"}] if i == 0 else []
        messages.append({"role": "user", "content": [*image, {"type": "text", "text": qa.question}]})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": qa.answer}]})
    text = processor.apply_chat_template(messages)
    assert text.startswith("<s>" + SYSTEM_PROMPT + " USER: <image>")
    expected = processor(images=shapes.render(scene), text=text, return_tensors="pt")["input_ids"][0].tolist()
    assert ids == expected
    # Loss only on the answers and their </s>.
    target = processor.tokenizer.decode([t for t in labels if t >= 0]).split()
    want = []
    for qa in qas:
        want += [*qa.answer.split(), "</s>"]
    assert target == want


def test_bare_curriculum_turns_answer_right_after_the_key_word(processor):
    scene = shapes.make_scene(shapes.split_seed("train", 5))
    args = recipe.parse_args(["--bare-until", "10"])
    early, late = recipe.turns(scene, args, 9, 0), recipe.turns(scene, args, 10, 0)
    assert all(len(qa.question.split()) <= 5 for qa in early)  # terse style only while bare
    assert any(len(qa.question.split()) > 10 for qa in late)
    encoder = recipe.Encoder(processor.tokenizer)
    ids, labels = encoder.conversation(early, bare=True)
    tokens = processor.tokenizer.convert_ids_to_tokens(ids)
    assert "ASSISTANT" not in tokens and tokens.count("USER") == len(early)
    first_answer = next(i for i, t in enumerate(labels) if t >= 0)
    assert tokens[first_answer - 1] == early[0].question.split()[-1]  # answered where the key word is read
    assert (
        processor.tokenizer.decode(ids[first_answer : first_answer + len(early[0].answer.split())]) == early[0].answer
    )


@pytest.mark.parametrize("bare", [False, True])
def test_cell_targets_sit_where_the_answer_is_predicted(processor, bare):
    """--aux-cell-layer's targets: the asked cell at each turn's last prompt token, nothing elsewhere."""
    scene = shapes.make_scene(shapes.split_seed("train", 4))
    asks = (("color", "long"), ("total", "long"), ("left", "short"), ("describe", "short"), ("above", "long"))
    qas = [shapes.ask(scene, k, random.Random(i), "short" if bare else style) for i, (k, style) in enumerate(asks)]
    encoder = recipe.Encoder(processor.tokenizer)
    ids, labels, cells, answering = encoder.conversation_with_cells(qas, bare)
    assert (ids, labels) == encoder.conversation(qas, bare)
    tokens = processor.tokenizer.convert_ids_to_tokens(ids)
    answer_starts = [i for i in range(1, len(ids)) if labels[i] >= 0 and labels[i - 1] < 0]
    assert len(answer_starts) == len(qas)
    targets = {i: shapes.CELLS[c] for i, c in enumerate(cells) if c >= 0}
    looked_at = {i: shapes.CELLS[c] for i, c in enumerate(answering) if c >= 0}
    want, want_looked = {}, {}
    for start, qa in zip(answer_starts, qas, strict=True):
        asked = re.findall(r"\b[a-d][1-4]\b", qa.question)
        if asked:  # the position whose output is the answer's first word, and the cell in the question
            want[start - 1] = asked[0]
            assert tokens[start - 1] == (asked[0] if bare else ":")
            col, row = asked[0]
            # --aux-content-layer's cell: the one whose object is the answer (left of b3 -> a3, above b3 -> b2)
            want_looked[start - 1] = {"left": chr(ord(col) - 1) + row, "above": col + str(int(row) - 1)}.get(
                qa.kind, asked[0]
            )
    assert targets == want and len(want) == 4  # "total" names no cell
    assert looked_at == want_looked and sum(targets[i] != looked_at[i] for i in targets) == 2


def test_content_targets_name_the_object_in_the_asked_cell():
    """--aux-content-layer's targets: empty, or the colour x shape of the object drawn in the asked cell."""
    scene = shapes.make_scene(shapes.split_seed("train", 6))
    colors, kinds = list(shapes.COLORS), shapes.SHAPES
    seen = set()
    for i, cell in enumerate(shapes.CELLS):
        got = recipe.content_class(scene, i)
        obj = next((o for o in scene.objects if o.cell == cell), None)
        if obj is None:
            assert got == 0
        else:
            assert (colors[(got - 1) // len(kinds)], kinds[(got - 1) % len(kinds)]) == (obj.color, obj.shape)
        seen.add(got)
    assert recipe.content_class(scene, -100) == -100
    assert 0 in seen and len(seen) > 2 and max(seen) < recipe.CONTENT_CLASSES


def test_scene_targets_count_the_objects_at_every_answer_position(processor):
    """--aux-scene-layer's targets: at each turn's last prompt token (cell question or not), the scene's
    object counts per colour, per shape, per colour x shape and in total; -100 rows elsewhere."""
    scene = shapes.make_scene(shapes.split_seed("train", 9))
    asks = (("count", "long"), ("color", "short"), ("colors", "long"), ("exists", "long"))
    qas = [shapes.ask(scene, k, random.Random(i), style) for i, (k, style) in enumerate(asks)]
    ids, labels, *_ = recipe.Encoder(processor.tokenizer).conversation_with_cells(qas)
    rows = recipe.scene_targets(scene, labels, len(ids) + 3)
    tokens = processor.tokenizer.convert_ids_to_tokens(ids)
    at = [i for i, row in enumerate(rows) if row[0] != -100]
    assert len(at) == len(qas) and all(tokens[i] == ":" and labels[i + 1] >= 0 for i in at)
    assert all(row == [-100] * recipe.SCENE_GROUPS for i, row in enumerate(rows) if i not in at)
    # Transcribed from the drawn objects: (colour, shape) pairs tallied by hand.
    pairs = [(o.color, o.shape) for o in scene.objects]
    want = [sum(c == color for c, _ in pairs) for color in ("red", "green", "blue", "yellow", "purple")]
    want += [sum(s == kind for _, s in pairs) for kind in ("circle", "square", "triangle", "diamond")]
    want += [pairs.count((c, s)) for c in ("red", "green", "blue", "yellow", "purple") for s in shapes.SHAPES]
    want.append(len(pairs))
    assert all(rows[i] == want for i in at)
    assert max(want) < recipe.SCENE_COUNT_CLASSES and len(want) == recipe.SCENE_GROUPS


def test_query_targets_name_the_colour_and_shape_asked_about(processor):
    """--aux-query-layer's targets, checked against the terse form of the same question (same draws)."""
    colors, kinds = ("red", "green", "blue", "yellow", "purple"), ("circle", "square", "triangle", "diamond")
    seen = set()
    for i in range(40):
        scene = shapes.make_scene(shapes.split_seed("train", i))
        kind = ("count", "exists", "anyleft", "color", "total")[i % 5]
        terse = shapes.ask(scene, kind, random.Random(i), "short").question.split()  # e.g. any red left of circle
        long = shapes.ask(scene, kind, random.Random(i), "long")
        want = [-100, -100]
        if kind in ("count", "exists", "anyleft"):
            want = [0, 0]
            for w in terse:
                if w in colors:
                    want[0] = colors.index(w) + 1
                if w in kinds:
                    want[1] = kinds.index(w) + 1
        assert recipe.query_class(long) == want, long.question
        seen.add(tuple(want))
    assert {(c > 0, s > 0) for c, s in seen if c >= 0} == {(True, False), (False, True), (True, True)}
    # In a packed conversation, at each turn's answer position, in turn order.
    scene = shapes.make_scene(shapes.split_seed("train", 2))
    qas = [shapes.ask(scene, k, random.Random(3), "long") for k in ("exists", "color", "count")]
    ids, labels, *_ = recipe.Encoder(processor.tokenizer).conversation_with_cells(qas)
    rows = recipe.query_targets(qas, labels, len(ids))
    marked = [(i, row) for i, row in enumerate(rows) if row != [-100, -100]]
    assert [row for _, row in marked] == [recipe.query_class(qas[0]), [-100, -100], recipe.query_class(qas[2])][::2]
    assert [i for i, _ in marked] == recipe.answer_positions(labels)[::2]


def test_grouped_probe_loss_is_the_mean_of_each_groups_cross_entropy():
    torch.manual_seed(0)
    probe, h = torch.nn.Linear(8, 3 * 4), torch.randn(2, 5, 8)
    targets = torch.full((2, 5, 3), -100)
    targets[0, 1] = torch.tensor([0, 3, 2])
    targets[1, 4] = torch.tensor([1, 1, 0])
    got = recipe.probe_loss(probe, h, targets)
    terms = []
    for b, t in ((0, 1), (1, 4)):
        logits = probe(h[b, t]).reshape(3, 4)  # group g owns outputs [4g, 4g + 4)
        terms += [-torch.log_softmax(logits[g], 0)[targets[b, t, g]] for g in range(3)]
    assert torch.allclose(got, torch.stack(terms).mean())
    assert recipe.probe_loss(probe, h, torch.full((2, 5, 3), -100)) == 0


def test_kind_weights_draw_kinds_more_often_and_leave_the_default_data_unchanged():
    args = recipe.parse_args([])
    scenes = [shapes.make_scene(shapes.split_seed("train", i)) for i in range(60)]
    plain = [recipe.turns(s, args, 7, j) for j, s in enumerate(scenes)]
    args.kind_weights = "count=1"
    assert [recipe.turns(s, args, 7, j) for j, s in enumerate(scenes)] == plain
    args.kind_weights = "count=6, exists=6"
    drawn = [qa.kind for j, s in enumerate(scenes) for qa in recipe.turns(s, args, 7, j)]
    share = (drawn.count("count") + drawn.count("exists")) / len(drawn)
    assert 0.5 < share < 0.8  # 12 of 21 slots in each shuffled list (2 of 11 = 18% unweighted)
    for bad in ("count", "count=0", "size=2", "count=x"):
        with pytest.raises(SystemExit, match="kind-weights"):
            recipe.kind_weights(bad)


def test_inference_prompt_ends_like_llava(processor):
    from fastv.core.hf.chat import chat_text

    text = chat_text(processor, "What color is the object in cell b3?", n_images=1, video=False)
    tokens = processor.tokenizer.tokenize(text)
    assert tokens[-2:] == ["ASSISTANT", ":"]
    assert tokens.index("<image>") > 25  # the system prompt comes first, as in LLaVA-1.5
    assert processor.tokenizer.unk_token not in processor.tokenizer.tokenize(
        " ".join(s.question for s in shapes.eval_samples("test", 3, shapes.ALL_KINDS, style="long"))
    )


def test_default_size_fits_the_limit(processor):
    args = recipe.parse_args([])
    model = build_model_v2(processor.tokenizer, args.text_layers, args.text_hidden, args.text_intermediate)
    assert 8 <= args.text_layers <= 12
    assert 4 * sum(p.numel() for p in model.parameters()) <= recipe.MAX_WEIGHT_BYTES


TINY = [
    "--text-layers", "2", "--text-hidden", "64", "--text-intermediate", "128",
    "--phase-a-steps", "2", "--phase-a-batch", "2", "--phase-b-steps", "3", "--phase-b-batch", "2",
    "--qa-per-image", "2", "--val-every", "0", "--ckpt-minutes", "1000",
]  # fmt: skip


def _train(out: Path, *extra: str) -> recipe.Trainer:
    torch.manual_seed(0)
    trainer = recipe.Trainer(recipe.parse_args([*TINY, "--out", str(out), *extra]))
    with torch.enable_grad():
        trainer.run()
    return trainer


@pytest.mark.parametrize("stop_after", [1, 3])  # inside phase A; inside phase B
def test_stopped_and_resumed_run_ends_bit_for_bit_like_an_uninterrupted_one(tmp_path, stop_after):
    straight = _train(tmp_path / "straight")
    first = _train(tmp_path / "cut", "--stop-after", str(stop_after))
    assert (first.state["step_a"], first.state["step_b"]) == ((1, 0) if stop_after == 1 else (2, 1))
    assert (tmp_path / "cut" / "last.pt").is_file()
    resumed = _train(tmp_path / "cut", "--resume")
    assert (resumed.state["step_a"], resumed.state["step_b"]) == (2, 3)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The optimiser too, so a resume could go on for more steps and still match.
    sa, sb = straight.opt_state["state"]["state"], resumed.opt_state["state"]["state"]
    assert all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)
    # And the run really trained: the text model moved away from its initialisation.
    torch.manual_seed(0)
    fresh = recipe.Trainer(recipe.parse_args([*TINY, "--out", str(tmp_path / "fresh")])).model.state_dict()
    name = "model.language_model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(fresh[name], a[name])


def test_probes_train_and_resume_bit_for_bit(tmp_path):
    """All four auxiliary probes, kind weights and hidden background: they learn, are checkpointed, and a resume matches."""
    extra = ("--aux-cell-layer", "1", "--aux-content-layer", "1", "--aux-scene-layer", "2", "--aux-query-layer", "1")
    extra += ("--kind-weights", "count=3", "--hide-background", "0.5")
    straight = _train(tmp_path / "straight", *extra)
    _train(tmp_path / "cut", *extra, "--stop-after", "3")
    resumed = _train(tmp_path / "cut", *extra, "--resume")
    for name in recipe.PROBES:
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    torch.manual_seed(0)
    fresh = recipe.Trainer(recipe.parse_args([*TINY, "--out", str(tmp_path / "fresh")]))
    assert not torch.equal(fresh.scene_probe.weight, straight.scene_probe.weight)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_time_cap_stops_training_but_lets_the_run_finish(tmp_path):
    torch.manual_seed(0)
    trainer = recipe.Trainer(recipe.parse_args([*TINY, "--out", str(tmp_path), "--train-minutes", "1e-9"]))
    with torch.enable_grad():
        ready = trainer.run()
    assert ready and trainer.cut_short  # finish() (test evaluation, final folder) runs next
    assert trainer.state["cut_short_at"] == {"step_a": 1, "step_b": 0}
    assert (tmp_path / "last.pt").is_file()


def test_fit_minutes_shortens_phase_b_to_the_time_left(tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "FIT_PROBE_STEPS", 2)
    args = [*TINY, "--phase-b-steps", "1000", "--out", str(tmp_path), "--fit-minutes", "1e-6"]
    torch.manual_seed(0)
    trainer = recipe.Trainer(recipe.parse_args(args))
    with torch.enable_grad():
        assert trainer.run()  # ran to the (fitted) end of phase B
    assert trainer.state["fitted_total_b"] == 3  # no time left: one more step after the two timed ones
    assert trainer.state["step_b"] == 3
    resumed = recipe.Trainer(recipe.parse_args([*args, "--resume"]))
    with torch.enable_grad():
        assert resumed.run() and resumed.state["step_b"] == 3  # the fitted length is kept on resume


def test_fit_minutes_times_the_steps_after_the_terse_curriculum(tmp_path, monkeypatch):
    """Terse-only steps (--short-until) run 2-3x faster than the rest: timing them overshot the fitted length."""
    monkeypatch.setattr(recipe, "FIT_PROBE_STEPS", 2)
    args = [*TINY, "--phase-b-steps", "1000", "--out", str(tmp_path), "--fit-minutes", "1e-6", "--short-until", "3"]
    torch.manual_seed(0)
    trainer = recipe.Trainer(recipe.parse_args(args))
    timed_at = []
    monkeypatch.setattr(
        trainer,
        "fit_schedule",
        lambda step, sps: timed_at.append(step) or recipe.Trainer.fit_schedule(trainer, step, sps),
    )
    with torch.enable_grad():
        assert trainer.run()
    assert timed_at == [5]  # steps 4-5 timed: the first two after the three terse-only ones
    assert trainer.state["fitted_total_b"] == 6 and trainer.state["step_b"] == 6


def test_sigterm_checkpoints_and_exits(tmp_path):
    import os
    import signal
    import subprocess

    script = Path(recipe.__file__)
    args = [*TINY, "--phase-b-steps", "100000", "--log-every", "1", "--out", str(tmp_path), "--threads", "1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        if " B step 2/" in line:  # training is under way in phase B
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0 and "continue with --resume" in rest
    saved = torch.load(tmp_path / "last.pt", weights_only=False)
    assert saved["step_a"] == 2 and 2 <= saved["step_b"] < 100000


def test_grown_model_computes_what_its_source_computed(tmp_path, processor):
    """--grow-from: the source's layers placed among identity layers, words mapped by name: same logits."""
    from model_setup import build_model

    source_proc = build_processor("v1")
    torch.manual_seed(1)
    source = build_model(source_proc.tokenizer, text_layers=2, text_hidden=64, text_intermediate=128).eval()
    source.save_pretrained(tmp_path / "v1")
    source_proc.save_pretrained(tmp_path / "v1")
    args = [*TINY, "--text-layers", "4", "--out", str(tmp_path / "out"), "--grow-from", str(tmp_path / "v1")]
    trainer = recipe.Trainer(recipe.parse_args([*args, "--grown-layers-at", "1,3"]))
    trainer.grow_text(tmp_path / "v1", [1, 3])
    assert trainer.state["step_a"] == 2  # the tower came along: phase A is skipped
    assert trainer.state["text_from"]["words_copied"] == len(source_proc.tokenizer)

    scene = shapes.make_scene(shapes.split_seed("test", 0))
    v1 = source_proc(images=shapes.render(scene), text="<s><image> color b3", return_tensors="pt")
    words = source_proc.tokenizer.convert_ids_to_tokens(v1["input_ids"][0].tolist())
    v2_ids = torch.tensor([processor.tokenizer.convert_tokens_to_ids(words)])
    with torch.no_grad():
        want = source(**v1).logits[0]
        got = trainer.model.eval()(input_ids=v2_ids, pixel_values=v1["pixel_values"]).logits[0]
    columns = processor.tokenizer.convert_tokens_to_ids(
        source_proc.tokenizer.convert_ids_to_tokens(range(want.shape[-1]))
    )
    torch.testing.assert_close(got[:, columns], want, rtol=1e-5, atol=1e-5)
    # A placement that does not name one distinct layer per source layer is refused.
    with pytest.raises(SystemExit, match="need 2 distinct layer indices in 0..3"):
        trainer.grow_text(tmp_path / "v1", [1, 1])


def test_init_from_starts_a_fresh_schedule_from_a_trained_checkpoint(tmp_path):
    """--init-from: the earlier run's model and probes, then phase B from step 0 (own warm-up and cosine)."""
    source = _train(tmp_path / "a", "--aux-cell-layer", "1", "--aux-content-layer", "1")
    saved = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    args = [*TINY, "--out", str(tmp_path / "b"), "--aux-cell-layer", "1", "--aux-content-layer", "1"]
    tuned = recipe.Trainer(recipe.parse_args([*args, "--init-from", str(tmp_path / "a" / "last.pt")]))
    tuned.init_from(tmp_path / "a" / "last.pt")
    a, b = source.model.state_dict(), tuned.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(tuned.content_probe.weight, saved["content_probe"]["weight"])
    assert tuned.state["init_from"]["step_b"] == 3 and tuned.state["step_a"] == 2 and tuned.state["step_b"] == 0
    with torch.enable_grad():
        assert tuned.run()
    assert tuned.state["step_b"] == 3  # its own phase B, counted from 0
    assert not any(torch.equal(a[k], tuned.model.state_dict()[k]) for k in a if "language_model.layers.0." in k)
    with pytest.raises(SystemExit, match="no such checkpoint"):
        recipe.Trainer(recipe.parse_args([*args, "--init-from", str(tmp_path / "none.pt")])).run()


def test_bf16_only_where_the_hardware_runs_it(monkeypatch):
    """An AVX2-only CPU emulates bf16 ~40x slower than fp32: the run picks fp32 there unless told."""
    cpu = torch.device("cpu")
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert not recipe.use_bf16(cpu)
    assert recipe.use_bf16(cpu, force_on=True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert recipe.use_bf16(cpu)
    assert not recipe.use_bf16(cpu, force_off=True)
    assert recipe.use_bf16(torch.device("cuda"))
    with pytest.raises(SystemExit, match="contradict"):
        recipe.use_bf16(cpu, force_on=True, force_off=True)


def test_hidden_background_is_only_empty_cells_no_turn_asks_about():
    """--hide-background hides patches of cells with no object that no turn names or is answered by;
    it is off at share 0, reproducible from its seed, and hides varying amounts."""
    cells = shapes.patch_cells()
    amounts = set()
    for i in range(40):
        scene = shapes.make_scene(shapes.split_seed("train", i))
        qas = [shapes.ask(scene, k, random.Random(i), "long") for k in ("color", "left", "above", "total")]
        hidden = recipe.hidden_patches(scene, qas, 1.0, seed=i)
        assert recipe.hidden_patches(scene, qas, 1.0, seed=i).tolist() == hidden.tolist()
        assert recipe.hidden_patches(scene, qas, 0.0, seed=i).size == 0
        # Transcribed independently: the cells drawn on, and the cells the questions' words point at.
        drawn = {o.cell for o in scene.objects}
        mentioned = {w for qa in qas for w in re.findall(r"\b[a-d][1-4]\b", qa.question)}
        for qa in qas:  # left / above are answered by the named cell's neighbour
            for w in re.findall(r"\b([a-d])([1-4])\b", qa.question):
                if qa.kind == "left":
                    mentioned.add(f"{chr(ord(w[0]) - 1)}{w[1]}")
                if qa.kind == "above":
                    mentioned.add(f"{w[0]}{int(w[1]) - 1}")
        seen = {shapes.CELLS[cells[p]] for p in hidden}
        assert not seen & (drawn | mentioned)
        amounts.add(len(hidden))
    assert len(amounts) > 10 and max(amounts) > 40


def test_hidden_visual_tokens_are_unseen_by_every_answer(processor):
    """The batch's attention mask hides the chosen visual tokens from every layer: changing their
    inputs to the language model changes no logit, while changing a shown visual token does."""
    args = recipe.parse_args([*TINY, "--hide-background", "1.0", "--phase-b-batch", "4"])
    batch = recipe.PhaseBBatches(args, processor, 0)[5]
    start = recipe.Encoder(processor.tokenizer).image_start
    visual = batch["attention_mask"][:, start : start + recipe.NUM_IMAGE_TOKENS]
    row = int((visual == 0).sum(1).argmax())
    assert (visual[row] == 0).any() and (batch["attention_mask"][:, :start] == 1).all()
    torch.manual_seed(0)
    model = build_model_v2(processor.tokenizer, 2, 64, 128).eval()
    inputs = {k: batch[k][row : row + 1] for k in recipe.MODEL_INPUTS}

    def logits_with(positions: torch.Tensor) -> torch.Tensor:
        def perturb(module, args, kwargs):
            embeds = kwargs["inputs_embeds"].clone()
            embeds[0, start + positions] += 5.0
            return args, {**kwargs, "inputs_embeds": embeds}

        handle = model.model.language_model.register_forward_pre_hook(perturb, with_kwargs=True)
        try:
            return model(**inputs).logits
        finally:
            handle.remove()

    answers = inputs["labels"][0] != -100
    base = logits_with(torch.zeros(0, dtype=torch.long))[0, answers]
    hidden = (visual[row] == 0).nonzero().flatten()
    shown = (visual[row] == 1).nonzero().flatten()[:3]
    assert torch.allclose(logits_with(hidden)[0, answers], base, atol=1e-5)
    assert not torch.allclose(logits_with(shown)[0, answers], base, atol=1e-3)
