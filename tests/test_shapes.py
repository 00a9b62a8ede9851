"""The shapes world is deterministic, its splits are disjoint, and its answers are right."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from fastv.zoo.datasets import shapes


def test_same_seed_same_scene_and_pixels():
    for seed in (0, 7, shapes.split_seed("test", 3)):
        a, b = shapes.make_scene(seed), shapes.make_scene(seed)
        assert a == b
        assert shapes.render(a).tobytes() == shapes.render(b).tobytes()
    assert shapes.make_scene(1) != shapes.make_scene(2)


def test_eval_samples_are_deterministic_and_cover_all_kinds():
    a = shapes.eval_samples("test", 5)
    assert a == shapes.eval_samples("test", 5)
    assert len(a) == 5 * len(shapes.KINDS)
    assert {s.kind for s in a} == set(shapes.KINDS)


def test_splits_use_disjoint_seeds():
    n = 1000
    seeds = {split: {shapes.split_seed(split, i) for i in range(n)} for split in shapes.SPLITS}
    assert not seeds["train"] & seeds["validation"]
    assert not seeds["train"] & seeds["test"]
    assert not seeds["validation"] & seeds["test"]
    # The ranges themselves cannot meet, whatever the index.
    assert shapes.split_seed("train", 999_999_999) < shapes.split_seed("validation", 0)
    with pytest.raises(ValueError):
        shapes.split_seed("train", 1_000_000_000)


def test_scene_contents():
    for i in range(200):
        scene = shapes.make_scene(i)
        assert shapes.MIN_OBJECTS <= len(scene.objects) <= shapes.MAX_OBJECTS
        assert len({o.cell for o in scene.objects}) == len(scene.objects)
        for o in scene.objects:
            col, row = shapes.COLUMNS.index(o.cell[0]), int(o.cell[1]) - 1
            half = shapes.SIZES[o.size] / 2
            # The object stays inside its own cell, so a cell name pins down a few patches.
            assert col * shapes.CELL_SIZE <= o.cx - half and o.cx + half < (col + 1) * shapes.CELL_SIZE
            assert row * shapes.CELL_SIZE <= o.cy - half and o.cy + half < (row + 1) * shapes.CELL_SIZE


def test_render_size_and_colours():
    scene = shapes.make_scene(11)
    img = shapes.render(scene)
    assert img.size == (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE) and img.mode == "RGB"
    px = np.asarray(img)
    for o in scene.objects:
        assert tuple(px[o.cy, o.cx]) == shapes.COLORS[o.color]
    assert shapes.render(scene, size=192).size == (192, 192)


def test_objects_cover_few_patches():
    # The point of the world: an answer lives in a few of the 144 visual tokens.
    for i in range(50):
        scene = shapes.make_scene(i)
        owners = shapes.patch_objects(scene)
        assert owners.shape == (144,)
        for k in range(1, len(scene.objects) + 1):
            assert 1 <= (owners == k).sum() <= 9


def test_answers_are_consistent_with_the_scene():
    words = set(shapes.WORDS)
    for i in range(100):
        scene = shapes.make_scene(i)
        rng = random.Random(i)
        for kind in shapes.KINDS:
            qa = shapes.ask(scene, kind, rng)
            assert set(qa.question.split()) <= words and set(qa.answer.split()) <= words
            cell = qa.question.split()[-1]
            if kind == "color":
                assert scene.at(cell).color == qa.answer
            elif kind == "shape":
                assert scene.at(cell).shape == qa.answer
            elif kind == "describe":
                o = scene.at(cell)
                assert qa.answer == f"{o.size} {o.color} {o.shape}"
            elif kind == "count":
                word = qa.question.split()[1]
                assert int(qa.answer) == sum(word in (o.color, o.shape) for o in scene.objects)
            elif kind == "exists":
                name = " ".join(qa.question.split()[1:])
                assert (qa.answer == "yes") == any(o.name == name for o in scene.objects)


def test_relative_position_answers():
    scene = shapes.Scene(
        0,
        (
            shapes.Obj("a1", "red", "circle", "small", 12, 12),
            shapes.Obj("b1", "blue", "square", "large", 36, 12),
            shapes.Obj("b2", "green", "diamond", "small", 36, 36),
        ),
    )
    rng = random.Random(0)
    seen = {}
    for _ in range(300):
        for kind in ("left", "above"):
            qa = shapes.ask(scene, kind, rng)
            seen[qa.question] = qa.answer
    assert seen["left of b1"] == "red circle"
    assert seen["above b2"] == "blue square"
    assert seen["left of b2"] == "none"
    assert "left of a1" not in seen and "above b1" not in seen  # no neighbour there: never asked


@pytest.mark.parametrize("style", shapes.STYLES)
def test_answer_cell_holds_the_object_the_answer_names(style):
    """answer_cell: the named cell, or for left/above its neighbour; checked against the answers themselves."""
    rng = random.Random(1)
    for seed in range(12):
        scene = shapes.make_scene(seed)
        for kind in shapes.ALL_KINDS:
            qa = shapes.ask(scene, kind, rng, style)
            cell = shapes.answer_cell(qa)
            if kind not in ("color", "shape", "describe", "left", "above"):
                assert cell is None, qa
                continue
            obj = scene.at(cell)
            want = {"color": "color", "shape": "shape"}.get(kind)
            if want:
                assert getattr(obj, want) == qa.answer
            elif kind == "describe":
                assert f"{obj.size} {obj.color} {obj.shape}" == qa.answer
            else:
                assert (obj.name if obj else "none") == qa.answer
    assert shapes.answer_cell(shapes.QA("left", "left of b3", "none")) == "a3"
    assert shapes.answer_cell(shapes.QA("above", "above b3", "none")) == "b2"


def test_kinds_are_balanced_in_training_questions():
    qas = shapes.questions(shapes.make_scene(3), 14)
    kinds = [q.kind for q in qas]
    assert all(kinds.count(k) == 2 for k in shapes.KINDS)


def test_scene_level_answers_are_consistent_with_the_scene():
    # Each answer recomputed here from the objects, independently of shapes.ask's code.
    for i in range(300):
        scene = shapes.make_scene(i)
        rng = random.Random(i)
        for kind in shapes.SCENE_KINDS:
            qa = shapes.ask(scene, kind, rng)
            if kind == "total":
                assert qa.answer == str(len(scene.objects))
            elif kind == "colors":
                assert qa.answer.split() == [c for c in shapes.COLORS if any(o.color == c for o in scene.objects)]
            elif kind == "common":
                counts = Counter(o.color for o in scene.objects)
                best = max(counts.values())
                winners = [c for c, n in counts.items() if n == best]
                assert qa.answer == (winners[0] if len(winners) == 1 else "tie")
            elif kind == "anyleft":
                _, color, _, _, shape = qa.question.split()
                xs = [int(o.cell[0], 36) for o in scene.objects if o.color == color]  # a..d -> 10..13
                ys = [int(o.cell[0], 36) for o in scene.objects if o.shape == shape]
                assert (qa.answer == "yes") == (bool(xs) and bool(ys) and min(xs) < max(ys))


def test_scene_level_answers_are_not_guessable():
    # No answer dominates a kind, so a model must look at the whole scene to score.
    samples = shapes.eval_samples("validation", 400, shapes.SCENE_KINDS)
    for kind in shapes.SCENE_KINDS:
        answers = Counter(s.answer for s in samples if s.kind == kind)
        assert len(answers) >= 2
        assert max(answers.values()) / sum(answers.values()) < 0.6, (kind, answers.most_common(3))


def test_long_style_asks_the_same_question_in_llava_words():
    for i in range(100):
        scene = shapes.make_scene(i)
        for kind in shapes.ALL_KINDS:
            short = shapes.ask(scene, kind, random.Random(i))
            long = shapes.ask(scene, kind, random.Random(i), style="long")
            assert long.answer == short.answer and long.kind == kind
            words = shapes.words_of(long.question)
            assert set(words) <= set(shapes.WORDS)
            assert 12 <= len(words) <= 40  # a realistic instruction, not a key word
            assert long.question.endswith("Answer the question using a single word or phrase.")
            # The slot values of the short question appear in the long one (same cell, colour, shape).
            for w in short.question.split():
                if w in shapes.CELLS or w in shapes.COLORS:
                    assert w in words


def test_the_first_models_questions_and_words_are_unchanged():
    # The shipped model was trained and evaluated on these; adding kinds must not move them.
    first = shapes.eval_samples("test", 2)
    assert [(s.kind, s.question, s.answer) for s in first[:3]] == [
        ("color", "color a3", "blue"),
        ("shape", "shape d1", "diamond"),
        ("describe", "describe d2", "large blue square"),
    ]
    assert shapes.WORDS[:8] == ("color", "shape", "describe", "count", "exists", "left", "above", "of")
    assert len(set(shapes.WORDS)) == len(shapes.WORDS)


def test_a_kinds_question_does_not_depend_on_the_other_kinds_asked():
    every = {(s.seed, s.kind): s for s in shapes.eval_samples("test", 10, shapes.ALL_KINDS)}
    some = shapes.eval_samples("test", 10, ("count", "colors"), style="short")
    assert all(every[(s.seed, s.kind)] == s for s in some)
    assert len(shapes.eval_samples("test", 4, shapes.ALL_KINDS, style="long")) == 4 * len(shapes.ALL_KINDS)


def test_bad_kind_or_style_is_refused():
    scene = shapes.make_scene(0)
    with pytest.raises(ValueError, match="unknown kind"):
        shapes.ask(scene, "colour", random.Random(0))
    with pytest.raises(ValueError, match="unknown style"):
        shapes.ask(scene, "color", random.Random(0), style="verbose")
    with pytest.raises(ValueError, match="unknown kinds"):
        shapes.eval_samples("test", 1, ("total", "sizes"))
