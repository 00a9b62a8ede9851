"""A seeded world of small shapes on a grid, with question/answer pairs about them.

Why this world: no pretrained LVLM can be downloaded here, so fastv trains its own default model on
scenes whose answers are checkable. Objects are small (a large one spans about 2x2 patches of 8 px, a
small one about 1-2 patches) on a 4x4 grid of 24 px cells (3x3 patches each), so an answer depends on
a few of the 144 visual tokens and pruning the wrong tokens costs accuracy.

Everything is a pure function of integer seeds: ``make_scene(seed)`` always draws the same scene, and
the train / validation / test splits use disjoint seed ranges (``split_seed``).

Each question comes in two styles. ``short`` (the first default model's prompts) is a few words that
end on the word that decides the answer, because a small model learns to answer right where the key
word is read. ``long`` phrases the same question the way people ask LLaVA ("What color is the object
in cell b3? Answer the question using a single word or phrase."), for models prompted with a system
prompt and the ``USER: ... ASSISTANT:`` template. The answer is the same in both styles.

Cell-level kinds (`KINDS`; an answer depends on one or two objects):

==========  ==========================  ===========================
kind        short question              answer
==========  ==========================  ===========================
color       ``color b3``                ``red``
shape       ``shape b3``                ``circle``
describe    ``describe b3``             ``small red circle`` (a short caption of one object)
count       ``count red`` / ``count circle``   ``0`` .. ``8``
exists      ``exists red circle``       ``yes`` / ``no``
left        ``left of b3``              ``blue square`` or ``none`` (the object in the cell to the left)
above       ``above b3``                ``blue square`` or ``none`` (the object in the cell above)
==========  ==========================  ===========================

Scene-level kinds (`SCENE_KINDS`; an answer depends on every object, so no single cell decides it and
question-agnostic token pruning gets a fair test):

==========  ==============================  ===========================================================
kind        short question                  answer
==========  ==============================  ===========================================================
total       ``total``                       ``2`` .. ``8`` (objects in the scene)
common      ``common color``                the most frequent colour, or ``tie``
anyleft     ``any red left of circle``      ``yes`` / ``no``: some red object's column is left of some
                                            circle's column
colors      ``colors``                      the colours present, in `COLORS` order: ``red blue purple``
==========  ==============================  ===========================================================

Cells are named by column letter (a..d, left to right) and row number (1..4, top to bottom).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from fastv.core.errors import FastVError

IMAGE_SIZE = 96
PATCH_SIZE = 8
GRID = 4
CELL_SIZE = IMAGE_SIZE // GRID
COLUMNS = "abcd"
CELLS = tuple(f"{c}{r}" for r in range(1, GRID + 1) for c in COLUMNS)  # row-major: a1 b1 c1 d1 a2 ...
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES: dict[str, int] = {"small": 10, "large": 17}  # object side in pixels
MIN_OBJECTS, MAX_OBJECTS = 2, 8
KINDS = ("color", "shape", "describe", "count", "exists", "left", "above")
SCENE_KINDS = ("total", "common", "anyleft", "colors")
ALL_KINDS = KINDS + SCENE_KINDS
STYLES = ("short", "long")
SPLITS = ("train", "validation", "test")
_SPLIT_BASE = {"train": 0, "validation": 1_000_000_000, "test": 2_000_000_000}
_BACKGROUND = (235, 235, 235)
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
class Obj:
    """One object: its cell, look, and pixel centre (jittered inside the cell)."""

    cell: str
    color: str
    shape: str
    size: str
    cx: int
    cy: int

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    seed: int
    objects: tuple[Obj, ...]

    def at(self, cell: str) -> Obj | None:
        return next((o for o in self.objects if o.cell == cell), None)


@dataclass(frozen=True)
class QA:
    kind: str
    question: str
    answer: str


def split_seed(split: str, index: int) -> int:
    """Seed of the ``index``-th scene of a split; the splits' seed ranges never overlap."""
    if split not in _SPLIT_BASE:
        raise FastVError(f"unknown split {split!r}; expected one of {SPLITS}")
    if not 0 <= index < 1_000_000_000:
        raise FastVError("index must be in [0, 1e9)")
    return _SPLIT_BASE[split] + index


def make_scene(seed: int) -> Scene:
    """Draw 2-8 objects in distinct cells, deterministically from ``seed``."""
    rng = random.Random(seed)
    n = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
    cells = rng.sample(CELLS, n)
    objects = []
    for cell in sorted(cells, key=CELLS.index):
        col, row = COLUMNS.index(cell[0]), int(cell[1]) - 1
        size = rng.choice(tuple(SIZES))
        slack = (CELL_SIZE - SIZES[size]) // 2 - 1
        cx = col * CELL_SIZE + CELL_SIZE // 2 + rng.randint(-slack, slack)
        cy = row * CELL_SIZE + CELL_SIZE // 2 + rng.randint(-slack, slack)
        objects.append(Obj(cell, rng.choice(tuple(COLORS)), rng.choice(SHAPES), size, cx, cy))
    return Scene(seed, tuple(objects))


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, fill) -> None:
    h = SIZES[obj.size] / 2
    x0, y0, x1, y1 = obj.cx - h, obj.cy - h, obj.cx + h, obj.cy + h
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(obj.cx, y0), (x1, y1), (x0, y1)], fill=fill)
    else:  # diamond
        draw.polygon([(obj.cx, y0), (x1, obj.cy), (obj.cx, y1), (x0, obj.cy)], fill=fill)


def render(scene: Scene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw the scene with Pillow at ``size`` pixels (the model's input resolution by default)."""
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), _BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        _draw(draw, obj, COLORS[obj.color])
    return img if size == IMAGE_SIZE else img.resize((size, size), Image.Resampling.BICUBIC)


def object_map(scene: Scene) -> np.ndarray:
    """Per-pixel index of the object drawn there (1-based; 0 = background), shape (96, 96)."""
    img = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(img)
    for i, obj in enumerate(scene.objects, start=1):
        _draw(draw, obj, i)
    return np.asarray(img)


def patch_objects(scene: Scene, min_pixels: int = 6) -> np.ndarray:
    """Per-patch object index (row-major over the 12x12 patches; 0 = none).

    A patch belongs to the object covering the most of its pixels, if at least ``min_pixels`` of them.
    Used to pretrain the vision tower on *local* content, so a patch says only what is under it.
    """
    m = object_map(scene)
    g = IMAGE_SIZE // PATCH_SIZE
    patches = m.reshape(g, PATCH_SIZE, g, PATCH_SIZE).transpose(0, 2, 1, 3).reshape(g * g, -1)
    out = np.zeros(g * g, dtype=np.int64)
    for p, pix in enumerate(patches):
        counts = np.bincount(pix, minlength=len(scene.objects) + 1)
        counts[0] = 0
        if counts.max() >= min_pixels:
            out[p] = int(counts.argmax())
    return out


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
