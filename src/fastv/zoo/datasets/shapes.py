"""A seeded world of small shapes on a grid, with question/answer pairs about them.

Why this world: no pretrained LVLM can be downloaded here, so fastv trains its own default model on
scenes whose answers are checkable. Objects are small (a large one spans about 2x2 patches of 8 px, a
small one about 1-2 patches) on a 4x4 grid of 24 px cells (3x3 patches each), so an answer depends on
a few of the 144 visual tokens and pruning the wrong tokens costs accuracy.

Everything is a pure function of integer seeds: ``make_scene(seed)`` always draws the same scene, and
the train / validation / test splits use disjoint seed ranges (``split_seed``).

Questions are short word sequences that end on the word that decides the answer (the cell, or the
object named), because a small model learns to answer right where the key word is read:

==========  ==========================  ===========================
kind        question                    answer
==========  ==========================  ===========================
color       ``color b3``                ``red``
shape       ``shape b3``                ``circle``
describe    ``describe b3``             ``small red circle`` (a short caption of one object)
count       ``count red`` / ``count circle``   ``0`` .. ``8``
exists      ``exists red circle``       ``yes`` / ``no``
left        ``left of b3``              ``blue square`` or ``none`` (the object in the cell to the left)
above       ``above b3``                ``blue square`` or ``none`` (the object in the cell above)
==========  ==========================  ===========================

Cells are named by column letter (a..d, left to right) and row number (1..4, top to bottom).
"""

from __future__ import annotations

import random
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
SPLITS = ("train", "validation", "test")
_SPLIT_BASE = {"train": 0, "validation": 1_000_000_000, "test": 2_000_000_000}
_BACKGROUND = (235, 235, 235)

# Every word the world uses; the default model's word-level tokenizer is built from this list.
WORDS: tuple[str, ...] = (
    *KINDS,
    "of",
    *CELLS,
    *COLORS,
    *SHAPES,
    *SIZES,
    "yes",
    "no",
    "none",
    *(str(i) for i in range(MAX_OBJECTS + 1)),
)


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


def ask(scene: Scene, kind: str, rng: random.Random) -> QA:
    """One question of ``kind`` about ``scene``, chosen with ``rng``."""
    objs = scene.objects
    if kind in ("color", "shape", "describe"):
        o = rng.choice(objs)
        answer = {"color": o.color, "shape": o.shape, "describe": f"{o.size} {o.color} {o.shape}"}[kind]
        return QA(kind, f"{kind} {o.cell}", answer)
    if kind == "count":
        if rng.random() < 0.5:
            c = rng.choice(tuple(COLORS))
            return QA(kind, f"count {c}", str(sum(o.color == c for o in objs)))
        s = rng.choice(SHAPES)
        return QA(kind, f"count {s}", str(sum(o.shape == s for o in objs)))
    if kind == "exists":
        present = {o.name for o in objs}
        if rng.random() < 0.5:
            name = rng.choice(sorted(present))
        else:
            absent = [f"{c} {s}" for c in COLORS for s in SHAPES if f"{c} {s}" not in present]
            name = rng.choice(absent)
        return QA(kind, f"exists {name}", "yes" if name in present else "no")
    if kind in ("left", "above"):
        # Ask about an object's neighbour half the time, else about any cell that has one.
        pool = [o.cell for o in objs] if rng.random() < 0.5 else list(CELLS)
        cells = [c for c in pool if _neighbour(c, kind) is not None]
        cell = rng.choice(cells or [c for c in CELLS if _neighbour(c, kind) is not None])
        other = scene.at(_neighbour(cell, kind))  # type: ignore[arg-type]
        q = f"left of {cell}" if kind == "left" else f"above {cell}"
        return QA(kind, q, other.name if other else "none")
    raise FastVError(f"unknown kind {kind!r}; expected one of {KINDS}")


def questions(scene: Scene, n: int, seed: int | None = None, kinds: tuple[str, ...] = KINDS) -> list[QA]:
    """``n`` questions about ``scene``, kinds cycled in a shuffled order (for packing in training)."""
    rng = random.Random(scene.seed * 7919 + 17 if seed is None else seed)
    order = list(kinds)
    rng.shuffle(order)
    return [ask(scene, order[i % len(order)], rng) for i in range(n)]


@dataclass(frozen=True)
class Sample:
    """One evaluation item: a scene seed, a question and its expected answer."""

    seed: int
    kind: str
    question: str
    answer: str

    def image(self) -> Image.Image:
        return render(make_scene(self.seed))


def eval_samples(split: str, n_images: int, kinds: tuple[str, ...] = KINDS, start: int = 0) -> list[Sample]:
    """One question per kind for each of ``n_images`` scenes of ``split`` (deterministic)."""
    out = []
    for i in range(start, start + n_images):
        seed = split_seed(split, i)
        scene = make_scene(seed)
        for k, kind in enumerate(kinds):
            qa = ask(scene, kind, random.Random(seed * 31 + k))
            out.append(Sample(seed, kind, qa.question, qa.answer))
    return out
