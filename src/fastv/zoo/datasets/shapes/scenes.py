"""The scenes of the shapes world: objects on a 4x4 grid, drawn deterministically from a seed.

See `fastv.zoo.datasets.shapes` for the world and why it exists.
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
SPLITS = ("train", "validation", "test")
_SPLIT_BASE = {"train": 0, "validation": 1_000_000_000, "test": 2_000_000_000}
_BACKGROUND = (235, 235, 235)


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


def patch_cells() -> np.ndarray:
    """Per-patch index into `CELLS` of the cell the patch lies in (row-major over the 12x12 patches)."""
    g = IMAGE_SIZE // PATCH_SIZE
    per_cell = g // GRID
    rows, cols = np.divmod(np.arange(g * g), g)
    return (rows // per_cell) * GRID + cols // per_cell


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
