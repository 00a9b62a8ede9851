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

from fastv.zoo.datasets.shapes.questions import (
    ALL_KINDS,
    KIND_GROUPS,
    KINDS,
    LONG_TEMPLATES,
    QA,
    SCENE_KINDS,
    STYLES,
    WORDS,
    Sample,
    answer_cell,
    ask,
    eval_samples,
    named_cell,
    questions,
    words_of,
)
from fastv.zoo.datasets.shapes.scenes import (
    CELL_SIZE,
    CELLS,
    COLORS,
    COLUMNS,
    GRID,
    IMAGE_SIZE,
    MAX_OBJECTS,
    MIN_OBJECTS,
    PATCH_SIZE,
    SHAPES,
    SIZES,
    SPLITS,
    Obj,
    Scene,
    make_scene,
    object_map,
    patch_cells,
    patch_objects,
    render,
    split_seed,
)

__all__ = [
    "ALL_KINDS",
    "CELLS",
    "CELL_SIZE",
    "COLORS",
    "COLUMNS",
    "GRID",
    "IMAGE_SIZE",
    "KIND_GROUPS",
    "KINDS",
    "LONG_TEMPLATES",
    "MAX_OBJECTS",
    "MIN_OBJECTS",
    "PATCH_SIZE",
    "QA",
    "SCENE_KINDS",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "STYLES",
    "WORDS",
    "Obj",
    "Sample",
    "Scene",
    "answer_cell",
    "ask",
    "eval_samples",
    "make_scene",
    "named_cell",
    "object_map",
    "patch_cells",
    "patch_objects",
    "questions",
    "render",
    "split_seed",
    "words_of",
]
