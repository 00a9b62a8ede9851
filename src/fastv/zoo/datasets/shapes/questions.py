"""Questions about a scene, in the short and long styles, and the evaluation samples built from them.

See `fastv.zoo.datasets.shapes` for the kinds of questions and their answers.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

from PIL import Image

from fastv.core.errors import FastVError
from fastv.zoo.datasets.shapes.scenes import (
    CELLS,
    COLORS,
    COLUMNS,
    MAX_OBJECTS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    make_scene,
    render,
    split_seed,
)

KINDS = ("color", "shape", "describe", "count", "exists", "left", "above")
SCENE_KINDS = ("total", "common", "anyleft", "colors")
ALL_KINDS = KINDS + SCENE_KINDS
# Named sets of kinds, for command lines and data specs: cell-level, scene-level, every kind.
KIND_GROUPS: dict[str, tuple[str, ...]] = {"cell": KINDS, "scene": SCENE_KINDS, "all": ALL_KINDS}
STYLES = ("short", "long")
_PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds"}

# Long-style phrasings (several per kind, picked with the question's rng) and the instruction that
# follows them, as LLaVA-1.5's short-answer prompts do.
_ONE_WORD = "Answer the question using a single word or phrase."
LONG_TEMPLATES: dict[str, tuple[str, ...]] = {
    "color": (
        "What color is the object in cell {cell}?",
        "Look at cell {cell} of the grid. What is the color of the shape drawn there?",
    ),
    "shape": (
        "What shape is the object in cell {cell}?",
        "Look at cell {cell} of the grid. Which kind of shape is drawn there?",
    ),
    "describe": (
        "Describe the object in cell {cell} by its size, color and shape.",
        "What is drawn in cell {cell}? Give its size, its color and its shape.",
    ),
    "count": (
        "How many {what} are there in the image?",
        "Count the {what} in the picture. How many are there?",
    ),
    "exists": (
        "Is there a {name} anywhere in the image?",
        "Does the picture contain a {name}?",
    ),
    "left": (
        "Which object is in the cell directly to the left of cell {cell}?",
        "Look at the cell just left of cell {cell}. Which object is there, if any?",
    ),
    "above": (
        "Which object is in the cell directly above cell {cell}?",
        "Look at the cell just above cell {cell}. Which object is there, if any?",
    ),
    "total": (
        "How many objects are there in the image in total?",
        "Count all the shapes in the picture, whatever their color. How many are there?",
    ),
    "common": (
        "Which color is the most common among the objects in the image?",
        "Which color do most of the shapes in the picture have? Say tie if no color is the most frequent.",
    ),
    "anyleft": (
        "Is there any {color} object to the left of any {shape}?",
        "Is some {color} shape in a column further left than some {shape}?",
    ),
    "colors": (
        "List the colors of the objects in the image, in the order red, green, blue, yellow, purple.",
        "Which colors appear in the picture? Name each once, in the order red, green, blue, yellow, purple.",
    ),
}


def words_of(text: str) -> list[str]:
    """Split text into the words a word-level tokenizer sees: runs of letters/digits, runs of punctuation.

    The same rule as the `tokenizers` library's ``Whitespace`` pre-tokenizer (``\\w+|[^\\w\\s]+``).
    """
    return re.findall(r"\w+|[^\w\s]+", text)


def _vocabulary() -> tuple[str, ...]:
    """Every word a question or answer of any kind and style can contain, in a fixed order."""
    # The first default model's words first, in its order, so its token ids stay the same.
    text = [*KINDS, "of", *CELLS, *COLORS, *SHAPES, *SIZES, "yes", "no", "none"]
    text += [str(i) for i in range(MAX_OBJECTS + 1)]
    text += ["total", "common", "colors", "any", "tie", *_PLURAL.values(), "objects", _ONE_WORD]
    for templates in LONG_TEMPLATES.values():
        text += [re.sub(r"\{\w+\}", " ", t) for t in templates]
    seen: dict[str, None] = {}
    for t in text:
        for w in words_of(t):
            seen.setdefault(w, None)
    return tuple(seen)


# Every word the world uses; the default models' word-level tokenizers are built from this list.
WORDS: tuple[str, ...] = _vocabulary()


@dataclass(frozen=True)
class QA:
    kind: str
    question: str
    answer: str


def _neighbour(cell: str, kind: str) -> str | None:
    col, row = COLUMNS.index(cell[0]), int(cell[1])
    if kind == "left":
        return f"{COLUMNS[col - 1]}{row}" if col > 0 else None
    return f"{cell[0]}{row - 1}" if row > 1 else None


def _column(obj: Obj) -> int:
    return COLUMNS.index(obj.cell[0])


def _content(scene: Scene, kind: str, rng: random.Random) -> tuple[str, dict[str, str], str]:
    """(short question, the slots a long phrasing fills, answer) of one question of ``kind``.

    The cell-level kinds draw from ``rng`` exactly as the first default model's data did, so its
    evaluation samples stay the same.
    """
    objs = scene.objects
    if kind in ("color", "shape", "describe"):
        o = rng.choice(objs)
        answer = {"color": o.color, "shape": o.shape, "describe": f"{o.size} {o.color} {o.shape}"}[kind]
        return f"{kind} {o.cell}", {"cell": o.cell}, answer
    if kind == "count":
        if rng.random() < 0.5:
            c = rng.choice(tuple(COLORS))
            return f"count {c}", {"what": f"{c} objects"}, str(sum(o.color == c for o in objs))
        s = rng.choice(SHAPES)
        return f"count {s}", {"what": _PLURAL[s]}, str(sum(o.shape == s for o in objs))
    if kind == "exists":
        present = {o.name for o in objs}
        if rng.random() < 0.5:
            name = rng.choice(sorted(present))
        else:
            absent = [f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in present]
            name = rng.choice(absent)
        return f"exists {name}", {"name": name}, "yes" if name in present else "no"
    if kind in ("left", "above"):
        # Ask about an object's neighbour half the time, else about any cell that has one.
        pool = [o.cell for o in objs] if rng.random() < 0.5 else list(CELLS)
        cells = [c for c in pool if _neighbour(c, kind) is not None]
        cell = rng.choice(cells or [c for c in CELLS if _neighbour(c, kind) is not None])
        other = scene.at(_neighbour(cell, kind))  # type: ignore[arg-type]
        q = f"left of {cell}" if kind == "left" else f"above {cell}"
        return q, {"cell": cell}, other.name if other else "none"
    if kind == "total":
        return "total", {}, str(len(objs))
    if kind == "common":
        counts = Counter(o.color for o in objs).most_common()
        tied = len(counts) > 1 and counts[0][1] == counts[1][1]
        return "common color", {}, "tie" if tied else counts[0][0]
    if kind == "anyleft":
        # Mostly colours and shapes that are in the scene, so that both answers are frequent.
        color = rng.choice(sorted({o.color for o in objs}) if rng.random() < 0.8 else tuple(COLORS))
        shape = rng.choice(sorted({o.shape for o in objs}) if rng.random() < 0.8 else SHAPES)
        hit = any(_column(a) < _column(b) for a in objs if a.color == color for b in objs if b.shape == shape)
        return f"any {color} left of {shape}", {"color": color, "shape": shape}, "yes" if hit else "no"
    if kind == "colors":
        present = {o.color for o in objs}
        return "colors", {}, " ".join(c for c in COLORS if c in present)
    raise FastVError(f"unknown kind {kind!r}; expected one of {ALL_KINDS}")


def ask(scene: Scene, kind: str, rng: random.Random, style: str = "short") -> QA:
    """One question of ``kind`` about ``scene``, chosen with ``rng``, phrased in ``style``."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")
    short, slots, answer = _content(scene, kind, rng)
    if style == "short":
        return QA(kind, short, answer)
    template = rng.choice(LONG_TEMPLATES[kind])
    return QA(kind, f"{template.format(**slots)}\n{_ONE_WORD}", answer)


def named_cell(question: str) -> str | None:
    """The cell a question names (its last cell word, in either style), or None if it names none."""
    named = [w for w in words_of(question) if w in CELLS]
    return named[-1] if named else None


def answer_cell(qa: QA) -> str | None:
    """The cell whose object answers ``qa``: the cell it names, or for ``left`` / ``above`` that cell's
    neighbour; None for the kinds that name no cell (count, exists and the scene-level ones).

    Why: a look-up that reads the named cell answers ``color b3`` but not ``left of b3``, so
    whatever must see the answering object (an auxiliary probe, an attention measure) needs this cell.
    """
    named = named_cell(qa.question)
    if named is None or qa.kind not in ("left", "above"):
        return named
    return _neighbour(named, qa.kind)


def questions(
    scene: Scene, n: int, seed: int | None = None, kinds: tuple[str, ...] = KINDS, style: str = "short"
) -> list[QA]:
    """``n`` questions about ``scene``, kinds cycled in a shuffled order (for packing in training)."""
    rng = random.Random(scene.seed * 7919 + 17 if seed is None else seed)
    order = list(kinds)
    rng.shuffle(order)
    return [ask(scene, order[i % len(order)], rng, style) for i in range(n)]


@dataclass(frozen=True)
class Sample:
    """One evaluation item: a scene seed, a question and its expected answer."""

    seed: int
    kind: str
    question: str
    answer: str

    def image(self) -> Image.Image:
        return render(make_scene(self.seed))


def eval_samples(
    split: str, n_images: int, kinds: tuple[str, ...] = KINDS, start: int = 0, style: str = "short"
) -> list[Sample]:
    """One question per kind for each of ``n_images`` scenes of ``split`` (deterministic).

    A kind's question about a scene depends only on the scene and the kind's place in `ALL_KINDS`,
    so asking for more kinds (or another style) never changes the questions of the others.
    """
    unknown = [k for k in kinds if k not in ALL_KINDS]
    if unknown:
        raise ValueError(f"unknown kinds {unknown}; expected some of {ALL_KINDS}")
    out = []
    for i in range(start, start + n_images):
        seed = split_seed(split, i)
        scene = make_scene(seed)
        for kind in kinds:
            qa = ask(scene, kind, random.Random(seed * 31 + ALL_KINDS.index(kind)), style)
            out.append(Sample(seed, kind, qa.question, qa.answer))
    return out
