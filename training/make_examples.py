"""Write the README's example scenes (`src/fastv/zoo/examples/`): PNGs from the test split plus prompts.

python training/make_examples.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from fastv.zoo.datasets import shapes  # noqa: E402
from fastv.zoo.default_model import EXAMPLES_DIR  # noqa: E402

OUT = EXAMPLES_DIR
# (test-split index, question kinds asked tersely, kinds asked the LLaVA way): the default model
# answers both styles; the long one carries LLaVA-1.5's phrasing and the scene-level kinds.
PICKS = (
    (0, ("color", "describe", "left"), ("total", "common")),
    (1, ("shape", "exists", "above"), ("colors", "color")),
    (2, ("describe", "count"), ("total",)),
    (3, ("color", "exists"), ("describe",)),
)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    items = []
    for index, kinds, long_kinds in PICKS:
        seed = shapes.split_seed("test", index)
        scene = shapes.make_scene(seed)
        name = f"scene_{index}.png"
        shapes.render(scene).save(OUT / name)
        # The same questions as the test split's evaluation (`shapes.eval_samples`) asks about this scene.
        asked = [
            (s, "short") for s in shapes.eval_samples("test", 1, kinds=shapes.KINDS, start=index) if s.kind in kinds
        ]
        long = shapes.eval_samples("test", 1, kinds=shapes.ALL_KINDS, start=index, style="long")
        asked += [(s, "long") for s in long if s.kind in long_kinds]
        for s, style in asked:
            items.append(
                {"image": name, "seed": seed, "kind": s.kind, "style": style, "prompt": s.question, "answer": s.answer}
            )
    doc = {
        "about": "Scenes of the shapes world (fastv.zoo.datasets.shapes, test split) for fastv's default model. "
        "Cells are a1..d4: column letter left to right, row number top to bottom.",
        "examples": items,
    }
    (OUT / "examples.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {len(items)} examples to {OUT}")


if __name__ == "__main__":
    main()
